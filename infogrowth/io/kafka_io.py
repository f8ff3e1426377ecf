"""Small confluent-kafka helpers for the batch commands (ingest, export) and tests.

The streaming agents use Faust; these are for reading a topic from start to end once,
producing a file's records reliably, and failing with one line when the broker is away.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from infogrowth.io.avro import AvroSerde, SchemaError

log = logging.getLogger("infogrowth.kafka")
T = TypeVar("T")


def _silent_logger() -> logging.Logger:
    """librdkafka prints every failed connection attempt; route those logs nowhere."""
    quiet = logging.getLogger("infogrowth.kafka.quiet")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    quiet.setLevel(logging.CRITICAL + 1)
    return quiet


def _error_text(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    text = err.str() if isinstance(err, KafkaError) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


# --- broker and topics -------------------------------------------------------------------
def check_broker(bootstrap: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError (one line) unless a broker answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _silent_logger()})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        reason = _error_text(exc)
        raise ConnectionError(f"Kafka broker at {bootstrap} is unreachable ({reason})") from None
    if not metadata.brokers:
        raise ConnectionError(f"Kafka broker at {bootstrap} is unreachable (no brokers listed)")


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns those created. Idempotent.

    Waits until every topic is visible with a leader on each partition, so a producer or
    consumer started right after does not race the creation.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _silent_logger()})
    wanted = list(dict.fromkeys(names))
    existing = set(_topics(admin, timeout))
    missing = [n for n in wanted if n not in existing]
    if missing:
        new = [NewTopic(n, partitions, 1, config=dict(config or {})) for n in missing]
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    raise RuntimeError(f"cannot create topic {name}: {_error_text(exc)}") from None
    _wait_for_leaders(admin, wanted, timeout)
    return missing


def _topics(admin: AdminClient, timeout: float) -> dict[str, Any]:
    """The cluster's topic metadata, asked again while a connection is being remade
    (``_TRANSIENT``: an `ingest` feed in CI, 2026-12-07, stopped on one) until ``timeout``."""
    return _asked_again(lambda: admin.list_topics(timeout=timeout).topics, _TRANSIENT, timeout)


_LAST_LISTING_S = 1.0  # a listing at the deadline still gets this long to answer


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Returns once every one of ``names`` has a leader for each partition; each listing
    gets only what is left of ``timeout``, so the wait ends near its deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        topics = _topics(admin, max(left, _LAST_LISTING_S))
        if all(_ready(topics.get(n)) for n in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} not ready after {timeout:.0f}s")
        time.sleep(0.2)


def _ready(meta: Any) -> bool:
    return (
        meta is not None
        and meta.error is None
        and bool(meta.partitions)
        and all(p.leader >= 0 for p in meta.partitions.values())
    )


# Topics that are a source of truth for replay are kept forever (Kafka deletes after 7 days
# by default); replay re-reads them from offset 0.
UNLIMITED_RETENTION = {"retention.ms": "-1", "retention.bytes": "-1"}


def topic_id(bootstrap: str, topic: str, timeout: float = 30.0) -> str:
    """The topic's id (a UUID the broker gives each topic it creates): a topic deleted and
    created again under the same name gets another one."""
    from confluent_kafka import TopicCollection

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _silent_logger()})
    futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
    return str(futures[topic].result(timeout=timeout).topic_id)


def topic_configs(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> dict[str, dict]:
    """Topic -> {config name: value} as the broker reports it (defaults included)."""
    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _silent_logger()})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    return {
        res.name: {k: e.value for k, e in fut.result(timeout=timeout).items()}
        for res, fut in futures.items()
    }


def set_topic_config(
    bootstrap: str, names: Iterable[str], config: Mapping[str, str], timeout: float = 30.0
) -> None:
    """Sets ``config`` on existing topics (other settings of the topics are kept)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _silent_logger()})
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
    ]
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, n, incremental_configs=entries) for n in names
    ]
    for res, future in admin.incremental_alter_configs(resources).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise RuntimeError(f"cannot configure topic {res.name}: {_error_text(exc)}") from None


# --- producing ---------------------------------------------------------------------------
# Largest record the producer sends (librdkafka's message.max.bytes, also its default; below
# the broker's own default of 1,048,588). librdkafka counts key + value + RECORD_OVERHEAD
# (RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD) against it and refuses a larger record at produce().
MESSAGE_MAX_BYTES = 1_000_000
RECORD_OVERHEAD = 36


class RecordTooLarge(ValueError):
    """An encoded record over MESSAGE_MAX_BYTES: it would be refused, so it is never sent."""


def _check_size(key: bytes | None, value: bytes) -> None:
    size = len(key or b"") + len(value) + RECORD_OVERHEAD
    if size > MESSAGE_MAX_BYTES:
        raise RecordTooLarge(
            f"record is {size:,} bytes, over the {MESSAGE_MAX_BYTES:,}-byte limit "
            "(message.max.bytes)"
        )


@cache
def _compression() -> str:
    """zstd when this librdkafka build has it, else lz4 (always built in)."""
    try:
        Producer({"compression.type": "zstd", "logger": _silent_logger()})
    except KafkaException:
        return "lz4"
    return "zstd"


def make_producer(bootstrap: str, **overrides: Any) -> Producer:
    """An idempotent, acks=all producer. Overrides use librdkafka names:
    ``make_producer(b, **{"transactional.id": "x"})``."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": _compression(),
        "message.max.bytes": MESSAGE_MAX_BYTES,
        "logger": log,
    }
    config.update(overrides)
    return Producer(config)


def produce_records(
    producer: Producer,
    topic: str,
    serde: AvroSerde,
    records: Iterable[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], Any] | None = lambda r: r["id"],
    on_invalid: Callable[[Mapping[str, Any], ValueError], None] | None = None,
    flush_timeout: float = 60.0,
) -> int:
    """Encode and produce every record, then flush; returns the number produced.

    A record that violates the schema (SchemaError) or is too large to send (RecordTooLarge)
    raises, or is passed to ``on_invalid`` and skipped. Delivery failures are collected and
    raised together as one RuntimeError after the flush, so one bad partition does not hide
    how many records were lost.
    """
    failures: Counter[str] = Counter()

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures[err.str()] += 1

    produced = 0
    for record in records:
        try:
            value = serde.encode(record)
            raw_key = None if key is None else key(record)
            encoded_key = raw_key.encode() if isinstance(raw_key, str) else raw_key
            _check_size(encoded_key, value)
        except (SchemaError, RecordTooLarge) as exc:
            if on_invalid is None:
                raise
            on_invalid(record, exc)
            continue
        _produce_one(producer, topic, value, encoded_key, on_delivery)
        produced += 1
    left = producer.flush(flush_timeout)
    if left:
        failures[f"not delivered within {flush_timeout:.0f}s"] += left
    if failures:
        lost = sum(failures.values())
        detail = "; ".join(f"{n}× {text}" for text, n in failures.most_common(3))
        raise RuntimeError(f"{lost} of {produced} records to {topic} failed: {detail}")
    return produced


def _produce_one(
    producer: Producer, topic: str, value: bytes, key: bytes | None, on_delivery: Callable
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            break
        except BufferError:  # local queue full: serve delivery reports, then retry
            producer.poll(0.5)
    producer.poll(0)


# --- consuming ---------------------------------------------------------------------------
class ReadTimeout(RuntimeError):
    """The end of the topic was not reached within the time allowed."""


def _consumer(
    bootstrap: str, group_id: str | None, from_beginning: bool, isolation: str
) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            # librdkafka needs a group id even for assign(); a private one commits nothing.
            "group.id": group_id or f"infogrowth-read-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": group_id is not None,
            "enable.auto.offset.store": False,  # store only what was handed to the caller
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "logger": log,
        }
    )


def _partitions(consumer: Consumer, bootstrap: str, topic: str, timeout: float) -> list[int]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise ConnectionError(
            f"Kafka broker at {bootstrap} is unreachable ({_error_text(exc)})"
        ) from None
    if meta is None or meta.error is not None or not meta.partitions:
        raise ValueError(f"topic {topic!r} does not exist on {bootstrap}")
    return sorted(meta.partitions)


# A partition just created can be in the metadata with its leader before that broker serves
# it, and a client whose broker came back may not know the partition again yet ("Local:
# Unknown partition", CI 2026-12-07): offset requests fail with these for a moment.
_ELECTING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._UNKNOWN_PARTITION,
    }
)
# The connection to the broker went away and is being made again: a broker that stalled and
# came back had its connections torn down ("Broker handle destroyed without termination",
# an offset request in CI, 2026-12-07). Reads and offset requests try again.
_TRANSIENT = frozenset(
    {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._DESTROY_BROKER}
)


def _asked_again(ask: Callable[[], T], codes: frozenset[int], timeout: float) -> T:
    """``ask()``, asked again every 0.2 s while it fails with one of ``codes``, until
    ``timeout`` seconds have passed; any other error at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask()
        except KafkaException as exc:
            if exc.args[0].code() not in codes or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int] | None:
    return _asked_again(
        lambda: consumer.get_watermark_offsets(tp, timeout=timeout), _ELECTING | _TRANSIENT, timeout
    )


def _ends(consumer: Consumer, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
    # With isolation.level=read_committed the "high" offset is the last stable offset.
    ends = {}
    for p in partitions:
        marks = _watermarks(consumer, TopicPartition(topic, p), timeout)
        if marks is None:
            raise ConnectionError(f"no watermark offsets for {topic}[{p}] within {timeout}s")
        ends[p] = marks[1]
    return ends


def end_offsets(
    bootstrap: str, topic: str, isolation: str = "read_committed", timeout: float = 10.0
) -> dict[int, int]:
    """Partition -> end offset (last stable offset under read_committed)."""
    consumer = _consumer(bootstrap, None, True, isolation)
    try:
        return _ends(consumer, topic, _partitions(consumer, bootstrap, topic, timeout), timeout)
    finally:
        consumer.close()


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    group_id: str | None = None,
    from_beginning: bool = True,
    until_end: bool = True,
    timeout_s: float = 30.0,
    isolation: str = "read_committed",
    ends: Mapping[int, int] | None = None,
    poll_s: float = 0.25,
    partitions: Iterable[int] | None = None,
    starts: Mapping[int, int] | None = None,
) -> Iterator[Message]:
    """Every message of every partition, up to the end offsets taken at call time.

    Without ``group_id`` all partitions are assigned from offset 0 (nothing is committed);
    with one, the group subscribes and commits what was yielded. ``ends`` fixes the stop
    offsets (e.g. from ``end_offsets``). Transaction markers and aborted records take offsets
    but are never delivered, so a partition counts as finished on its EOF event or once its
    position reaches the end, never by counting messages. With ``until_end=False`` reading
    goes on until nothing arrives for ``timeout_s``; with it, such a stall raises ReadTimeout.
    ``partitions``: only these (without ``group_id``); ``starts``: the offsets to read
    some of them from (without ``group_id``).
    """
    consumer = _consumer(bootstrap, group_id, from_beginning, isolation)
    try:
        found = _partitions(consumer, bootstrap, topic, timeout=min(timeout_s, 10.0))
        wanted = set(found if partitions is None else partitions)
        partitions = [p for p in found if p in wanted]
        stop = dict(ends) if ends is not None else _ends(consumer, topic, partitions, timeout_s)
        if group_id is None:
            start = OFFSET_BEGINNING if from_beginning else OFFSET_END
            at = starts or {}
            consumer.assign([TopicPartition(topic, p, at.get(p, start)) for p in partitions])
        else:
            consumer.subscribe([topic])
        yield from _drain(consumer, topic, stop, until_end, timeout_s, poll_s, starts)
    finally:  # with a group, close() commits the offsets stored for yielded messages
        consumer.close()


def _drain(
    consumer: Consumer,
    topic: str,
    stop: dict[int, int],
    until_end: bool,
    timeout_s: float,
    poll_s: float,
    starts: Mapping[int, int] | None = None,
) -> Iterator[Message]:
    """Messages until every partition reaches its ``stop`` offset; ``starts``: where
    reading began (default 0), so a partition with nothing in between is done at once."""
    starts = starts or {}
    done = {p for p, end in stop.items() if end <= starts.get(p, 0)} if until_end else set()
    last_progress = time.monotonic()
    while not until_end or len(done) < len(stop):
        msg = consumer.poll(poll_s)
        if msg is None:
            if until_end:
                done |= _reached(consumer, topic, stop)
            if time.monotonic() - last_progress > timeout_s:
                if not until_end:
                    return
                raise ReadTimeout(_stall_message(consumer, topic, stop, done, timeout_s))
            continue
        last_progress = time.monotonic()
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                done.add(msg.partition())
                continue
            if err.retriable() or err.code() in _TRANSIENT:
                continue
            raise RuntimeError(f"reading {topic}: {err.str()}")
        if until_end and msg.offset() >= stop.get(msg.partition(), 0):
            done.add(msg.partition())  # produced after the call: not ours
            continue
        yield msg
        consumer.store_offsets(message=msg)
        if until_end and msg.offset() + 1 >= stop[msg.partition()]:
            done.add(msg.partition())


def _reached(consumer: Consumer, topic: str, stop: dict[int, int]) -> set[int]:
    """Partitions whose fetch position is already at or past their end offset."""
    assigned = {tp.partition for tp in consumer.assignment()}
    tps = [TopicPartition(topic, p) for p in stop if p in assigned]
    return {tp.partition for tp in consumer.position(tps) if tp.offset >= stop[tp.partition]}


def _stall_message(
    consumer: Consumer, topic: str, stop: dict[int, int], done: set[int], timeout_s: float
) -> str:
    waiting = sorted(set(stop) - done)
    return (
        f"reading {topic}: end not reached after {timeout_s:.0f}s without progress "
        f"(partitions {waiting} short of offsets {[stop[p] for p in waiting]})"
    )


# --- consumer lag ------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # the group's committed offset; None before its first commit
    end: int  # last stable offset
    lag: int  # committed records the group has not processed yet


def group_lag(
    bootstrap: str, group_id: str, topics: Iterable[str], timeout: float = 10.0
) -> list[PartitionLag]:
    """Per partition of the existing ``topics``: ``group_id``'s committed offset, the end
    offset and the records between them. The consumer only asks (it never joins the group).

    Transaction markers take offsets too, so a drained partition of a transactional topic
    can end a marker or two past the committed offset: a partition whose remaining offsets
    hold no committed record is reported with lag 0.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,  # it must never move the group's offsets
            "isolation.level": "read_committed",
            "logger": _silent_logger(),
        }
    )
    try:
        existing = consumer.list_topics(timeout=timeout).topics
        tps = [
            TopicPartition(t, p)
            for t in dict.fromkeys(topics)
            if t in existing and existing[t].error is None
            for p in sorted(existing[t].partitions)
        ]
        committed = consumer.committed(tps, timeout=timeout) if tps else []
        return [_lag(consumer, tp, timeout) for tp in committed]
    finally:
        consumer.close()


def _lag(consumer: Consumer, tp: TopicPartition, timeout: float) -> PartitionLag:
    low, end = consumer.get_watermark_offsets(tp, timeout=timeout)
    committed = tp.offset if tp.offset >= 0 else None
    start = low if committed is None else committed
    first = (
        _first_record_offset(consumer, tp.topic, tp.partition, start, end) if end > start else end
    )
    return PartitionLag(tp.topic, tp.partition, committed, end, max(end - first, 0))


def _first_record_offset(
    consumer: Consumer, topic: str, partition: int, start: int, end: int, timeout: float = 5.0
) -> int:
    """Offset of the first committed record in [start, end); ``end`` if there is none."""
    consumer.assign([TopicPartition(topic, partition, start)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                return msg.offset()
            position = consumer.position([TopicPartition(topic, partition)])[0].offset
            if position >= end:
                return end
        return start  # unknown within the time allowed: count everything
    finally:
        consumer.unassign()


def existing_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> list[str]:
    """Those of ``names`` that exist on the broker, in the order given."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _silent_logger()})
    present = set(_topics(admin, timeout))  # asked again while a connection is remade
    return [n for n in names if n in present]
