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

from infogrowth.avro import AvroSerde, MalformedMessage, decode_any
from infogrowth.curate import Curator, Scored, apply_evictions
from infogrowth.kafka_io import (
    check_broker,
    end_offsets,
    ensure_topics,
    existing_topics,
    make_producer,
    read_topic,
)
from infogrowth.messages import outcome_record, sample_from_raw
from infogrowth.offline import Summary, make_curator
from infogrowth.records import Outcome, Sample
from infogrowth.runs import record_run, run_ref
from infogrowth.settings import Settings

Curated = tuple[Outcome, Sample, Scored | None]


@dataclass
class ReplayResult:
    summary: Summary
    accepted_topic: str
    rejected_topic: str
    run: str = ""  # the run reference its outcomes carry
    malformed: int = 0
    duplicates: list[str] = field(default_factory=list)
    already_sent: int = 0  # resume: outcomes the topics held before


def output_topics(settings: Settings, version: str) -> tuple[str, str]:
    return f"{settings.topic_accepted}-{version}", f"{settings.topic_rejected}-{version}"


def _outcomes_in(settings: Settings, topics: list[str]) -> Iterator[dict]:
    for topic in topics:
        for msg in read_topic(settings.kafka_bootstrap, topic, timeout_s=30):
            try:
                yield decode_any(msg.value() or b"")[1]
            except MalformedMessage:
                continue


def version_run(settings: Settings, version: str) -> str | None:
    """The run reference the outcomes of an earlier replay ``version`` carry, if any."""
    topics = existing_topics(settings.kafka_bootstrap, output_topics(settings, version))
    return next((r["run"] for r in _outcomes_in(settings, topics) if r.get("run")), None)


def refuse_existing(settings: Settings, version: str, resume: bool) -> list[str]:
    """The version's topics that exist; ValueError if there are any and not ``resume``."""
    topics = existing_topics(settings.kafka_bootstrap, output_topics(settings, version))
    if topics and not resume:
        raise ValueError(
            f"version {version!r} exists already ({', '.join(topics)}): choose another "
            "--version, or pass --resume to finish that replay"
        )
    return topics


def _check_resumed_run(settings: Settings, version: str) -> None:
    earlier = version_run(settings, version)
    if earlier and earlier != run_ref(settings):
        raise ValueError(
            f"--resume: {version!r} was built by run {earlier}, these settings are run "
            f"{run_ref(settings)}: resume it with its own settings (drop the changed flags)"
        )


def _raw_samples(settings: Settings, group_id: str | None, stats: ReplayResult) -> Iterator[Sample]:
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


def replay(
    settings: Settings, version: str, progress: bool = True, resume: bool = False
) -> ReplayResult:
    """Curate `raw-samples` again into `<accepted>-<version>` / `<rejected>-<version>`.

    ValueError if the version's topics exist, unless ``resume``: then only the outcomes they
    lack are sent, and the settings must be those the version was built with.
    """
    check_broker(settings.kafka_bootstrap)
    accepted, rejected = output_topics(settings, version)
    result = ReplayResult(summary=Summary.of([]), accepted_topic=accepted, rejected_topic=rejected)
    existing = refuse_existing(settings, version, resume)
    if existing:
        _check_resumed_run(settings, version)
    sent = {r["id"] for r in _outcomes_in(settings, existing)}
    ensure_topics(settings.kafka_bootstrap, [accepted, rejected])
    curator = make_curator(settings)
    result.run = record_run(
        settings, "replay", version=version, encoder=curator.encoder, if_absent=True
    )
    total = sum(end_offsets(settings.kafka_bootstrap, settings.topic_raw).values())
    pairs: list[Curated] = []
    batch: list[Sample] = []
    bar = tqdm(total=total, unit="sample", desc=f"replay {version}", disable=not progress)
    # A resumed replay reads from offset 0 again, past the offsets its group committed.
    group = None if resume else f"{settings.app_id}-replay-{version}"
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
    result.already_sent = sum(o.id in sent for o, _, _ in pairs)
    _produce(settings, result, [p for p in pairs if p[0].id not in sent])
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
        record = {**outcome_record(outcome, sample, item), "run": result.run}
        value = serdes[outcome.decision].encode(record)
        producer.produce(topics[outcome.decision], key=outcome.id.encode(), value=value)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("replay: some outcomes were not delivered within 60 s")
