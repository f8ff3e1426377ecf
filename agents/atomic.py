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
* The commit timer can run at any ``await`` of an agent, so a commit could land inside a
  batch: half its outputs and state committed, its offsets not. ``BatchCommits.hold``
  keeps commits out of a batch by holding ``Consumer._commit_fut``, the future Faust
  itself uses so that one commit runs at a time (a commit that finds it set waits, then
  skips), and commits at the end of the batch when one is due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faust
from faust.assignor import PartitionAssignor
from faust.transport.consumer import Consumer, TransactionManager
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


class BatchCommits:
    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.last_commit = time.monotonic()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        consumer = self.app.consumer
        while consumer._commit_fut is not None:  # a commit or another batch is running
            await consumer.maybe_wait_for_commit_to_finish()
        held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        consumer._commit_fut = held
        try:
            yield
        except Exception as exc:
            # Part of the batch may be in memory (index, gate) but not in Kafka: stop the
            # worker rather than go on from a state nobody committed. The restarted worker
            # rebuilds it from the table and gets the batch again.
            log.exception("batch failed inside its transaction; stopping the worker")
            await self.app.crash(exc)
            raise
        finally:
            consumer._commit_fut = None
            held.set_result(None)  # a timer commit that waited now skips: we commit here
        if time.monotonic() - self.last_commit >= self.app.conf.broker_commit_interval:
            self.last_commit = time.monotonic()
            await consumer.commit()
