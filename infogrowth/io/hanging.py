"""Transactions that Kafka decided but left open on a partition: find them, end them as decided.

A transaction coordinator that finds no leader for a partition while it sends a decided
transaction's COMMIT/ABORT markers takes the partition for deleted, skips it and records the
transaction complete (``TransactionMarkerChannelManager``, Kafka 4.3). A single KRaft broker
killed while a transaction commits does this on every restart: it reloads the transaction
from a stale image, its old registration is fenced (every partition leaderless) before its
socket opens, and the markers are dropped. The partition keeps an open transaction nobody
will end, and ``read_committed`` consumers stop at its last stable offset for good (seen in
the broker-restart test: `scored` held 15 records behind LSO 2123 for 300 s).

The end is the coordinator's own decision, read from its log (``__transaction_state``): the
producer's last entry that lists the partition, when that is a PrepareCommit or PrepareAbort.
An Ongoing one is not decided yet and is left to its coordinator; no entry at all (compacted
away) decides nothing, so that one is left open and reported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.cluster import ClusterMetadata
from aiokafka.structs import TopicPartition as AioTopicPartition

from infogrowth.io import txn_wire
from infogrowth.io.kafka_io import end_offsets, read_topic

log = logging.getLogger("infogrowth.kafka")
TXN_LOG = "__transaction_state"
MARGIN_MS = 10_000  # beyond the transaction timeout, after which the coordinator aborts it
REPAIR_EVERY_S = 10.0  # settled_end: how often it looks for transactions left open

Partition = tuple[str, int]


@dataclass(frozen=True)
class OpenTransaction:
    """A producer's transaction with records on a partition and no marker yet."""

    topic: str
    partition: int
    producer_id: int
    producer_epoch: int
    coordinator_epoch: int
    first_offset: int
    last_write_ms: int

    @property
    def at(self) -> Partition:
        return self.topic, self.partition

    def __str__(self) -> str:
        return (
            f"{self.topic}-{self.partition} (producer {self.producer_id}, "
            f"open since offset {self.first_offset})"
        )


@dataclass(frozen=True)
class Found:
    """A transaction found left open, and what became of it: ``end`` is "commit" or "abort"
    (ended so), "undecided" (nothing in the log decides it) or "failed" (the marker was
    refused)."""

    txn: OpenTransaction
    end: str
    detail: str

    def __str__(self) -> str:
        return f"{self.txn}: {self.detail}"


@dataclass(frozen=True)
class LogEntry:
    """A record of the coordinator's log that lists partitions: Ongoing, PrepareCommit or
    PrepareAbort (``commit`` None, True, False)."""

    transactional_id: str
    producer_id: int
    commit: bool | None
    partitions: frozenset[Partition]
    timeout_ms: int


def last_entry(txn: OpenTransaction, log_entries: Iterable[LogEntry]) -> LogEntry | None:
    """The producer's last entry that lists the partition: the transaction open there (a
    later transaction of the producer on the partition would have ended it with its marker)."""
    last = None
    for entry in log_entries:
        if entry.producer_id == txn.producer_id and txn.at in entry.partitions:
            last = entry
    return last


def entries(records: Iterable[tuple[bytes, bytes | None]]) -> Iterator[LogEntry]:
    """The entries of ``__transaction_state`` (key, value) records that list partitions."""
    for key, value in records:
        if value is None:
            continue
        entry = txn_wire.transaction_log_value(value)
        if entry["status"] in txn_wire.LISTING:
            yield LogEntry(
                transactional_id=txn_wire.transaction_log_key(key),
                producer_id=entry["producer_id"],
                commit=txn_wire.LISTING[entry["status"]],
                partitions=frozenset((t, i) for t, ids in entry["partitions"] for i in ids),
                timeout_ms=entry["timeout_ms"],
            )


async def open_transactions(client: AIOKafkaClient, topics: Iterable[str]) -> list[OpenTransaction]:
    """Every open transaction on the topics' partitions, asked of each partition's leader."""
    by_leader: dict[int, dict[str, list[int]]] = {}
    for (topic, partition), leader in _leaders(await client.fetch_all_metadata(), topics).items():
        by_leader.setdefault(leader, {}).setdefault(topic, []).append(partition)
    found = []
    for leader, asked in by_leader.items():
        request = txn_wire.DescribeProducers([(t, ps, {}) for t, ps in asked.items()])
        answer = (await client.send(leader, request)).to_object()
        for topic in answer["topics"]:
            for part in topic["partitions"]:
                found += [
                    OpenTransaction(
                        topic["name"],
                        part["partition"],
                        p["producer_id"],
                        p["producer_epoch"],
                        p["coordinator_epoch"],
                        p["txn_start"],
                        p["last_timestamp"],
                    )  # fmt: skip
                    for p in part["producers"]
                    if p["txn_start"] >= 0
                ]
    return found


def _leaders(metadata: ClusterMetadata, topics: Iterable[str]) -> dict[Partition, int]:
    """Each partition of the topics that has a leader now, with the leader's node id."""
    found = {}
    for topic in topics:
        for partition in sorted(metadata.partitions_for_topic(topic) or ()):
            leader = metadata.leader_for_partition(AioTopicPartition(topic, partition))
            if leader is not None and leader >= 0:
                found[topic, partition] = leader
    return found


async def close_hanging(
    bootstrap: str, topics: Iterable[str], now_ms: int | None = None
) -> list[Found]:
    """Ends every decided transaction left open on the topics' partitions for longer than its
    timeout (+ ``MARGIN_MS``) with the coordinator's decision. Returns each transaction found
    left open, ended or not (each also logged); one still running is not left open."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    client = await _client(bootstrap)
    try:
        stale = await _stale(client, topics, now_ms)
        if not stale:
            return []
        known = list(entries((m.key(), m.value()) for m in read_topic(bootstrap, TXN_LOG)))
        closed = [await _close(client, txn, last_entry(txn, known), now_ms) for txn in stale]
        found = [f for f in closed if f is not None]
        for f in found:
            log.warning("transaction left open by Kafka: %s", f)
        return found
    finally:
        await client.close()


async def stale_transactions(bootstrap: str, topics: Iterable[str]) -> list[OpenTransaction]:
    """The transactions open on the topics' partitions with no write for ``MARGIN_MS``."""
    client = await _client(bootstrap)
    try:
        return await _stale(client, topics, int(time.time() * 1000))
    finally:
        await client.close()


async def _client(bootstrap: str) -> AIOKafkaClient:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="infogrowth-transactions")
    await client.bootstrap()
    return client


async def _stale(client: AIOKafkaClient, topics: Iterable[str], now: int) -> list[OpenTransaction]:
    return [t for t in await open_transactions(client, topics) if now - t.last_write_ms > MARGIN_MS]


async def _close(
    client: AIOKafkaClient, txn: OpenTransaction, decision: LogEntry | None, now_ms: int
) -> Found | None:
    if decision is None:
        why = f"nothing in {TXN_LOG} decides it; left open (kafka-transactions.sh aborts)"
        return Found(txn, "undecided", why)
    if decision.commit is None or now_ms - txn.last_write_ms <= decision.timeout_ms + MARGIN_MS:
        return None  # not decided yet: its coordinator ends it, or aborts it at its timeout
    if await _still_running(client, decision.transactional_id, txn):
        return None  # its producer's next marker ends it; one from here could cut that one
    if txn not in await open_transactions(client, [txn.topic]):
        return None  # ended meanwhile (another worker), or written to again: not this one
    verdict = "COMMIT" if decision.commit else "ABORT"
    marker = (txn.producer_id, txn.producer_epoch, decision.commit,
              [(txn.topic, [txn.partition], {})], txn.coordinator_epoch, {})  # fmt: skip
    leader = _leaders(await client.fetch_all_metadata(), [txn.topic])[txn.at]
    answer = (await client.send(leader, txn_wire.WriteTxnMarkers([marker]))).to_object()
    parts = [p for m in answer["markers"] for t in m["topics"] for p in t["partitions"]]
    errors = sorted({p["error_code"] for p in parts} - {0})
    if errors or not parts:
        return Found(txn, "failed", f"writing its {verdict} marker failed (error codes {errors})")
    why = f"ended with {verdict}, as {decision.transactional_id}'s coordinator decided"
    return Found(txn, verdict.lower(), why)


async def _still_running(client: AIOKafkaClient, tid: str, txn: OpenTransaction) -> bool:
    """Whether the producer's coordinator has the partition in a transaction now: then its own
    marker ends the partition's open records, and one from here could cut that transaction."""
    node = await client.coordinator_lookup(CoordinationType.TRANSACTION, tid)
    request = txn_wire.DescribeTransactions([tid])
    for state in (await client.send(node, request)).to_object()["transactions"]:
        listed = {(t["name"], i) for t in state["partitions"] for i in t["partitions"]}
        running = state["state"] in ("Ongoing", "PrepareCommit", "PrepareAbort")
        if state["producer_id"] == txn.producer_id and running and txn.at in listed:
            return True
    return False


def settled_end(bootstrap: str, topic: str, partition: int, timeout_s: float = 120.0) -> int:
    """The end of ``partition`` once no transaction is open on it (last stable offset =
    high watermark), for a reader that must see everything committed so far. A transaction
    that a killed producer left open is aborted by its coordinator when a producer with the
    same transactional id starts, or after the transaction timeout (60 s). One that Kafka
    decided but left open (a broker restart, above) is ended here as decided, once it is
    10 s past its timeout: a restore that read only to it would miss committed state. Past
    ``timeout_s`` the last stable offset is returned as it is."""
    deadline = time.monotonic() + timeout_s
    repair_at = time.monotonic()
    while True:
        written = end_offsets(bootstrap, topic, isolation="read_uncommitted")[partition]
        stable = end_offsets(bootstrap, topic)[partition]
        if stable >= written or time.monotonic() > deadline:
            return stable
        if time.monotonic() >= repair_at:
            asyncio.run(close_hanging(bootstrap, [topic]))
            repair_at = time.monotonic() + REPAIR_EVERY_S
        time.sleep(0.2)
