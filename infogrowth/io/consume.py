"""Following the curated dataset live: the API for downstream consumers (trainers, indexers).

```python
from infogrowth.io.consume import CuratedStream
from infogrowth.settings import Settings

with CuratedStream(Settings.from_env(), fetch_images=True) as stream:
    for sample in stream:  # CuratedSample: .id, .record (AcceptedSample fields), .image bytes
        train_on(sample)
```

What the stream guarantees:

* only committed records (``isolation.level=read_committed``): a sample whose transaction
  the curator aborted is never seen;
* each id at most once per stream. `accepted` is keyed by id, so every record of an id lies
  in one partition and a stream that owns a subset of the partitions deduplicates alone;
* budget evictions are honoured: ``over_budget`` records in `rejected` are read up to their
  current end before anything is handed out and again at least every
  ``eviction_refresh_s``; an accepted sample already known to be evicted is skipped. A
  sample evicted *after* it was handed out cannot be taken back: its id is added to
  ``late_evictions`` (and passed to ``on_late_eviction``) for the caller to act on;
* images are read from S3 with the endpoint and credentials of the settings
  (``fetch_images=True``); a sample whose image cannot be read carries ``image_error``.

``partitions`` picks the partitions this stream owns (default: all), which is how
``infogrowth.io.dataset.CuratedDataset`` gives each DataLoader worker a disjoint share. With a
``group_id`` the stream starts from that group's committed offsets and commits what it has
handed out (at least once across restarts); without one it reads from the beginning (or
the end) and commits nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from infogrowth.commands.export import ImageReader
from infogrowth.io.avro import AvroSerde, MalformedMessage
from infogrowth.io.kafka_io import (
    ReadTimeout,
    _consumer,
    _drain,
    _ends,
    _partitions,
    _reached,
    check_broker,
)
from infogrowth.io.vectors import as_lists
from infogrowth.records import BadInput
from infogrowth.settings import Settings

log = logging.getLogger("infogrowth.io.consume")
EMBEDDINGS = ("image_embedding", "text_embedding")
FOREVER = float("inf")


@dataclass
class CuratedSample:
    record: dict[str, Any]  # the AcceptedSample fields (schemas/AcceptedSample.avsc)
    partition: int
    offset: int
    image: bytes | None = None  # with fetch_images=True
    image_error: str | None = None  # why the image could not be read

    @property
    def id(self) -> str:
        return self.record["id"]

    def as_json(self, embeddings: bool = False) -> dict[str, Any]:
        """The record as JSON-ready values; embeddings replaced by their size unless asked."""
        out = dict(self.record)
        for name in EMBEDDINGS:
            vector = out.get(name)
            if not embeddings and vector is not None:
                out[name] = {"dim": len(vector)}
        out["partition"], out["offset"] = self.partition, self.offset
        return out


def topic_partitions(settings: Settings, topic: str | None = None) -> list[int]:
    """The partition numbers of ``topic`` (default: the accepted topic)."""
    consumer = _consumer(settings.kafka_bootstrap, None, True, "read_committed")
    try:
        return _partitions(consumer, settings.kafka_bootstrap, topic or settings.topic_accepted, 10)
    finally:
        consumer.close()


class Evictions:
    """Ids the budget policy pushed out (``over_budget`` in `rejected`), read incrementally."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.ids: set[str] = set()
        self.serde = AvroSerde("RejectedSample")
        self.consumer: Consumer | None = None
        self.last_refresh = -FOREVER
        self.read_to: dict[int, int] = {}

    def refresh(self) -> set[str]:
        """Reads `rejected` up to its current last stable offset; returns the new evictions."""
        self.last_refresh = time.monotonic()
        if self.consumer is None and not self._open():
            return set()
        assert self.consumer is not None
        partitions = sorted(tp.partition for tp in self.consumer.assignment())
        ends = _ends(self.consumer, self.topic, partitions, 10.0)
        if ends == self.read_to:
            return set()
        new = set()
        for msg in self._read_to(ends):
            try:
                record = self.serde.decode(msg.value() or b"")
            except MalformedMessage:
                continue
            if record.get("reason") == "over_budget" and record["id"] not in self.ids:
                new.add(record["id"])
        self.ids |= new
        self.read_to = ends
        return new

    def _read_to(self, ends: dict[int, int], timeout_s: float = 30.0) -> Iterator[Message]:
        """Messages up to ``ends``, judged by position: an EOF event left over from the last
        refresh must not end this one early."""
        assert self.consumer is not None
        deadline = time.monotonic() + timeout_s
        while len(_reached(self.consumer, self.topic, ends)) < len(ends):
            if time.monotonic() > deadline:
                raise ReadTimeout(f"reading {self.topic}: end not reached in {timeout_s:.0f}s")
            msg = self.consumer.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                yield msg
            elif err.code() != KafkaError._PARTITION_EOF and not err.retriable():
                raise RuntimeError(f"reading {self.topic}: {err.str()}")

    def _open(self) -> bool:
        consumer = _consumer(self.settings.kafka_bootstrap, None, True, "read_committed")
        try:
            partitions = _partitions(consumer, self.settings.kafka_bootstrap, self.topic, 10.0)
        except ValueError:  # no rejected topic yet: nothing was evicted
            consumer.close()
            return False
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self.consumer = consumer
        return True

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


@dataclass
class StreamStats:
    read: int = 0  # accepted records read
    yielded: int = 0
    duplicates: int = 0
    evicted: int = 0  # skipped: evicted before they were handed out
    late_evictions: list[str] = field(default_factory=list)  # evicted after being handed out


class CuratedStream:
    """Iterates the committed accepted samples of some (default all) partitions.

    ``follow=False`` stops at the end offsets taken when iteration starts; ``follow=True``
    waits for new samples, until ``idle_timeout_s`` passes without one (default: forever).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        rejected_topic: str | None = None,
        partitions: list[int] | None = None,
        group_id: str | None = None,
        from_beginning: bool = True,
        follow: bool = True,
        idle_timeout_s: float | None = None,
        fetch_images: bool = False,
        honour_evictions: bool = True,
        eviction_refresh_s: float = 1.0,
        on_late_eviction: Callable[[str], None] | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.topic_accepted
        self.partitions = partitions
        self.group_id = group_id
        self.from_beginning = from_beginning
        self.follow = follow
        self.idle_timeout_s = FOREVER if idle_timeout_s is None else idle_timeout_s
        self.eviction_refresh_s = eviction_refresh_s
        self.on_late_eviction = on_late_eviction
        self.poll_s = poll_s
        rejected = rejected_topic or (settings.topic_rejected if topic is None else None)
        self.evictions = Evictions(settings, rejected) if honour_evictions and rejected else None
        self.images = ImageReader(settings) if fetch_images else None
        self.serde = AvroSerde("AcceptedSample")
        self.stats = StreamStats()
        self.handed_out: set[str] = set()
        self.consumer: Consumer | None = None

    def __enter__(self) -> CuratedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commits what was handed out (with a group) and closes the consumers."""
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.evictions is not None:
            self.evictions.close()

    @property
    def late_evictions(self) -> list[str]:
        return self.stats.late_evictions

    def __iter__(self) -> Iterator[CuratedSample]:
        check_broker(self.settings.kafka_bootstrap)
        consumer = _consumer(
            self.settings.kafka_bootstrap, self.group_id, self.from_beginning, "read_committed"
        )
        self.consumer = consumer
        try:
            owned = self._owned(consumer)
            if not owned:
                return
            stop = _ends(consumer, self.topic, owned, 10.0)
            consumer.assign([TopicPartition(self.topic, p, self._start()) for p in owned])
            self._refresh_evictions()  # before the first sample: evictions so far are known
            messages = _drain(
                consumer, self.topic, stop, not self.follow, self.idle_timeout_s, self.poll_s
            )
            for msg in messages:
                sample = self._sample(msg)
                if sample is not None:
                    self.stats.yielded += 1
                    self.handed_out.add(sample.id)
                    yield sample
        finally:
            self.close()

    def _owned(self, consumer: Consumer) -> list[int]:
        existing = _partitions(consumer, self.settings.kafka_bootstrap, self.topic, 10.0)
        if self.partitions is None:
            return existing
        unknown = sorted(set(self.partitions) - set(existing))
        if unknown:
            raise ValueError(f"{self.topic} has no partitions {unknown} (it has {existing})")
        return sorted(self.partitions)

    def _start(self) -> int:
        if self.group_id is not None:
            return OFFSET_STORED  # the group's offset; auto.offset.reset when it has none
        return OFFSET_BEGINNING if self.from_beginning else OFFSET_END

    def _refresh_evictions(self) -> None:
        if self.evictions is None:
            return
        for sample_id in sorted(self.evictions.refresh()):
            if sample_id in self.handed_out:
                self.stats.late_evictions.append(sample_id)
                if self.on_late_eviction is not None:
                    self.on_late_eviction(sample_id)

    def _sample(self, msg: Any) -> CuratedSample | None:
        """The message as a sample to hand out, or None (undecodable, seen, evicted)."""
        self.stats.read += 1
        try:
            record = as_lists(self.serde.decode(msg.value() or b""))
        except MalformedMessage as exc:
            log.warning("%s[%s]@%s: %s", self.topic, msg.partition(), msg.offset(), exc)
            return None
        if record["id"] in self.handed_out:
            self.stats.duplicates += 1
            return None
        ev = self.evictions
        if ev is not None and time.monotonic() - ev.last_refresh >= self.eviction_refresh_s:
            self._refresh_evictions()
        if ev is not None and record["id"] in ev.ids:
            self.stats.evicted += 1
            return None
        sample = CuratedSample(record, msg.partition(), msg.offset())
        if self.images is not None:
            try:
                sample.image = self.images.read(record.get("image"))
            except BadInput as exc:
                sample.image_error = str(exc)
        return sample
