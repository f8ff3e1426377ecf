"""Faust transaction patches of agents/atomic.py (and the batch guard of agents/context.py)
that need no broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from aiokafka.producer.transaction_manager import TransactionState
from faust.transport.consumer import Consumer
from faust.types import TP

from agents import atomic
from agents.context import Context


class _Manager:
    def __init__(self, open_: bool) -> None:
        self.open = open_

    def is_in_transaction(self) -> bool:
        return self.open


def test_a_transaction_still_open_at_a_rebalance_is_not_begun_again(monkeypatch) -> None:  # noqa: ANN001
    """Faust begins the transaction of every assigned partition at a rebalance; one that
    stayed open (kept partition, nothing committed) goes on instead of being begun again
    (aiokafka refuses, and Faust logged a WARNING for each)."""
    begun: list[str] = []

    async def faust_begin(self: object, transactional_id: str) -> None:
        begun.append(transactional_id)

    monkeypatch.setattr(atomic, "_faust_begin_transaction", faust_begin)
    producer = SimpleNamespace(
        _transaction_producers={
            "kept-0": SimpleNamespace(_txn_manager=_Manager(open_=True)),
            "ended-1": SimpleNamespace(_txn_manager=_Manager(open_=False)),
        }
    )

    async def rebalance() -> None:
        for tid in ("kept-0", "ended-1", "new-2"):
            await atomic._begin_unless_open(producer, tid)  # type: ignore[arg-type]

    asyncio.run(rebalance())
    assert begun == ["ended-1", "new-2"]


class _App:
    """Stands in for the Faust app: weak-referenceable, records crashes."""

    def __init__(self) -> None:
        self.crashed: list[BaseException] = []

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


def test_a_process_that_refused_commits_commits_nothing_more(monkeypatch) -> None:  # noqa: ANN001
    committed: list[object] = []

    async def faust_commit(self: object, topics: object, start_new_transaction: bool) -> bool:
        committed.append(topics)
        return True

    monkeypatch.setattr(atomic, "_faust_commit", faust_commit)
    app, other = _App(), _App()
    consumer, elsewhere = SimpleNamespace(app=app), SimpleNamespace(app=other)

    async def commits() -> list[bool]:
        before = await atomic._commit_unless_refused(consumer, "t1")  # type: ignore[arg-type]
        atomic.refuse_commits(app)  # type: ignore[arg-type]
        after = await atomic._commit_unless_refused(consumer, "t2")  # type: ignore[arg-type]
        other_app = await atomic._commit_unless_refused(elsewhere, "t3")  # type: ignore[arg-type]
        return [before, after, other_app]

    assert asyncio.run(commits()) == [True, False, True]
    assert committed == ["t1", "t3"]


async def _batch(ctx: object, error: BaseException | None) -> None:
    async with Context.batch(ctx):  # type: ignore[arg-type]
        if error is not None:
            raise error


def test_a_failed_batch_refuses_commits_crashes_the_worker_and_waits_for_its_stop() -> None:
    """Its agent does not raise (Faust would restart it, and a restarted agent held up the
    worker's stop): it waits until the stop cancels it."""
    app = _App()
    ctx = SimpleNamespace(app=app)
    error = RuntimeError("model out of memory")

    async def run() -> None:
        await _batch(ctx, None)
        assert app not in atomic._refusing and not app.crashed
        task = asyncio.create_task(_batch(ctx, error))
        await asyncio.sleep(0.05)
        assert not task.done()
        assert app in atomic._refusing and app.crashed == [error]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_a_batch_cut_short_by_the_stop_refuses_commits() -> None:
    app = _App()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_batch(SimpleNamespace(app=app), asyncio.CancelledError()))
    assert app in atomic._refusing and not app.crashed


def test_offsets_committed_after_the_transactions_ended_get_a_transaction(monkeypatch) -> None:  # noqa: ANN001
    """A graceful stop's second commit: the producer whose transaction the first one ended
    begins a new one for the offsets (aiokafka refused them: 'Not in the middle of a
    transaction'); one still in its transaction is left as it is."""
    calls: list[str] = []

    class _Producer:
        def __init__(self, name: str, state: TransactionState) -> None:
            self.name = name
            self._txn_manager = SimpleNamespace(state=state)

        async def begin_transaction(self) -> None:
            calls.append(f"begin {self.name}")

    async def faust_commit(self: object, offsets: dict, group: str, start_new: bool) -> None:
        calls.append(f"commit {sorted(offsets)} start_new={start_new}")

    monkeypatch.setattr(atomic, "_faust_commit_transactions", faust_commit)
    producers = {
        "ended": _Producer("ended", TransactionState.READY),
        "open": _Producer("open", TransactionState.IN_TRANSACTION),
    }
    faust_producer = SimpleNamespace(_transaction_producers=producers)
    offsets = {"ended": {}, "open": {}, "unknown": {}}
    asyncio.run(atomic._commit_in_a_transaction(faust_producer, offsets, "group", False))  # type: ignore[arg-type]
    assert calls == ["begin ended", "commit ['ended', 'open', 'unknown'] start_new=False"]


class _Consumer:
    """Faust's consumer as ``BatchCommits`` sees it: one commit at a time through
    ``_commit_fut``, each committing the partitions the patched filter offers."""

    def __init__(self, app: _App, acked: set[str]) -> None:
        self.app = app
        self._acked = {tp: [] for tp in sorted(acked)}
        self._commit_fut: asyncio.Future[None] | None = None
        self.commits: list[list[str]] = []

    async def maybe_wait_for_commit_to_finish(self) -> bool:
        if self._commit_fut is None:
            return False
        await self._commit_fut
        return True

    async def commit(self) -> bool:
        if await self.maybe_wait_for_commit_to_finish():
            return False
        self._commit_fut = asyncio.get_running_loop().create_future()
        try:
            tps = sorted(atomic._settled_with_pending_acks(self))  # type: ignore[arg-type]
            await asyncio.sleep(0.01)  # the broker's round trips
            self.commits.append(tps)
            for tp in tps:
                del self._acked[tp]
            return bool(tps)
        finally:
            fut, self._commit_fut = self._commit_fut, None
            fut.set_result(None)


def test_a_commit_leaves_out_the_partitions_of_a_running_batch_and_a_batch_waits_for_a_commit() -> (
    None
):
    """The curator's batch runs while the inference agent's batch commits: that commit
    carries the inference partition, not the curator's half-sent transaction; the curator's
    batch commits its own at its end. A batch does not start inside a commit."""
    app = _App()
    consumer = _Consumer(app, {"raw-0", "scored-0"})
    app.consumer, app.conf = consumer, SimpleNamespace(broker_commit_interval=0.0)  # type: ignore[attr-defined]
    commits = atomic.BatchCommits(app)  # type: ignore[arg-type]
    events: list[str] = []

    async def run() -> tuple[atomic.Held, atomic.Held]:
        async def curator() -> atomic.Held:
            async with commits.hold({"scored-0"}) as held:
                events.append("curator starts")
                await asyncio.sleep(0.05)  # sends while the other batch commits
                events.append("curator ends")
            return held

        async def inference() -> atomic.Held:
            await asyncio.sleep(0.01)
            async with commits.hold({"raw-0"}) as held:
                events.append("inference batch")
            events.append("inference committed")
            return held

        async def late() -> None:  # starts while the inference commit runs
            await asyncio.sleep(0.015)
            assert consumer._commit_fut is not None
            async with commits.hold({"raw-1"}):
                events.append(f"late starts after {len(consumer.commits)} commit(s)")

        cur, inf, _ = await asyncio.gather(curator(), inference(), late())
        return cur, inf

    cur, inf = asyncio.run(run())
    assert consumer.commits[0] == ["raw-0"]  # the curator's partition was in flight
    assert [tps for tps in consumer.commits[1:] if tps] == [["scored-0"]]
    assert inf.committed and cur.committed
    assert "late starts after 1 commit(s)" in events
    assert events.index("inference committed") < events.index("curator ends")
    assert not +commits.in_flight  # every batch gave its partitions back


def test_a_long_batch_commits_its_partition_at_its_end_whatever_other_batches_committed() -> None:
    """Short inference batches end and commit every interval, each leaving out the
    curator's partition (in flight); the curator's long batch still commits its own
    partition at its end: with one clock for all partitions it found a commit made moments
    before and waited for the next, which rarely came between its batches."""
    app = _App()
    consumer = _Consumer(app, {"raw-0", "scored-0"})
    app.consumer, app.conf = consumer, SimpleNamespace(broker_commit_interval=0.03)  # type: ignore[attr-defined]
    commits = atomic.BatchCommits(app)  # type: ignore[arg-type]

    async def run() -> atomic.Held:
        async def curator() -> atomic.Held:
            async with commits.hold({"scored-0"}) as held:
                while len(consumer.commits) < 2:  # ends right after an inference commit
                    await asyncio.sleep(0.001)
            return held

        async def inference() -> None:
            for _ in range(12):
                consumer._acked.setdefault("raw-0", [])  # each batch acks its events
                async with commits.hold({"raw-0"}):
                    await asyncio.sleep(0.005)

        held, _ = await asyncio.gather(curator(), inference())
        return held

    held = asyncio.run(run())
    assert held.committed
    assert ["scored-0"] in [[tp for tp in tps if tp == "scored-0"] for tps in consumer.commits]
    assert len([tps for tps in consumer.commits if "raw-0" in tps]) >= 2


def test_a_batch_that_caught_up_with_its_input_commits_at_once() -> None:
    """A full batch waits for the commit interval; a short one (nothing more was waiting)
    commits at its end, so the last outputs before a pause become visible at once."""
    app = _App()
    consumer = _Consumer(app, {"raw-0"})
    app.consumer, app.conf = consumer, SimpleNamespace(broker_commit_interval=60.0)  # type: ignore[attr-defined]
    commits = atomic.BatchCommits(app)  # type: ignore[arg-type]

    async def run() -> tuple[atomic.Held, atomic.Held]:
        async with commits.hold({"raw-0"}) as full:
            pass
        async with commits.hold({"raw-0"}, caught_up=True) as short:
            pass
        return full, short

    full, short = asyncio.run(run())
    assert not full.committed
    assert short.committed
    assert consumer.commits == [["raw-0"]]


def _commit_offset_after(records: list[int], committed: int) -> int | None:
    """The offset Faust's consumer would commit for a partition of a transactional topic
    after acking ``records``: where their offsets jump, transaction markers lie between
    them, which its fetch loop (``_drain_messages``) records as a gap."""

    async def run() -> int | None:
        app = faust.App("gap-test", broker="kafka://127.0.0.1:1", web_enabled=False)
        consumer = app.consumer  # not started: no broker
        tp = TP("recaption", 0)
        consumer._committed_offset[tp] = committed
        last = None
        for offset in records:
            if last is not None and offset - last > 1:
                await consumer._add_gap(tp, last + 1, offset)  # as _drain_messages does
            last = offset
            consumer._acked[tp].append(offset)
        return consumer._new_offset(tp)

    return asyncio.run(run())


def test_a_batch_after_a_transaction_marker_commits_all_its_offsets(monkeypatch) -> None:  # noqa: ANN001
    """The offsets of `recaption` seen in a kill test: a batch 464..509 with a marker at 508,
    then 510..572. Faust 0.15.3 counted the record after a marker into the gap too, acked
    it twice, and its commit stopped there (510): a batch whose outputs the same transaction
    committed was read again by the next owner after a kill (63 copies in `recaptioned`)."""
    monkeypatch.setattr(Consumer, "_add_gap", Consumer._add_gap)  # undone after the test
    atomic.gaps_end_before_the_next_record()
    records = [*range(464, 508), *range(509, 573)]
    assert _commit_offset_after(records, committed=464) == 573  # a marker at 508
    # A marker at the committed offset; two markers back to back (501, 502).
    assert _commit_offset_after([*range(509, 520)], committed=508) == 520
    assert _commit_offset_after([500, *range(503, 510)], committed=500) == 510
