"""Rebuild a curated dataset from `raw-samples`, from offset 0, with the core library.

The streaming curator admits samples in the order of `raw-samples` (the ordered gate holds
recaptioned samples in their place), so replaying the topic through the same stages with
the same settings yields the same accepted records, byte for byte; with other δ/k/policy
it yields the dataset those settings would have built.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from infogrowth.avro import AvroSerde, MalformedMessage
from infogrowth.curate import Curator, Scored, apply_evictions
from infogrowth.kafka_io import check_broker, end_offsets, ensure_topics, make_producer, read_topic
from infogrowth.messages import outcome_record, sample_from_raw
from infogrowth.offline import Summary, make_curator
from infogrowth.records import Outcome, Sample
from infogrowth.settings import Settings

Curated = tuple[Outcome, Sample, Scored | None]


@dataclass
class ReplayResult:
    summary: Summary
    accepted_topic: str
    rejected_topic: str
    malformed: int = 0
    duplicates: list[str] = field(default_factory=list)


def _raw_samples(settings: Settings, group_id: str, stats: ReplayResult) -> Iterator[Sample]:
    serde = AvroSerde("RawSample")
    seen: set[str] = set()
    for msg in read_topic(settings.kafka_bootstrap, settings.topic_raw, group_id=group_id):
        try:
            sample = sample_from_raw(serde.decode(msg.value()))
        except MalformedMessage:
            stats.malformed += 1  # the streaming run sent these to dead-letter
            continue
        if not sample.id or sample.id in seen:
            stats.duplicates.append(sample.id)  # the streaming curator skips redeliveries too
            continue
        seen.add(sample.id)
        yield sample


def replay(settings: Settings, version: str, progress: bool = True) -> ReplayResult:
    """Curate `raw-samples` again into `<accepted>-<version>` / `<rejected>-<version>`."""
    check_broker(settings.kafka_bootstrap)
    result = ReplayResult(
        summary=Summary.of([]),
        accepted_topic=f"{settings.topic_accepted}-{version}",
        rejected_topic=f"{settings.topic_rejected}-{version}",
    )
    ensure_topics(settings.kafka_bootstrap, [result.accepted_topic, result.rejected_topic])
    curator = make_curator(settings)
    total = sum(end_offsets(settings.kafka_bootstrap, settings.topic_raw).values())
    pairs: list[Curated] = []
    batch: list[Sample] = []
    bar = tqdm(total=total, unit="sample", desc=f"replay {version}", disable=not progress)
    group = f"{settings.app_id}-replay-{version}"
    for sample in _raw_samples(settings, group, result):
        batch.append(sample)
        if len(batch) >= settings.batch_size:
            pairs += _curate(curator, batch)
            bar.update(len(batch))
            batch = []
    pairs += _curate(curator, batch)
    bar.update(len(batch))
    bar.close()
    apply_evictions([o for o, _, _ in pairs])
    _produce(settings, result, pairs)
    result.summary = Summary.of([o for o, _, _ in pairs], curator.no_recaption_reason())
    return result


def _curate(curator: Curator, batch: list[Sample]) -> list[Curated]:
    if not batch:
        return []
    by_id = {s.id: s for s in batch}
    return [(o, by_id[o.id], item) for o, item in curator.curate_items(batch)]


def _produce(settings: Settings, result: ReplayResult, pairs: list[Curated]) -> None:
    producer = make_producer(settings.kafka_bootstrap)
    serdes = {"accepted": AvroSerde("AcceptedSample"), "rejected": AvroSerde("RejectedSample")}
    topics = {"accepted": result.accepted_topic, "rejected": result.rejected_topic}
    for outcome, sample, item in pairs:
        record = outcome_record(outcome, sample, item)
        value = serdes[outcome.decision].encode(record)
        producer.produce(topics[outcome.decision], key=outcome.id.encode(), value=value)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("replay: some outcomes were not delivered within 60 s")
