"""Transactions Kafka decided but left open (infogrowth/io/hanging.py): the coordinator's log
is read right, only a decided transaction is ended, and ended as its coordinator decided."""

from __future__ import annotations

import asyncio
import json
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infogrowth.io import txn_wire
from infogrowth.io.hanging import (
    LogEntry,
    OpenTransaction,
    close_hanging,
    entries,
    last_entry,
    stale_transactions,
)
from infogrowth.io.kafka_io import end_offsets, read_topic
from infra._service import free_port
from infra.kafka import LocalKafka

FIXTURE = Path(__file__).parent / "data" / "hanging-broker.tar.gz"  # make_hanging_broker.py

# __transaction_state records of the broker-restart test that hung (CI, 2026-12-06): the
# transaction of `recaptioned-0`'s producer, Ongoing on `scored-0`, then also on the offsets,
# PrepareCommit, CompleteCommit; the broker skipped both markers on its restart.
TXN_ID = "infogrowth-demo-71780757-demo-71780757.recaptioned-0"
KEY = "0000" + "0034" + TXN_ID.encode().hex()
PREFIX = "0001000000000000000500000000ea60"  # v1, producer 5, epoch 0, timeout 60,000 ms
SCORED = "1564656d6f2d37313738303735372e73636f726564020000000000"
OFFSETS = "135f5f636f6e73756d65725f6f666673657473020000000200"
TIMES = "000001a24d08113e000001a24d0810f60100080000000000000005"
RECORDS = [
    PREFIX + "0102" + SCORED + "000001a24d0810f6000001a24d0810f60100080000000000000005",
    PREFIX + "0103" + SCORED + OFFSETS + "000001a24d08113a000001a24d0810f60100080000000000000005",
    PREFIX + "0203" + SCORED + OFFSETS + TIMES,
    PREFIX + "0401" + "000001a24d08295a000001a24d0810f60100080000000000000005",
]


def open_on(topic: str, partition: int, producer_id: int = 5) -> OpenTransaction:
    return OpenTransaction(topic, partition, producer_id, 0, 0, 2123, 0)


def test_the_coordinators_log_as_the_broker_wrote_it() -> None:
    found = list(entries((bytes.fromhex(KEY), bytes.fromhex(v)) for v in RECORDS))
    assert [e.commit for e in found] == [None, None, True]  # CompleteCommit lists nothing
    assert {e.transactional_id for e in found} == {TXN_ID}
    assert {e.producer_id for e in found} == {5} and {e.timeout_ms for e in found} == {60_000}
    assert found[0].partitions == {("demo-71780757.scored", 0)}
    assert found[2].partitions == {("demo-71780757.scored", 0), ("__consumer_offsets", 2)}
    decision = last_entry(open_on("demo-71780757.scored", 0), found)
    assert decision is not None and decision.commit is True


def test_the_classic_log_format_and_a_tombstone() -> None:
    schema = txn_wire.LOG_VALUES[0]
    value = b"\x00\x00" + schema.encode((7, 3, 900_000, 3, [("t", [0, 2])], 5, 4))
    (entry,) = entries([(bytes.fromhex("00000002") + b"id", value), (b"x", None)])
    assert entry == LogEntry("id", 7, False, frozenset({("t", 0), ("t", 2)}), 900_000)
    with pytest.raises(ValueError, match="newer than this reader"):
        txn_wire.transaction_log_value(b"\x00\x09")


def entry(producer: int, commit: bool | None, *partitions: int) -> LogEntry:
    return LogEntry("tid", producer, commit, frozenset(("t", p) for p in partitions), 60_000)


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ([entry(5, None, 0), entry(5, True, 0)], True),
        ([entry(5, None, 0), entry(5, False, 0)], False),
        # a later transaction of the producer without the partition decides nothing for it
        ([entry(5, True, 0, 1), entry(5, None, 1), entry(5, False, 1)], True),
        # the last transaction that lists it is still running: not decided
        ([entry(5, True, 0), entry(5, None, 0)], None),
        # another producer's decisions, or none at all
        ([entry(6, True, 0)], "nothing"),
        ([], "nothing"),
    ],
)
def test_the_decision_is_the_producers_last_entry_listing_the_partition(log, expected) -> None:  # noqa: ANN001
    found = last_entry(open_on("t", 0), log)
    assert (found.commit if found else "nothing") == expected


def read(bootstrap: str, topic: str, partition: int, isolation: str) -> list[bytes]:
    """The partition's values up to its end: the last stable offset when read_committed."""
    found = read_topic(bootstrap, topic, partitions=[partition], isolation=isolation)
    return [message.value() for message in found]


def ends(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    """(last stable offset, high watermark); a restarted broker leads its partitions a
    little after it answers (end_offsets waits for that)."""
    stable = end_offsets(bootstrap, topic, timeout=30)[partition]
    return stable, end_offsets(bootstrap, topic, "read_uncommitted", timeout=30)[partition]


def committed_offset(bootstrap: str, group: str, partition: int) -> int:
    """The group's stable committed offset of ``source`` (read_committed asks for a stable
    one: an offset commit left open in a transaction fails it)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "isolation.level": "read_committed"})  # fmt: skip
    try:
        return consumer.committed([TopicPartition("source", partition)], timeout=20)[0].offset
    finally:
        consumer.close()


@pytest.fixture
def hanging_broker(tmp_path: Path):  # noqa: ANN201
    """The broker data that Kafka 4.3.1 left with a decided COMMIT and a decided ABORT open."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path / "broker", filter="data")
    broker = LocalKafka(tmp_path / "broker", free_port(), free_port(), die_with_parent=True)
    broker.start(wait_s=120)
    yield broker, json.loads((tmp_path / "broker" / "hanging.json").read_text())
    broker.stop()


def test_decided_transactions_left_open_are_ended_as_decided(hanging_broker) -> None:  # noqa: ANN001
    broker, where = hanging_broker
    topic, committed, aborted = where["topic"], where["commit"], where["abort"]
    for partition in (committed, aborted):
        stable, high = ends(broker.bootstrap, topic, partition)
        assert stable < high, f"the fixture's {topic}-{partition} is not open any more"
    stale = {t.partition for t in asyncio.run(stale_transactions(broker.bootstrap, [topic]))}
    assert {committed, aborted} <= stale

    found = asyncio.run(close_hanging(broker.bootstrap, [topic, "__consumer_offsets"]))
    lines = [str(f) for f in found]
    ends_of = {(f.txn.topic, f.txn.partition): f.end for f in found}
    assert ends_of[topic, committed] == "commit" and ends_of[topic, aborted] == "abort", found

    assert any(f"{topic}-{committed} " in x and "ended with COMMIT" in x for x in lines), lines
    assert any(f"{topic}-{aborted} " in x and "ended with ABORT" in x for x in lines), lines
    for partition in (committed, aborted):
        stable, high = ends(broker.bootstrap, topic, partition)
        assert stable == high
    everything = read(broker.bootstrap, topic, committed, "read_uncommitted")
    assert read(broker.bootstrap, topic, committed, "read_committed") == everything
    assert b"abort" not in read(broker.bootstrap, topic, aborted, "read_committed")
    assert read(broker.bootstrap, topic, aborted, "read_uncommitted").count(b"abort") == 5
    # The offsets each transaction committed for its group: the 51st's, unless aborted.
    assert committed_offset(broker.bootstrap, f"g-{committed}", committed) == 51
    assert committed_offset(broker.bootstrap, f"g-{aborted}", aborted) == 50
    again = asyncio.run(close_hanging(broker.bootstrap, [topic]))
    assert not {f.txn.partition for f in again} & {committed, aborted}, again
    stale = {t.partition for t in asyncio.run(stale_transactions(broker.bootstrap, [topic]))}
    assert not {committed, aborted} & stale


def test_status_shows_an_open_transaction_nobody_writes_to() -> None:
    from infogrowth.commands.status import Scrape, Status, render
    from infogrowth.settings import Settings

    quiet_since = int(time.time() * 1000) - 250_000
    txn = OpenTransaction("demo.scored", 0, 5, 0, 0, 2123, quiet_since)
    status = Status(Settings(app_id="demo"), 1.0, [], {}, Scrape("u"), Scrape("u"), [txn])
    assert "open transaction with no write for 250 s: demo.scored-0 (producer 5, open since " \
           "offset 2123)" in render(status)  # fmt: skip


def test_a_transaction_still_running_is_left_to_its_producer(kafka: str) -> None:
    topic = f"running-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": topic})
    producer.init_transactions()
    producer.begin_transaction()
    for n in range(3):
        producer.produce(topic, value=b"%d" % n, partition=0)
    producer.flush()
    later = int(time.time() * 1000) + 600_000  # long past any timeout: only undecided is left

    assert asyncio.run(close_hanging(kafka, [topic], now_ms=later)) == []

    stable, high = ends(kafka, topic, 0)
    assert stable < high
    producer.commit_transaction()
    assert read(kafka, topic, 0, "read_committed") == [b"0", b"1", b"2"]


def test_a_worker_ends_them_on_its_own(hanging_broker, monkeypatch, caplog) -> None:  # noqa: ANN001
    """The thread every worker runs (agents/hanging.py), on the topics of a pipeline."""
    from agents import hanging
    from agents.metrics import REGISTRY

    def ended(end: str) -> float:
        value = REGISTRY.get_sample_value("infogrowth_transactions_left_open_total", {"end": end})
        return value or 0.0

    before = {"commit": ended("commit"), "abort": ended("abort")}

    broker, where = hanging_broker
    topic = where["topic"]
    monkeypatch.setattr(hanging, "CHECK_S", 0.2)
    caplog.set_level("WARNING", logger="infogrowth.kafka")
    thread = threading.Thread(target=hanging._watch, args=(broker.bootstrap, [topic]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(ends(broker.bootstrap, topic, p)[0] == ends(broker.bootstrap, topic, p)[1]
               for p in (where["commit"], where["abort"])):  # fmt: skip
            break
        time.sleep(0.5)
    else:
        pytest.fail("the hanging transactions are still open after 60 s")
    assert "transaction left open by Kafka" in caplog.text
    assert all(ended(end) > before[end] for end in before)  # the worker's metric


def test_a_restore_waits_for_them_to_end_as_decided(hanging_broker) -> None:  # noqa: ANN001
    """A curator restores its state from its changelog up to where no transaction is open:
    reading only to one Kafka left open would miss state that was committed."""
    from infogrowth.io.hanging import settled_end

    broker, where = hanging_broker
    topic, committed = where["topic"], where["commit"]
    stable, high = ends(broker.bootstrap, topic, committed)
    assert stable < high

    assert settled_end(broker.bootstrap, topic, committed, timeout_s=60) == high + 1  # + marker
