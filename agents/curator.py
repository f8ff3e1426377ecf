"""Curator agent: the single writer of the gain index.

Reads `scored` in order; aligned samples pass through the ordered gate to the gain stage
and the policy (→ `accepted` / `rejected`); misaligned ones go to `recaption` and hold
their place in the gate until their new caption comes back. Its state lives in a compacted
changelog topic (binary values, agents/curator_state.py) written in each batch's Kafka
transaction (exactly-once), so after a crash, or when a partition moves to another worker,
the index is rebuilt from the committed changelog partition and nothing is emitted twice.

The changelog is read by the curator itself, not kept as a Faust table: Faust's recovery of
a changelog partition that came back to a worker restored a fraction of it (16 of ~740
entries, seen in the fault tests), and the curator needs the committed entries only once,
when it (re)gains a partition.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust
from faust.types import TP

from agents import curator_state as state_codec
from agents import diagnose, metrics, snapshot
from agents.context import Context
from agents.selection_state import fresh_selection, restore_selection
from infogrowth.commands.pipeline import curator_changelog
from infogrowth.core.curate import Scored, still_misaligned
from infogrowth.core.shards import ShardedCurator
from infogrowth.io.messages import (
    NOT_A_SAMPLE,
    outcome_record,
    recaption_request,
    scored_from_record,
)
from infogrowth.io.store import ObjectStore
from infogrowth.records import Outcome

log = logging.getLogger("infogrowth.curator")
STAGE = "curator"
GATE_CHECK_S = 2.0  # seconds between looks at the gates (metrics, a long wait logged)


class CuratorState:
    """The in-memory index and gate of one `scored` partition (one shard), restored from
    its changelog partition when the partition is (re)assigned here, and the changelog
    entries of the running batch."""

    def __init__(self, ctx: Context, changelog: str, partition: int = 0) -> None:
        self.ctx = ctx
        self.changelog = changelog
        self.partition = partition
        # A fresh selection state, whatever an earlier owner of the partition left here.
        # With ``curator_process`` it lives in the child (restored there); this one is
        # asked only what the settings decide (alignment, what enters the index).
        self.curator = fresh_selection(ctx.curator, partition)
        self.sharded = isinstance(ctx.curator, ShardedCurator)
        self.remote = ctx.selection
        self.indexed = 0  # the child's index size, as it last said (``curator_process``)
        self.in_flight: set[str] = set()  # released in a batch whose outcomes are not sent
        self.last_committed = False  # whether the last finished batch's own commit carried it
        self.restored: state_codec.Restored | None = None
        self.restoring: asyncio.Future[state_codec.Restored] | None = None
        self.light: dict[str, state_codec.Entry] = {}  # each entry without vectors or record
        # The last changelog record sent (its delivery and key): a snapshot's mark.
        self.sent: tuple[asyncio.Future[Any], bytes] | None = None
        self.decoded: dict[str, Scored] = {}  # gate entries already decoded by _admit
        every = ctx.settings.snapshot_every
        self.store = ObjectStore.from_settings(ctx.settings) if every else None
        self.snapshots = snapshot.prefix(ctx.settings.app_id)
        if self.sharded:
            self.snapshots += f"shard-{partition}/"
        self.uploads = snapshot.Uploader(self.store, self.snapshots) if self.store else None
        self.batches = 0
        self.blocked: Blocked | None = None  # the gate's head while it waits for a caption

    def start_restore(self) -> asyncio.Future[state_codec.Restored]:
        """Starts rebuilding the index, policy and gate from the committed changelog
        partition (and the newest snapshot), off the event loop; once per state."""
        if self.restoring is None:
            restoring = (
                self._restore_in_child()
                if self.remote
                else self.ctx.run_on_index(self.restore_changelog)
            )
            self.restoring = asyncio.ensure_future(restoring)
            self.restoring.add_done_callback(self._report_failure)
        return self.restoring

    async def restore(self) -> None:
        """Waits for the restore (started now if not yet): before the partition's first batch."""
        if self.restored is None:
            self.restored = await self.start_restore()

    def _report_failure(self, done: asyncio.Future[state_codec.Restored]) -> None:
        """A failed restore is logged, even when the partition leaves before a batch awaits
        it (a batch that awaits it gets the error itself), and the next batch tries again."""
        if not done.cancelled() and done.exception() is None:
            return
        if self.restoring is done:
            self.restoring = None
        if not done.cancelled():
            log.error(
                "curator state of partition %d: restore failed: %r",
                self.partition,
                done.exception(),
            )

    def restore_changelog(self) -> state_codec.Restored:
        self._log_restore_start()
        self.light, restored = restore_selection(
            self.ctx.settings,
            self.curator,
            self.changelog,
            self.partition,
            self.store,
            self.snapshots,
        )
        self.sent = None
        self._log_restored(restored, len(self.curator.index))
        return restored

    async def _restore_in_child(self) -> state_codec.Restored:
        """``restore_changelog`` run by the selection process, which keeps the index."""
        assert self.remote is not None
        self._log_restore_start()
        snapshots = self.snapshots if self.store else None
        with metrics.step_pending():
            restored, self.light, self.indexed = await self.remote.call(
                "restore", self.partition, self.changelog, snapshots
            )
        self.sent = None
        self._log_restored(restored, self.indexed)
        return restored

    def _shard(self) -> str:
        return f" (shard {self.partition})" if self.sharded else ""

    def _log_restore_start(self) -> None:
        log.info("curator state%s: reading changelog partition %d", self._shard(), self.partition)

    def _log_restored(self, restored: state_codec.Restored, indexed: int) -> None:
        shard = self._shard()
        if restored.read_from:
            log.info(
                "curator state%s: changelog read from offset %d, the snapshot's table before it",
                shard,
                restored.read_from,
            )
        log.info("curator state%s: %d indexed from a snapshot", shard, restored.from_snapshot)
        log.info("curator state%s: %d indexed, %d queued", shard, indexed, len(restored.gate))

    def indexed_count(self) -> int:
        return self.indexed if self.remote else len(self.curator.index)

    def select(self, items: list[Scored], records: list[bytes]) -> asyncio.Future[list[Outcome]]:
        """Starts ``select`` of a batch's aligned samples (``records``: their `scored`
        records, which the selection process decodes itself); answered in the order asked."""
        if self.remote is None:
            return asyncio.ensure_future(self.ctx.run_on_index(self.curator.select, items))
        answer = self.remote.call("select", self.partition, records)  # sent now, in order
        return asyncio.ensure_future(self._outcomes(answer))

    async def _outcomes(
        self, answer: asyncio.Future[tuple[list[Outcome], int, float]]
    ) -> list[Outcome]:
        with metrics.step_pending():  # a step running, not a stall (agents/liveness.py)
            outcomes, self.indexed, seconds = await answer
        metrics.BATCH_SECONDS.labels("select").observe(seconds)
        return outcomes

    def load(self) -> state_codec.Restored:
        assert self.restored is not None, "restore() comes before the partition's first batch"
        return self.restored

    def seq_of(self, key: str) -> int:
        return self.light[key]["seq"]

    def put(self, key: str, value: state_codec.Entry, unsent: dict[str, state_codec.Entry]) -> None:
        """A changelog entry, into ``unsent``: the entries of the batch it belongs to."""
        self.light[key] = state_codec.light(value)
        unsent[key] = value  # a sample queued and finished in one batch: its last entry

    def item(self, key: str, raw: bytes) -> Scored:
        """The released gate entry as decoded on arrival (decoded here when it was queued
        before a restart)."""
        item = self.decoded.pop(key, None)
        return item or scored_from_record(self.ctx.serde["ScoredSample"].decode(raw))

    async def flush(self, source: TP, unsent: dict[str, state_codec.Entry]) -> None:
        """Sends this batch's entries to the changelog in the batch's transaction
        (``send_changelog`` goes through a buffer that can miss it), to the changelog
        partition of the source partition (co-partitioned: one shard each). One per sample:
        a sample queued and finished in the batch needs only its last entry (the two would
        commit together, and a restore keeps a key's last value), which halves what the
        curator writes (two 4 KB records per sample before)."""
        for key, value in unsent.items():
            # JSON key, binary value (agents/curator_state.py)
            raw_key, raw_value = json.dumps(key).encode(), state_codec.encode(value)
            delivery = await self.ctx.publish(
                self.changelog, raw_key, raw_value, source, partition=source.partition
            )
            self.sent = (delivery, raw_key)

    def mark(self) -> state_codec.Mark | None:
        """The last changelog record of the state (sent and confirmed, or read at restore)."""
        st = self.load()
        if self.sent is None:
            return st.mark
        delivery, key = self.sent
        return state_codec.Mark(st.changelog_id, delivery.result().offset, key)

    def table(self, mark: state_codec.Mark) -> bytes:
        """The table without vectors, the gate's records in it (``pack_table``)."""
        gate = self.load().gate
        entries = (
            (key, {**entry, "record": gate.item(key)} if entry["state"] == "queued" else entry)
            for key, entry in self.light.items()
        )
        return state_codec.pack_table(entries, mark)

    async def maybe_snapshot(self, committed: bool) -> None:
        """After ``snapshot_every`` batches or more, at the end of a batch that committed
        (so the snapshot holds committed state only): the index to S3, uploaded in the
        background (agents/snapshot.py). A failure only delays it."""
        self.finished_batch(committed)
        if committed and self.snapshot_due():
            await self.snapshot()

    def finished_batch(self, committed: bool) -> None:
        """A batch of this partition sent; ``committed``: its own commit carried it."""
        self.batches += 1
        self.last_committed = committed

    def snapshot_due(self) -> bool:
        """``snapshot_every`` batches or more since the last, and the last one uploaded (if
        still uploading: ask again after the next batch)."""
        every = self.ctx.settings.snapshot_every
        return self.uploads is not None and self.batches >= every and not self.uploads.busy()

    async def snapshot(self) -> None:
        """Starts uploading the state as it is now: call it with no batch in flight."""
        assert self.uploads is not None
        self.batches = 0
        seq, mark = self.load().next_seq, self.mark()
        if self.remote is None:
            index = self.curator.index
            data, indexed = await self.ctx.run_on_index(index.to_bytes), len(index)
        else:
            with metrics.step_pending():
                data, indexed = await self.remote.call("snapshot", self.partition)
        table = None
        if mark is not None:
            try:
                table = await self.ctx.run_on_index(self.table, mark)
            except KeyError as exc:  # a queued entry not in the gate: should not happen
                log.warning("curator snapshot without its table (%r not in the gate)", exc)
        self.uploads.start(data, seq, indexed, table)

    def seq(self) -> int:
        st = self.load()
        st.next_seq += 1
        return st.next_seq - 1


@dataclass
class Blocked:
    head: str  # the sample id everything behind waits for
    since: float  # monotonic seconds: when it became the waiting head
    warned: float  # when it was last logged


def watch_gate(state: CuratorState, now: float, warn_s: float) -> None:
    """Exports how many samples the gate holds and how long its head has waited for its new
    caption; logs a head that has waited ``warn_s`` (again every ``warn_s``): a gate held
    for good (no captioner running, say) stops the partition's outcomes with no lag to show."""
    st, label = state.restored, str(state.partition)
    head = st.gate.head() if st is not None else None
    if st is None or head is None or not st.gate.waiting(head):
        state.blocked = None
        export_gate(label, 0, 0.0)
        return
    if state.blocked is None or state.blocked.head != head:
        state.blocked = Blocked(head, since=now, warned=now)
    blocked, held = state.blocked, len(st.gate)
    export_gate(label, held, now - blocked.since)
    if warn_s and now - blocked.warned >= warn_s:
        blocked.warned = now
        log.warning(
            "curator partition %d: %d samples held in arrival order behind %s, which has "
            "waited %.0f s for its new caption (`%s` -> captioner -> `%s` -> `scored`); is a "
            "worker with the captioner role running? (`infogrowth status` also lists "
            "transactions a broker restart left open, which the workers end after their timeout)",
            state.partition,
            held,
            head,
            now - blocked.since,
            state.ctx.settings.topic_recaption,
            state.ctx.settings.topic_recaptioned,
        )


def export_gate(partition: str, held: int, waited_s: float) -> None:
    metrics.GATE_HELD.labels(partition).set(held)
    metrics.GATE_WAIT.labels(partition).set(waited_s)


class Shards:
    """The curator state of each `scored` partition this worker owns, restored as soon as
    the partition is assigned (not at its first batch: a worker that restarts after the
    input was all consumed is ready and says so). A partition given to another worker is
    dropped; when it comes back, its state is restored again from its changelog partition
    (the other owner moved it on)."""

    def __init__(self, ctx: Context, changelog: str) -> None:
        self.ctx = ctx
        self.changelog = changelog
        self.states: dict[int, CuratorState] = {}
        ctx.app.on_partitions_assigned.connect(self.on_assigned)
        diagnose.REPORTERS.append(self.describe)
        ctx.indexed = self.indexed

    def indexed(self) -> int:
        """The gain index size over the partitions owned here (the metrics' gauge)."""
        return sum(state.indexed_count() for state in list(self.states.values()))

    def describe(self) -> str:
        """Per owned partition: index and gate sizes, and what the gate's head waits for."""
        lines = []
        for partition, state in sorted(self.states.items()):
            st = state.restored
            if st is None:
                lines.append(f"curator partition {partition}: not restored yet")
                continue
            head = st.gate.head()
            lines.append(
                f"curator partition {partition}: {state.indexed_count()} indexed, "
                f"{len(st.gate)} in the gate, head {head!r} "
                f"{'waits for its recaption' if head and st.gate.waiting(head) else ''}"
            )
        return "\n".join(lines) or "curator: no partition"

    def state(self, partition: int) -> CuratorState:
        if partition not in self.states:
            self.states[partition] = CuratorState(self.ctx, self.changelog, partition)
        return self.states[partition]

    async def of(self, partition: int) -> CuratorState:
        state = self.state(partition)
        await state.restore()
        return state

    async def on_assigned(self, app: faust.App, assigned: set[TP], **_: Any) -> None:
        """Runs after Faust started the assigned partitions' transactional producers, which
        fenced a previous owner's open transaction, so the changelog read can settle."""
        mine = {tp.partition for tp in assigned if tp.topic == self.ctx.settings.topic_scored}
        for partition in set(self.states) - mine:
            del self.states[partition]
            export_gate(str(partition), 0, 0.0)  # another worker's now
            if self.ctx.selection is not None:  # its state in the child is freed
                self.ctx.selection.call("drop", partition).add_done_callback(_ignore_result)
        for partition in sorted(mine):
            self.state(partition).start_restore()


def register(ctx: Context) -> None:
    s = ctx.settings
    states = Shards(ctx, curator_changelog(s))
    if s.curator_process:
        # Started with the worker: its Python and torch load beside Faust's start-up
        # instead of holding the first restore (~2 s) into the group's first rebalance.
        ctx.selection  # noqa: B018 (a cached property: the child starts here)

    @ctx.app.timer(interval=GATE_CHECK_S)
    async def watch_gates() -> None:
        for state in list(states.states.values()):
            watch_gate(state, time.monotonic(), s.gate_warn_s)

    @ctx.app.agent(ctx.topic(s.topic_scored), name="curator")
    async def curator(stream: faust.StreamT) -> None:
        pipeline = Pipeline(ctx) if s.curator_process else None
        try:
            async for events in stream.take_events(s.batch_size, within=s.take_within):
                async with ctx.batch():
                    if pipeline is None:
                        await _one_at_a_time(ctx, states, events)
                    else:
                        await pipeline.take(states, events)
        finally:
            if pipeline is not None:
                pipeline.stop()


def _by_partition(events: list[faust.EventT]) -> dict[TP, list[faust.EventT]]:
    by_partition: dict[TP, list[faust.EventT]] = {}
    for ev in events:  # in order within each partition, one transaction each
        by_partition.setdefault(ev.message.tp, []).append(ev)
    return by_partition


async def _one_at_a_time(ctx: Context, states: Shards, events: list[faust.EventT]) -> None:
    """A batch from its events to its commit, before the next one starts."""
    by_partition = _by_partition(events)
    durable = {tp: await states.of(tp.partition) for tp in by_partition}
    steps = [_prepare(ctx, durable[tp], mine, tp) for tp, mine in by_partition.items()]
    async with ctx.atomic(events) as batch:
        for step in steps:
            await _complete(ctx, step)
    for source in by_partition:
        await durable[source].maybe_snapshot(batch.committed)


class Pipeline:
    """``curator_process``: two batches in flight. The agent prepares a batch (gate,
    changelog entries, its selection handed to the child) while a task of its own sends
    the previous batch's outcomes and commits them. A batch keeps a reference to each of
    its events, so Faust's own ack when the agent takes the next batch leaves their
    offsets uncommittable until the batch's outputs are sent (``Context.atomic`` acks
    them); a commit in between carries only finished batches, whose outputs it holds."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.queue: asyncio.Queue[tuple[list[faust.EventT], list[Step]]] = asyncio.Queue(1)
        self.sender: asyncio.Future[None] | None = None

    async def take(self, states: Shards, events: list[faust.EventT]) -> None:
        for ev in events:
            ev.message.incref()
        by_partition = _by_partition(events)
        durable = {tp: await states.of(tp.partition) for tp in by_partition}
        for state in durable.values():
            if state.snapshot_due():
                await self._snapshot(state)
        steps = [_prepare(self.ctx, durable[tp], mine, tp) for tp, mine in by_partition.items()]
        if self.sender is None:
            self.sender = asyncio.ensure_future(self._send())
        await self.queue.put((events, steps))

    async def _snapshot(self, state: CuratorState) -> None:
        """A snapshot holds committed state and nothing selected after it: every batch
        taken so far sent and committed first."""
        await self.queue.join()
        if state.last_committed or await self.ctx.commits.commit_now():
            state.last_committed = True
            await state.snapshot()

    async def _send(self) -> None:
        while True:
            events, steps = await self.queue.get()
            async with self.ctx.batch():
                async with self.ctx.atomic(events) as batch:
                    for step in steps:
                        await _complete(self.ctx, step)
                for step in steps:
                    step.durable.finished_batch(batch.committed)
            self.queue.task_done()

    def stop(self) -> None:
        if self.sender is not None:
            self.sender.cancel()


@dataclass
class Step:
    """One partition's part of a batch: what its gate released, the sends it owes (made in
    the batch's transaction, after any earlier batch's), its changelog entries and its
    selection (started when the batch is prepared)."""

    durable: CuratorState
    source: TP
    released: list[tuple[str, bytes]]
    items: list[Scored] = field(default_factory=list)
    sends: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    unsent: dict[str, state_codec.Entry] = field(default_factory=dict)
    selected: asyncio.Future[list[Outcome]] | None = None


def _prepare(ctx: Context, durable: CuratorState, events: list[faust.EventT], source: TP) -> Step:
    """One partition's events of a batch through the gate, and the selection of what it
    releases started: no send and no await, so a batch still sending is not overtaken."""
    st = durable.load()
    step = Step(durable, source, list(st.released))
    st.released = []
    # released in this batch or one still in flight, not finished yet
    pending = durable.in_flight | {key for key, _ in step.released}
    for ev in events:
        admitted = _admit(ctx, step, ev, pending)
        step.released += admitted
        pending.update(key for key, _ in admitted)
    durable.in_flight.update(key for key, _ in step.released)
    step.items = [durable.item(key, raw) for key, raw in step.released]
    aligned = [
        (item, raw)
        for item, (_, raw) in zip(step.items, step.released, strict=True)
        if durable.curator.is_aligned(item)
    ]
    if aligned:
        step.selected = durable.select([it for it, _ in aligned], [raw for _, raw in aligned])
    return step


async def _complete(ctx: Context, step: Step) -> None:
    """The step's sends, outcomes and changelog entries, in the batch's transaction."""
    for send in step.sends:
        await send()
    if step.released:
        await _finish(ctx, step)
    await step.durable.flush(step.source, step.unsent)


def _admit(
    ctx: Context, step: Step, event: faust.EventT, pending: set[str]
) -> list[tuple[str, bytes]]:
    """Puts one scored message into the gate; returns what the gate releases. ``pending``:
    the ids the gate released earlier and not finished yet."""
    durable = step.durable
    try:
        record = ctx.serde["ScoredSample"].decode(event.value)
        item = scored_from_record(record)
    except NOT_A_SAMPLE as exc:
        step.sends.append(partial(ctx.dead_letter, event, STAGE, str(exc)))
        return []
    st = durable.load()
    key, raw = record["id"], bytes(event.value)
    if record.get("attempt", 0) > 0:
        if not st.gate.waiting(key):
            return []  # a redelivered recaption: already handled
        durable.put(key, state_codec.queued(durable.seq_of(key), raw), step.unsent)
        durable.decoded[key] = item
        return st.gate.resolve(key, raw)
    if key in st.finished or key in st.gate or key in pending:
        return []  # sent again (a crawler's resend, an upstream retry): the first one counts
    seq = durable.seq()
    if durable.curator.is_aligned(item):
        durable.put(key, state_codec.queued(seq, raw), step.unsent)
        durable.decoded[key] = item
        return st.gate.push(key, raw)
    request = recaption_request(item, ctx.settings.delta)
    recaption = ctx.settings.topic_recaption
    step.sends.append(partial(ctx.send, recaption, "RecaptionRequest", request, event.message.tp))
    durable.put(key, state_codec.queued(seq, None), step.unsent)
    return st.gate.push(key, None)


async def _finish(ctx: Context, step: Step) -> None:
    """Gain + policy for the aligned, rejection for the still misaligned, in gate order."""
    durable, source = step.durable, step.source
    outcomes = await step.selected if step.selected is not None else []
    by_id: dict[str, Outcome] = {o.id: o for o in outcomes}
    st = durable.load()
    for it in step.items:
        key = it.sample.id
        seq = durable.seq_of(key)
        outcome = by_id.get(key)
        if outcome is None:
            outcome = still_misaligned(it, ctx.settings.delta)
            durable.put(key, state_codec.rejected(seq), step.unsent)
        elif not durable.curator.indexes(outcome):  # rejected: not part of the curated set
            durable.put(key, state_codec.rejected(seq), step.unsent)
        else:
            vectors = {"image": it.encoded.image_emb}
            if it.encoded.text_emb is not None and "text" in durable.curator.index.modalities:
                vectors["text"] = it.encoded.text_emb
            entry = state_codec.indexed(
                seq, vectors, it.sample.label, outcome.gain, it.encoded.image_hash
            )
            durable.put(key, entry, step.unsent)
        st.finished.add(key)
        durable.in_flight.discard(key)
        await _emit(ctx, outcome, it, source)
        for evicted in outcome.evicted:
            await _emit_eviction(ctx, evicted, key, source)


def _ignore_result(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: a child already gone is the next batch's error


async def _emit(ctx: Context, outcome: Outcome, item: Scored, source: TP) -> None:
    record: dict[str, Any] = outcome_record(outcome, item.sample, item)
    if outcome.decision == "accepted":
        await ctx.send(ctx.settings.topic_accepted, "AcceptedSample", record, source)
    else:
        await ctx.send(ctx.settings.topic_rejected, "RejectedSample", record, source)


async def _emit_eviction(ctx: Context, sample_id: str, by: str, source: TP) -> None:
    """Budget policy: a better sample displaced an accepted one. Downstream consumers see a
    rejection for an id they saw accepted and drop it (the export does)."""
    record = {
        "id": sample_id,
        "reason": "over_budget",
        "detail": f"pushed out of the budget by {by}",
    }
    await ctx.send(ctx.settings.topic_rejected, "RejectedSample", record, source)
