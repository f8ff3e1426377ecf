"""`infogrowth status`: one screen on a running pipeline.

Consumer lag comes from the broker (the app's consumer group: committed offsets against
last stable offsets); output counts and rates from the output topics' end offsets, taken
``interval_s`` apart; index size and outcomes by reason from the worker's /metrics endpoint
when it answers (agents/metrics.py).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import dataclass, field

from infogrowth.commands.pipeline import transactional_topics
from infogrowth.io.hanging import OpenTransaction, stale_transactions
from infogrowth.io.kafka_io import PartitionLag, check_broker, end_offsets, group_lag
from infogrowth.settings import Settings


@dataclass
class Scrape:
    url: str
    outcomes: dict[tuple[str, str], float] = field(default_factory=dict)  # (decision, reason)
    index_size: float | None = None
    held: dict[str, tuple[float, float]] = field(default_factory=dict)  # partition -> (n, s)
    error: str | None = None


@dataclass
class Status:
    settings: Settings
    interval_s: float
    lag: list[PartitionLag]
    outputs: dict[str, tuple[int, int, int]]  # topic -> (partitions, records, records added)
    before: Scrape
    after: Scrape
    stale: list[OpenTransaction] = field(default_factory=list)  # open, no write for 10 s


def input_topics(settings: Settings) -> list[str]:
    return [settings.topic_raw, settings.topic_recaptioned, settings.topic_scored,
            settings.topic_recaption]  # fmt: skip


def output_topics(settings: Settings) -> list[str]:
    return [settings.topic_accepted, settings.topic_rejected, settings.topic_dead_letter]


def scrape(url: str, timeout: float = 3.0) -> Scrape:
    """The worker's outcome counters and index size, or why they could not be read."""
    from prometheus_client.parser import text_string_to_metric_families

    result = Scrape(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            text = response.read().decode()
    except (OSError, ValueError) as exc:
        result.error = str(getattr(exc, "reason", exc))
        return result
    held: dict[str, float] = {}
    waits: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "infogrowth_outcomes_total":
                key = (sample.labels["decision"], sample.labels["reason"])
                result.outcomes[key] = sample.value
            elif sample.name == "infogrowth_index_size":
                result.index_size = sample.value
            elif sample.name == "infogrowth_gate_held" and sample.value:
                held[sample.labels["partition"]] = sample.value
            elif sample.name == "infogrowth_gate_wait_seconds":
                waits[sample.labels["partition"]] = sample.value
    result.held = {part: (n, waits.get(part, 0.0)) for part, n in held.items()}
    return result


def _output_counts(settings: Settings) -> dict[str, tuple[int, int]]:
    counts = {}
    for topic in output_topics(settings):
        try:
            ends = end_offsets(settings.kafka_bootstrap, topic)
        except ValueError:  # not created yet
            continue
        counts[topic] = (len(ends), sum(ends.values()))
    return counts


def pipeline_status(
    settings: Settings, metrics_url: str | None = None, interval_s: float = 1.0
) -> Status:
    check_broker(settings.kafka_bootstrap)
    url = metrics_url or f"http://127.0.0.1:{settings.metrics_port}/metrics"
    before, counts = scrape(url), _output_counts(settings)
    time.sleep(interval_s)
    after, later = scrape(url), _output_counts(settings)
    outputs = {
        t: (parts, later[t][1], later[t][1] - records)
        for t, (parts, records) in counts.items()
        if t in later
    }
    lag = group_lag(settings.kafka_bootstrap, settings.app_id, input_topics(settings))
    topics = transactional_topics(settings)
    stale = asyncio.run(stale_transactions(settings.kafka_bootstrap, topics))
    return Status(settings, interval_s, lag, outputs, before, after, stale)


def render(status: Status) -> str:
    s = status.settings
    lines = [f"app {s.app_id} on {s.kafka_bootstrap} (rates over {status.interval_s:.1f} s)", ""]
    lines += _lag_lines(status)
    lines += ["", f"  {'output topic':<34}{'partitions':>10}{'offsets':>10}{'per s':>9}"]
    for topic, (parts, records, added) in status.outputs.items():
        lines.append(f"  {topic:<34}{parts:>10}{records:>10}{added / status.interval_s:>9.1f}")
    lines += ["", *_metrics_lines(status), *_transaction_lines(status)]
    return "\n".join(lines)


def _transaction_lines(status: Status) -> list[str]:
    """Open transactions nobody wrote to for a while: a running worker ends those Kafka left
    open once they outlive their timeout (infogrowth/io/hanging.py)."""
    now_ms = time.time() * 1000
    return [f"  open transaction with no write for {(now_ms - t.last_write_ms) / 1000:.0f} s: "
            f"{t}" for t in status.stale]  # fmt: skip


def _lag_lines(status: Status) -> list[str]:
    lines = [f"  {'consumer lag':<34}{'partition':>10}{'committed':>10}{'end':>10}{'lag':>8}"]
    for p in status.lag:
        committed = "-" if p.committed is None else str(p.committed)
        lines.append(f"  {p.topic:<34}{p.partition:>10}{committed:>10}{p.end:>10}{p.lag:>8}")
    total = sum(p.lag for p in status.lag)
    lines.append(f"  {'total lag':<34}{'':>10}{'':>10}{'':>10}{total:>8}")
    return lines


def _metrics_lines(status: Status) -> list[str]:
    after = status.after
    if after.error is not None:
        return [f"  worker metrics: not reachable at {after.url} ({after.error})"]
    total = sum(after.outcomes.values())
    rate = (total - sum(status.before.outcomes.values())) / status.interval_s
    size = "-" if after.index_size is None else f"{after.index_size:.0f}"
    lines = [f"  worker metrics ({after.url}): index size {size}, "
             f"outcomes {total:.0f} ({rate:.1f}/s)"]  # fmt: skip
    for (decision, reason), n in sorted(after.outcomes.items()):
        lines.append(f"    {decision + ('/' + reason if reason else ''):<32}{n:>10.0f}")
    for partition, (held, waited) in sorted(after.held.items()):
        lines.append(f"  curator partition {partition}: {held:.0f} samples held behind one "
                     f"waiting {waited:.0f} s for its new caption")  # fmt: skip
    return lines
