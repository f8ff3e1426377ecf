"""What the agents share: settings, serdes, topics, the core stages and a model executor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import cached_property
from typing import Any, TypeVar

import faust
from faust.types import TP

from agents import metrics
from agents.atomic import BatchCommits, Held, refuse_commits, transactional_id
from agents.selection_process import SelectionProcess
from infogrowth.commands.offline import make_curator
from infogrowth.core.curate import Curator
from infogrowth.io.avro import AvroSerde
from infogrowth.io.runs import run_ref
from infogrowth.io.store import StoreUnavailable
from infogrowth.settings import Settings

log = logging.getLogger("infogrowth.agents")
T = TypeVar("T")

OUTCOME_SCHEMAS = ("AcceptedSample", "RejectedSample")
SCHEMAS = ("RawSample", "ScoredSample", "RecaptionRequest", "AcceptedSample", "RejectedSample")


class Context:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.serde = {name: AvroSerde(name) for name in (*SCHEMAS, "DeadLetter")}
        # One thread for the models (inference, captioner), one for the index (curator):
        # each is used by one writer at a time, the two stages run side by side, and the
        # event loop stays free to heartbeat while a batch is encoded.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infogrowth-model")
        self.index_executor = ThreadPoolExecutor(1, thread_name_prefix="infogrowth-index")
        self.commits = BatchCommits(app)
        self.unconfirmed: dict[TP, list[asyncio.Future[Any]]] = {}  # by source partition
        self.producer_ids: dict[TP, str | None] = {}  # transactional id, by source partition
        self.store_down = False  # a batch is waiting out an object-store outage
        # The curator's gain index size, summed over the partitions it owns here (the
        # curator sets it: with ``curator_process`` the index lives in the child).
        self.indexed: Callable[[], int] = lambda: 0

    def topic(self, *names: str) -> faust.TopicT:
        return self.app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    @cached_property
    def run_reference(self) -> str:
        """The ``run`` field of this worker's outcomes (infogrowth/io/runs.py)."""
        return run_ref(self.settings)

    @cached_property
    def curator(self) -> Curator:
        return make_curator(self.settings)

    @cached_property
    def selection(self) -> SelectionProcess | None:
        """The child process holding the curator's selection state (``curator_process``),
        started with a worker that runs the curator; None: selection on the index thread."""
        if not self.settings.curator_process:
            return None
        process = SelectionProcess(self.settings)
        log.info("curator: gain and policy in selection process %s", process.pid)
        return process

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """A model step, off the event loop."""
        return await _run_in(self.executor, fn, *args)

    async def run_on_index(self, fn: Callable[..., T], *args: Any) -> T:
        """A step of the curator's index and selection, off the event loop."""
        return await _run_in(self.index_executor, fn, *args)

    async def run_while_store_down(self, fn: Callable[..., T], *args: Any) -> T:
        """``run``, retried with backoff while the object store is unavailable: an outage
        delays the batch (uncommitted, so nothing is lost) instead of rejecting its samples."""
        delay = 0.5
        while True:
            try:
                result = await self.run(fn, *args)
                self.store_down = False
                return result
            except StoreUnavailable as exc:
                self.store_down = True  # waiting, not stuck (agents/liveness.py)
                log.warning("%s; retrying the batch in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """One batch of an agent, from the events it was handed to their acks. Should it
        fail or be cut short, Faust would ack its events anyway and the next commit would
        lose them; instead this process commits nothing more and, after an error, stops
        (the agent waits for the stop): part of the batch may be in memory (index, gate)
        but not in Kafka, and the next worker rebuilds the committed state and reads the
        batch again."""
        try:
            yield
        except Exception as exc:
            refuse_commits(self.app)
            log.exception("a batch failed; committing nothing more, stopping the worker")
            await self.app.crash(exc)
            # Parked until the stop cancels it: Faust restarts an agent that raises, and a
            # restarted agent could hold up the worker's stop (seen: a hang of 120 s).
            await asyncio.get_running_loop().create_future()
        except BaseException:  # cancelled mid-batch: the worker is stopping
            refuse_commits(self.app)
            raise

    @asynccontextmanager
    async def atomic(self, events: Sequence[faust.EventT]) -> AsyncIterator[Held]:
        """A batch's sends, state writes and source offsets: committed together or not at
        all. The events are acked here, not when the stream moves on: the commit right after
        the batch (``BatchCommits``) must carry their offsets with their outputs, or a crash
        or a seek back to the committed offset sends them again (a stateless agent such as
        inference would write them to `scored` twice). A rebalance commits them too, before
        the partitions are given up (``atomic.commit_before_revocation``)."""
        sources = {event.message.tp for event in events}
        caught_up = len(events) < self.settings.batch_size
        async with self.commits.hold(sources, caught_up) as held:
            yield held
            await self.confirm(sources)
            for event in events:
                # Fully: the curator holds a reference to each event of a batch it keeps
                # in flight past Faust's own ack (agents/curator.py), and the batch's
                # offsets must be committable with its outputs, in this commit.
                message = event.message
                message.ack(self.app.consumer, n=max(message.refcount, 1))
        metrics.batch_done()

    async def send(
        self,
        topic_name: str,
        schema: str,
        record: dict[str, Any],
        source: TP,
        partition: int | None = None,
    ) -> None:
        """Sends ``record`` in the transaction that commits the ``source`` partition (to
        ``partition``, or where the key hashes)."""
        key = str(record.get("id") or record.get("sample", {}).get("id", "")).encode()
        if schema in OUTCOME_SCHEMAS:
            record = {**record, "run": self.run_reference}
        await self.publish(topic_name, key, self.serde[schema].encode(record), source, partition)
        metrics.sent(schema, record)

    async def publish(
        self,
        topic_name: str,
        key: bytes | None,
        value: bytes,
        source: TP,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Sends ``value`` in ``source``'s transaction; returns the future of its delivery
        (``confirm`` waits for it)."""
        tid = self.producer_ids.get(source)
        if tid is None:  # a few us of Faust settings lookups: once per partition, not per send
            tid = self.producer_ids[source] = transactional_id(self.app, source)
        delivery = await self.app.producer.send(
            topic_name, key, value, partition, None, None, transactional_id=tid
        )
        self.unconfirmed.setdefault(source, []).append(delivery)
        return delivery

    async def confirm(self, sources: set[TP]) -> None:
        """Waits until the broker has every message sent so far in the transactions of
        ``sources`` (errors surface here)."""
        pending = [d for source in sources for d in self.unconfirmed.pop(source, [])]
        await asyncio.gather(*pending)

    async def dead_letter(self, event: faust.EventT, stage: str, reason: str) -> None:
        msg = event.message
        log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)
        record = {
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "reason": reason,
            "original": bytes(msg.value or b""),
            "key": None if msg.key is None else bytes(msg.key),
            "stage": stage,
        }
        value = self.serde["DeadLetter"].encode(record)
        await self.publish(self.settings.topic_dead_letter, record["key"], value, msg.tp)


async def _run_in(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    with metrics.step_pending():
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, metrics.timed(fn), *args)
