"""Kafka transactions for the agents: which transaction a message joins, and batches that
never straddle a commit.

With ``processing_guarantee="exactly_once"`` Faust keeps one transactional producer per
source partition and commits, from a timer task, the source offsets together with what
that producer sent. These things in faust-streaming 0.15 (pinned in pyproject.toml) would
still let a crash or a rebalance duplicate or lose output, and this module closes them:

* Faust chooses the producer from the *destination* topic and only knows topics the app
  consumes; a message to ``accepted``, ``rejected`` or ``dead-letter`` silently went out
  through the plain producer, outside any transaction. ``transactional_id`` names the
  producer of the *source* partition instead, as Kafka Streams does.
* Faust names a partition's producer after its *copartition group*, a number per partition
  count: every one-partition topic shares producer ``<app>-0-0``. Two processes that own
  different one-partition topics (an inference worker owning `recaptioned`, a curator
  owning `scored`) would then fence each other. ``name_producers_by_topic`` names each
  source partition's producer after its topic instead, so every source partition (one of
  the N of `raw-samples`, or `scored`) has its own transaction, whoever owns it.
* A source partition that leaves a worker keeps its transactional producer there: Faust
  stops the producers of the partitions it computes as revoked, and that set came out
  empty in our rebalances (no "Stopping ... transactional producers" is ever logged). The
  new owner fences the old producer; should the partition come back, Faust reuses the
  fenced producer and the worker crashes with ``ProducerFenced`` at its next commit.
  ``stop_producers_of_lost_partitions`` stops every producer whose partition the new
  assignment does not give this worker as active.
* At a rebalance Faust drops the acked offsets of the revoked partitions (all of them,
  with Kafka's eager protocol) *before* its revocation handler commits, so that commit
  carries nothing and the open transaction stays open; a partition that comes back is
  sought to its committed offset and its batches since the last commit are processed again
  into the same transaction, then committed twice (seen: a second worker joining made the
  inference stage write its first 64 samples to `scored` twice). ``commit_before_revocation``
  runs Faust's own revocation steps (stop the flow, let batches in flight finish, commit
  and end the transactions) before the offsets are dropped, as Kafka Streams commits on
  revocation.
* After that revocation commit, a partition that stays with this worker but had nothing to
  commit keeps its transaction open, and Faust's rebalance begins it again: aiokafka
  refuses (``Invalid state transition IN_TRANSACTION -> IN_TRANSACTION``) and Faust logs a
  WARNING per such partition at every rebalance, while the transaction simply goes on.
  ``keep_open_transactions`` lets it go on without the warning.
* Faust acks every event ``take_events`` handed out once the agent's loop leaves the batch,
  however it leaves it. After an error (a model that raises, a send that fails) or a
  cancellation mid-batch, the next commit carried the batch's offsets together with
  whatever part of its outputs had been sent: samples lost (seen: one error of the model
  step lost 367 of 3,000 samples, the worker going on; one in the curator's gain step, 3).
  ``refuse_commits`` marks the process instead: it commits nothing more, and the worker
  stops (``Context.batch``); the next worker reads the batch again from the last commit.
* A graceful stop commits twice: the app commits and ends the transactions, then its
  consumer's own stop commits the offsets that became committable since (acked before,
  held back until a gap of transaction markers was known). aiokafka refused those
  (``IllegalOperation('Not in the middle of a transaction')``, an ERROR at about one stop in
  three) and the next worker read them again. Their outputs were committed with the
  transaction that ended, and no batch can send after it (aiokafka refuses a send outside a
  transaction, and such a batch refuses all commits), so ``commit_in_a_transaction`` begins
  a transaction for the offsets alone.
* A topic written in transactions (`scored`, `recaption`, `recaptioned`) has a marker
  after each commit, an offset without a record. Faust's fetch loop records such a gap
  when the offsets jump, but through the offset of the record after it, which is then
  acked a second time; its commit scans the acked offsets for consecutive ones and stopped
  at the repeat. So a batch that followed a marker committed its outputs with the offsets
  before it: seen after a kill, the next owner of `recaption` read a committed batch again
  and wrote its 63 records to `recaptioned` twice (faust-streaming issue #606).
  ``gaps_end_before_the_next_record`` records the gap without that record.
* Records Faust fetched but did not hand to a stream (the flow stopped by a rebalance, or
  the generation changed while it fetched) are dropped, and Faust seeks back to the
  committed offsets. aiokafka's ``seek_to_committed`` seeks only partitions whose
  committed offset is above 0, so a partition nothing was ever committed on kept its
  position past the dropped records, and they were never read. Seen once: the first
  recaption request (offset 0 of `recaption`), fetched while a second worker joined, was
  never captioned, and the curator's gate held every later sample behind it.
  ``seek_back_to_the_start_when_nothing_was_committed`` seeks those to their start.
* The commit timer can run at any ``await`` of an agent, so a commit could land inside a
  batch: half its outputs and state committed, its offsets not. ``BatchCommits.hold``
  marks the batch's source partitions as in flight, and ``commit_only_settled_partitions``
  leaves those out of every commit (their transactions stay open); a batch starts only
  when no commit is running (aiokafka refuses sends while a transaction is committing),
  and commits at its end when its partitions' commit is due. Batches of different
  partitions (the inference and the curator agents) run side by side: holding every commit
  during any batch had made the two stages of one worker take turns.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.producer.transaction_manager import TransactionState
from faust.assignor import PartitionAssignor
from faust.transport.consumer import Consumer, TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.types import TP

log = logging.getLogger("infogrowth.agents")


def transactional_id(app: faust.App, source: TP) -> str | None:
    """The producer whose transaction commits ``source``'s offsets (Faust's naming)."""
    if not app.in_transaction:
        return None
    return f"{app.conf.id}-{app.assignor.group_for_topic(source.topic)}-{source.partition}"


def _topic_as_group(self: PartitionAssignor, topic: str) -> str:
    return topic


def name_producers_by_topic() -> None:
    """One transactional producer per source topic-partition (see the module docstring).
    Faust uses ``group_for_topic`` only to build transactional ids."""
    PartitionAssignor.group_for_topic = _topic_as_group  # type: ignore[assignment]


_faust_on_rebalance = TransactionManager.on_rebalance


async def _stop_then_rebalance(
    self: TransactionManager, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP]
) -> None:
    kept = self._tps_to_transactional_ids(assigned)
    lost = sorted(set(self.producer._transaction_producers) - kept)
    if lost:
        log.info("stopping the transactional producers of partitions gone: %s", lost)
    for transactional_id in lost:
        await self.producer.stop_transaction(transactional_id)
    await _faust_on_rebalance(self, assigned, revoked, newly_assigned)


def stop_producers_of_lost_partitions() -> None:
    """A partition's producer stops when the partition leaves (see the module docstring)."""
    TransactionManager.on_rebalance = _stop_then_rebalance  # type: ignore[method-assign]


_faust_on_partitions_revoked = Consumer.on_partitions_revoked


async def _commit_then_revoke(self: Consumer, revoked: set[TP]) -> None:
    app = self.app
    assignment = self.assignment()
    if app.in_transaction and assignment and not self.should_stop:
        # Faust's own revocation steps (App._on_partitions_revoked), run before the acks
        # are dropped: no new events, the batches in flight finish, then commit.
        self.stop_flow()
        app.flow_control.suspend()
        self.pause_partitions(assignment)
        app.flow_control.clear()
        await self.wait_empty()  # commits the acked offsets and ends the transactions
    await _faust_on_partitions_revoked(self, revoked)


def commit_before_revocation() -> None:
    """A rebalance commits what was processed before the partitions are given up (see the
    module docstring)."""
    Consumer.on_partitions_revoked = _commit_then_revoke  # type: ignore[method-assign]


_faust_begin_transaction = AIOKafkaProducer.begin_transaction


async def _begin_unless_open(self: AIOKafkaProducer, transactional_id: str) -> None:
    producer = self._transaction_producers.get(transactional_id)
    manager = getattr(producer, "_txn_manager", None)
    if manager is not None and manager.is_in_transaction():
        return  # kept across a rebalance with nothing to commit: its transaction goes on
    await _faust_begin_transaction(self, transactional_id)


def keep_open_transactions() -> None:
    """A transaction still open at a rebalance goes on (see the module docstring)."""
    AIOKafkaProducer.begin_transaction = _begin_unless_open  # type: ignore[method-assign]


_refusing: weakref.WeakSet[faust.App] = weakref.WeakSet()


def refuse_commits(app: faust.App) -> None:
    """This process commits nothing more: a batch failed or was cut short, so offsets
    Faust acks from now on may belong to samples whose outputs were never sent."""
    _refusing.add(app)


_faust_commit = Consumer.commit


async def _commit_unless_refused(
    self: Consumer, topics: object = None, start_new_transaction: bool = True
) -> bool:
    if self.app in _refusing:
        return False
    return await _faust_commit(self, topics, start_new_transaction=start_new_transaction)  # type: ignore[arg-type]


def no_commits_after_a_failed_batch() -> None:
    """Every Faust commit (timer, batch end, rebalance, stop) checks ``refuse_commits``."""
    Consumer.commit = _commit_unless_refused  # type: ignore[method-assign]


_faust_commit_transactions = AIOKafkaProducer.commit_transactions


async def _commit_in_a_transaction(
    self: AIOKafkaProducer,
    tid_to_offset_map: dict[str, dict[TP, int]],
    group_id: str,
    start_new_transaction: bool = True,
) -> None:
    for tid in tid_to_offset_map:
        producer = self._transaction_producers.get(tid)
        manager = getattr(producer, "_txn_manager", None)
        if manager is not None and manager.state is TransactionState.READY:
            log.info("offsets acked after %s's transaction ended: committed in a new one", tid)
            await producer.begin_transaction()
    await _faust_commit_transactions(self, tid_to_offset_map, group_id, start_new_transaction)


def commit_in_a_transaction() -> None:
    """Offsets committed after the transactions ended go in one of their own (see the
    module docstring)."""
    AIOKafkaProducer.commit_transactions = _commit_in_a_transaction  # type: ignore[method-assign]


_faust_add_gap = Consumer._add_gap


async def _gap_before(self: Consumer, tp: TP, offset_from: int, offset_to: int) -> None:
    # Faust's caller passes the offset of the record that revealed the gap as its end.
    await _faust_add_gap(self, tp, offset_from, offset_to - 1)


def gaps_end_before_the_next_record() -> None:
    """A gap of transaction markers ends before the record after it (see the module
    docstring)."""
    Consumer._add_gap = _gap_before  # type: ignore[method-assign]


async def seek_to_committed_or_start(consumer: AIOKafkaConsumer) -> dict[Any, int | None]:
    """``consumer.seek_to_committed()``, and the partitions with no committed offset (or 0)
    to their first offset: aiokafka leaves those where they are (see the module docstring)."""
    committed = await consumer.seek_to_committed()
    unstarted = [tp for tp, offset in committed.items() if not offset]
    if unstarted:
        await consumer.seek_to_beginning(*unstarted)
    return committed


async def _seek_back(self: AIOKafkaConsumerThread) -> Any:
    return await self.call_thread(seek_to_committed_or_start, self._ensure_consumer())


def seek_back_to_the_start_when_nothing_was_committed() -> None:
    """Faust's seek back to the committed offsets also rewinds the partitions with none
    (see the module docstring)."""
    AIOKafkaConsumerThread.seek_to_committed = _seek_back  # type: ignore[method-assign]


_in_flight: weakref.WeakKeyDictionary[faust.App, Counter[TP]] = weakref.WeakKeyDictionary()


def _settled_with_pending_acks(self: Consumer, topics: object = None) -> Iterator[TP]:
    busy = _in_flight.get(self.app) or Counter()
    return (
        tp
        for tp in self._acked
        if not busy[tp] and (topics is None or tp in topics or tp.topic in topics)  # type: ignore[operator]
    )


def commit_only_settled_partitions() -> None:
    """Every Faust commit leaves out the partitions a batch is running on (see the module
    docstring). Faust takes the partitions to commit from this one method."""
    Consumer._filter_tps_with_pending_acks = _settled_with_pending_acks  # type: ignore[method-assign]


class Held:
    """What ``BatchCommits.hold`` did at the batch's end: ``committed`` is true when the
    commit that followed carried the batch's offsets (a snapshot may then cover it)."""

    committed = False


class BatchCommits:
    def __init__(self, app: faust.App) -> None:
        self.app = app
        # When a batch's own commit last carried each source partition (or when its first
        # batch here began). Per partition: with one clock for all, the inference batches'
        # commits (which leave out the curator's partition, in flight) kept the curator's
        # batches from committing, and its outcomes became visible every 3-4 s under load
        # instead of every commit interval.
        self.committed_at: dict[TP, float] = {}
        self.in_flight = _in_flight.setdefault(app, Counter())

    @asynccontextmanager
    async def hold(self, sources: Iterable[TP], caught_up: bool = False) -> AsyncIterator[Held]:
        """A batch reading ``sources``: no commit takes their transactions while it runs.
        It commits at its end when its partitions' commit is due, or at once when it
        ``caught_up`` with its input (a batch short of full: nothing more was waiting): the
        last outputs before a pause became visible only an interval later, up to 0.5 s for
        each stage, which a pipeline's latency and a run's tail paid on every hop. Short
        batches come at most once per ``take_within``, so under load, with full batches,
        commits stay one per interval."""
        consumer = self.app.consumer
        await _no_commit_running(consumer)  # a running commit is ending the transactions
        mine = Counter(set(sources))
        self.in_flight.update(mine)  # no await since the wait: no commit began meanwhile
        for tp in mine:  # a partition's first commit: an interval after its first batch
            self.committed_at.setdefault(tp, time.monotonic())
        held = Held()
        try:
            yield held
        except BaseException:
            refuse_commits(self.app)  # before a commit can take the partitions back
            raise
        finally:
            self.in_flight.subtract(mine)
        if caught_up or self._due(mine):
            await _no_commit_running(consumer)  # Faust skips a commit that meets another
            held.committed = await consumer.commit()
            if held.committed:
                self.committed_at.update(dict.fromkeys(mine, time.monotonic()))

    async def commit_now(self) -> bool:
        """A commit of everything settled, outside any batch's own (the curator's, before a
        snapshot, with no batch in flight); whether it committed."""
        await _no_commit_running(self.app.consumer)
        return bool(await self.app.consumer.commit())

    def _due(self, sources: Iterable[TP]) -> bool:
        """Whether a commit interval has passed since a batch's own commit carried one of
        ``sources`` (or since its first batch here)."""
        since = time.monotonic() - self.app.conf.broker_commit_interval
        return any(self.committed_at[tp] <= since for tp in sources)


async def _no_commit_running(consumer: Consumer) -> None:
    """Returns once no commit is running (``Consumer._commit_fut``, Faust's one-at-a-time
    future); nothing may await between this and what relies on it."""
    while consumer._commit_fut is not None:
        await consumer.maybe_wait_for_commit_to_finish()
