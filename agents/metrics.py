"""The worker's Prometheus metrics and its progress log line.

Served on ``metrics_port`` (``/metrics``; 0 turns it off):

* ``infogrowth_outcomes_total{decision, reason}``: outcome records sent (``reason`` is empty
  for accepted; ``over_budget`` counts evictions of samples accepted earlier);
* ``infogrowth_gain``, ``infogrowth_alignment``: histograms over those outcomes;
* ``infogrowth_batch_seconds{step}``: time of each batch's model/index step (``score`` in
  inference, ``select`` in the curator, ``new_captions`` in the captioner);
* ``infogrowth_batches_total``: batches committed, all agents;
* ``infogrowth_index_size``: samples in the curator's gain index (curator role only);
* ``infogrowth_consumer_lag{topic, partition}``: the app's consumer group, refreshed every
  ``LAG_INTERVAL_S`` from the broker (committed offsets against last stable offsets);
* ``infogrowth_transactions_left_open_total{end}``: transactions Kafka decided but left open,
  found by agents/hanging.py (``end``: commit, abort, undecided, failed);
* ``infogrowth_thread_cpu_seconds_total{thread}``: CPU seconds of each live thread, by its
  Python name (``MainThread``: the event loop; ``infogrowth-index_0``: the curator's gain
  and policy; ``infogrowth-model_0``: the models): which part of a busy worker is the
  bottleneck (Linux).

The agents call ``sent``, ``timed`` and ``batch_done`` from one place each (agents/context.py);
every ``log_every`` batches one INFO line gives the outcome rate, the index size and the lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from agents.liveness import LIVENESS, restart
from infogrowth.io.cpu import cpu_seconds
from infogrowth.io.kafka_io import group_lag

if TYPE_CHECKING:
    from agents.context import Context

log = logging.getLogger("infogrowth.metrics")
T = TypeVar("T")
LAG_INTERVAL_S = 10.0

REGISTRY = CollectorRegistry()
OUTCOMES = Counter(
    "infogrowth_outcomes", "Outcome records sent", ["decision", "reason"], registry=REGISTRY
)
GAIN = Histogram(
    "infogrowth_gain",
    "Gain (mean cosine distance to the k nearest earlier samples) of the outcomes",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
    registry=REGISTRY,
)
ALIGNMENT = Histogram(
    "infogrowth_alignment",
    "Image-text alignment (cosine) of the outcomes",
    buckets=(0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "infogrowth_batch_seconds", "Seconds per batch of a stage's step", ["step"], registry=REGISTRY
)
BATCHES = Counter("infogrowth_batches", "Batches committed by all agents", registry=REGISTRY)
INDEX_SIZE = Gauge(
    "infogrowth_index_size", "Samples in the curator's gain index", registry=REGISTRY
)
GATE_HELD = Gauge(
    "infogrowth_gate_held",
    "Samples the curator holds in arrival order behind one waiting for its new caption",
    ["partition"],
    registry=REGISTRY,
)
GATE_WAIT = Gauge(
    "infogrowth_gate_wait_seconds",
    "How long the first held sample has waited for its new caption (0: none held)",
    ["partition"],
    registry=REGISTRY,
)
LAG = Gauge(
    "infogrowth_consumer_lag",
    "Committed records the app's consumer group has not processed",
    ["topic", "partition"],
    registry=REGISTRY,
)
LEFT_OPEN = Counter(
    "infogrowth_transactions_left_open",
    "Transactions Kafka decided but left open on a partition, by how they were ended "
    "(commit, abort; undecided and failed ones stay open and count again at each check)",
    ["end"],
    registry=REGISTRY,
)
OUTCOME_SCHEMAS = {"AcceptedSample": "accepted", "RejectedSample": "rejected"}


class ThreadCPU(Collector):
    """``infogrowth_thread_cpu_seconds_total{thread}``, read from /proc when scraped;
    threads of one name (a pool's) are summed."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "infogrowth_thread_cpu_seconds", "CPU seconds of each live thread", labels=["thread"]
        )
        by_name: dict[str, float] = {}
        for thread in threading.enumerate():
            seconds = cpu_seconds(tid=thread.native_id) if thread.native_id else None
            if seconds is not None:
                by_name[thread.name] = by_name.get(thread.name, 0.0) + seconds
        for name, seconds in sorted(by_name.items()):
            family.add_metric([name], seconds)
        yield family


REGISTRY.register(ThreadCPU())


class Progress:
    """What the periodic log line reports."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.batches = 0
        self.outcomes = 0
        self.last = (time.monotonic(), 0)  # (when, outcomes) at the previous line
        self.lag: dict[str, int] = {}  # topic -> lag summed over its partitions
        self.index_size: Callable[[], int] = lambda: 0

    def line(self) -> str:
        now, before = time.monotonic(), self.last
        rate = (self.outcomes - before[1]) / max(now - before[0], 1e-9)
        self.last = (now, self.outcomes)
        lag = ", ".join(f"{t}={n}" for t, n in sorted(self.lag.items())) or "unknown"
        return (
            f"progress: {self.batches} batches, {self.outcomes} outcomes ({rate:.1f}/s), "
            f"index {self.index_size()}, lag {lag}"
        )


PROGRESS = Progress(log_every=0)


def sent(schema: str, record: dict[str, Any]) -> None:
    """Counts an outcome record (other records are not outcomes)."""
    decision = OUTCOME_SCHEMAS.get(schema)
    if decision is None:
        return
    OUTCOMES.labels(decision, record.get("reason") or "").inc()
    PROGRESS.outcomes += 1
    if record.get("gain") is not None:
        GAIN.observe(record["gain"])
    if record.get("alignment") is not None:
        ALIGNMENT.observe(record["alignment"])


@contextmanager
def step_pending() -> Iterator[None]:
    """A model step is queued or running (the watchdog does not count it as a stall)."""
    LIVENESS.steps += 1
    try:
        yield
    finally:
        LIVENESS.steps -= 1


def timed(step: Callable[..., T]) -> Callable[..., T]:
    """``step`` observing its own run time in ``infogrowth_batch_seconds``: from when the
    executor starts it, not from when a batch queued it behind another stage's step."""
    name = getattr(step, "__name__", type(step).__name__)

    def run(*args: Any) -> T:
        started = time.perf_counter()
        try:
            return step(*args)
        finally:
            BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)

    return run


def batch_done() -> None:
    LIVENESS.progressed()
    BATCHES.inc()
    PROGRESS.batches += 1
    if PROGRESS.log_every and PROGRESS.batches % PROGRESS.log_every == 0:
        log.info(PROGRESS.line())


def start(ctx: Context) -> None:
    """Serves /metrics, follows the index size and polls the consumer lag."""
    s = ctx.settings
    PROGRESS.log_every = s.log_every
    PROGRESS.index_size = lambda: ctx.indexed()  # set by the curator, once it registers
    INDEX_SIZE.set_function(PROGRESS.index_size)
    if s.metrics_port:
        try:
            start_http_server(s.metrics_port, registry=REGISTRY)
        except OSError as exc:  # a busy port must not stop the curation
            log.warning("metrics: cannot serve on port %d (%s)", s.metrics_port, exc)
        else:
            log.info("metrics: http://0.0.0.0:%d/metrics", s.metrics_port)
    LIVENESS.stall_s = s.stall_restart_s
    ctx.app.on_partitions_assigned.connect(_owned)
    topics = [s.topic_raw, s.topic_recaptioned, s.topic_scored, s.topic_recaption]
    args = (s.kafka_bootstrap, s.app_id, topics, ctx)
    threading.Thread(target=_poll_lag, args=args, name="infogrowth-lag", daemon=True).start()


async def _owned(app: Any, assigned: set[Any], **_: Any) -> None:
    LIVENESS.owned = frozenset((tp.topic, tp.partition) for tp in assigned)
    LIVENESS.progressed()


def _busy(ctx: Context) -> bool:
    """Rebalancing, reading changelogs or waiting out an object-store outage. Plain flags
    only: this runs on the lag thread, and Faust's lazy services (``app.tables.recovery``)
    built from here bind to the wrong thread, which hung the worker's start."""
    app = ctx.app
    return app.rebalancing or app.in_recovery or ctx.store_down


def _poll_lag(bootstrap: str, group_id: str, topics: list[str], ctx: Context) -> None:
    while True:
        try:
            lags = group_lag(bootstrap, group_id, topics)
        except Exception as exc:  # the broker may be away for a while: keep trying
            log.debug("metrics: no consumer lag (%s)", exc)
        else:
            totals: dict[str, int] = {}
            for p in lags:
                LAG.labels(p.topic, str(p.partition)).set(p.lag)
                totals[p.topic] = totals.get(p.topic, 0) + p.lag
            PROGRESS.lag = totals
            waiting = LIVENESS.waiting((p.topic, p.partition, p.lag) for p in lags)
            if LIVENESS.stuck(waiting, _busy(ctx)):
                restart(ctx.app, waiting)
                return
        time.sleep(LAG_INTERVAL_S)
