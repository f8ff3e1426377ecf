"""Avro records through a real Apache Kafka broker: confluent-kafka in, aiokafka out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer

from infogrowth.io.avro import AvroSerde

pytestmark = pytest.mark.kafka


def _samples(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"s-{i}",
            "image": f"s3://images/{i}.jpg",
            "caption": f"caption {i}",
            "image_embedding": [float(i), 0.5],
            "extra": {"i": str(i)},
        }
        for i in range(n)
    ]


def _produce(bootstrap: str, topic: str, values: list[bytes], **config: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **config})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode(), on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []


async def _consume(bootstrap: str, topic: str, n: int, **config: Any) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **config
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        while len(values) < n:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout=30)
            values += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
        return values
    finally:
        await consumer.stop()


def test_avro_through_kafka(kafka: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("raw")
    serde = AvroSerde("RawSample")
    samples = _samples(50)
    _produce(kafka, topic, [serde.encode(s) for s in samples])

    values = asyncio.run(_consume(kafka, topic, len(samples), group_id="test-avro"))

    decoded = [serde.decode(v) for v in values]
    assert [d["id"] for d in decoded] == [s["id"] for s in samples]  # one partition: in order
    for sent, got in zip(samples, decoded, strict=True):
        assert {k: got[k] for k in sent} == sent


def test_transactions_work_on_a_single_node(kafka: str, topic_factory: Callable[..., str]) -> None:
    """Faust's exactly_once needs transactions; they hang if internal topics want 3 replicas."""
    topic = topic_factory("txn")
    serde = AvroSerde("RawSample")
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"test-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for sample in _samples(3):
        producer.produce(topic, value=serde.encode(sample))
    producer.commit_transaction(30)

    values = asyncio.run(_consume(kafka, topic, 3, isolation_level="read_committed"))
    assert [serde.decode(v)["id"] for v in values] == ["s-0", "s-1", "s-2"]


def test_auto_created_topic(kafka: str) -> None:
    serde = AvroSerde("DeadLetter")
    record = {"topic": "t", "partition": 0, "offset": 1, "reason": "r", "original": b"\xff"}
    topic = f"auto-{uuid.uuid4().hex[:10]}"
    _produce(kafka, topic, [serde.encode(record)])
    (value,) = asyncio.run(_consume(kafka, topic, 1))
    assert serde.decode(value)["original"] == b"\xff"


def test_an_offset_request_is_asked_again_after_a_transient_error() -> None:
    """After a broker stall librdkafka tears its connections down and remakes them: an
    offset request in between fails with "Broker handle destroyed without termination"
    (CI, 2026-12-07, `infogrowth status` and the tests' outcome counts). It is asked
    again until the deadline (so is "Unknown partition" from a client that does not know the
    partition again yet, the next CI run); an error that will not pass is raised at once."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from infogrowth.io.kafka_io import _watermarks

    class Flaky:
        def __init__(self, errors: list[int]) -> None:
            self.errors, self.calls = errors, 0

        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            self.calls += 1
            if self.errors:
                raise KafkaException(KafkaError(self.errors.pop(0)))
            return (0, 5)

    tp = TopicPartition("t", 0)
    transient = [KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._UNKNOWN_PARTITION]
    flaky = Flaky(list(transient))
    assert _watermarks(flaky, tp, timeout=5.0) == (0, 5)  # type: ignore[arg-type]
    assert flaky.calls == len(transient) + 1
    refused = Flaky([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        _watermarks(refused, tp, timeout=5.0)  # type: ignore[arg-type]
    assert refused.calls == 1


def test_topic_metadata_is_asked_again_while_a_connection_is_remade() -> None:
    """`ensure_topics` (every `ingest`, every worker start) lists the topics first: a
    connection being remade ("Broker transport failure", an `ingest` feed in CI,
    2026-12-07) is asked again until the deadline, an error that will not pass is not."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    from infogrowth.io.kafka_io import _topics

    class Admin:
        def __init__(self, errors: list[int]) -> None:
            self.errors, self.calls = errors, 0

        def list_topics(self, timeout: float) -> SimpleNamespace:
            self.calls += 1
            if self.errors:
                raise KafkaException(KafkaError(self.errors.pop(0)))
            return SimpleNamespace(topics={"t": "meta"})

    admin = Admin([KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN])
    assert _topics(admin, timeout=5.0) == {"t": "meta"}  # type: ignore[arg-type]
    assert admin.calls == 3
    refused = Admin([KafkaError.CLUSTER_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        _topics(refused, timeout=5.0)  # type: ignore[arg-type]
    assert refused.calls == 1


def test_waiting_for_leaders_ends_near_its_deadline() -> None:
    """Each topic listing of `_wait_for_leaders` gets what is left of the wait, not the
    whole wait again: a broker that stops answering near the deadline no longer makes the
    wait run one full timeout past it."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    from infogrowth.io.kafka_io import _wait_for_leaders

    class Admin:
        """Answers "no leader yet" for a second, then hangs for each listing's timeout."""

        def __init__(self) -> None:
            self.started = time.monotonic()

        def list_topics(self, timeout: float) -> SimpleNamespace:
            if time.monotonic() - self.started < 1.0:
                return SimpleNamespace(topics={})
            time.sleep(timeout)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    started = time.monotonic()
    with pytest.raises((KafkaException, RuntimeError)):
        _wait_for_leaders(Admin(), ["t"], timeout=2.0)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.6  # the whole timeout again: past 3 s


def test_the_topic_check_of_replay_asks_again_while_a_connection_is_remade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`existing_topics` (replay's check of its output topics) lists through `_topics`, so
    a connection being remade is asked again instead of failing the replay."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    from infogrowth.io import kafka_io

    errors = [KafkaError._TRANSPORT]

    class Admin:
        def __init__(self, conf: dict) -> None:
            pass

        def list_topics(self, timeout: float) -> SimpleNamespace:
            if errors:
                raise KafkaException(KafkaError(errors.pop()))
            return SimpleNamespace(topics={"accepted": "meta", "rejected": "meta"})

    monkeypatch.setattr(kafka_io, "AdminClient", Admin)
    names = ["rejected", "recaption", "accepted"]
    assert kafka_io.existing_topics("127.0.0.1:1", names, timeout=5.0) == ["rejected", "accepted"]
    assert not errors


def test_a_seek_back_rewinds_a_partition_nothing_was_committed_on(kafka: str) -> None:
    """Faust drops records it fetched while a rebalance stopped its flow and seeks back to
    the committed offsets; aiokafka seeks only partitions with an offset committed above 0,
    so the first records of a partition were skipped (a recaption request never captioned).
    ``seek_to_committed_or_start`` (agents/atomic.py) rewinds those to their start."""
    from aiokafka import TopicPartition

    from agents.atomic import seek_to_committed_or_start

    topic = f"seek-back-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka})
    for i in range(3):
        producer.produce(topic, value=f"r{i}".encode())
    producer.flush(30)

    async def read_then_seek_back() -> tuple[int, int]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka,
            group_id=f"g-{topic}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            read, deadline = 0, time.monotonic() + 60
            while read < 3 and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=1000)
                read += sum(len(records) for records in batches.values())
            assert read == 3
            tp = TopicPartition(topic, 0)
            await consumer.seek_to_committed()
            left_by_aiokafka = await consumer.position(tp)
            await seek_to_committed_or_start(consumer)
            return left_by_aiokafka, await consumer.position(tp)
        finally:
            await consumer.stop()

    left_by_aiokafka, rewound = asyncio.run(read_then_seek_back())
    assert left_by_aiokafka == 3  # the hole: nothing committed, the position not moved
    assert rewound == 0
