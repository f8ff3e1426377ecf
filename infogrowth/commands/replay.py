"""Rebuild a curated dataset from the durable log, from offset 0, with the core library.

By default replay re-curates `scored`, the log of embeddings in the one order the streaming
curator admitted them (its single partition): the same gate (a misaligned sample holds its
place until its recaptioned record, also in `scored`, resolves it), the same gain index and
policy, no model run. Sharded (``centroids``), `scored` has one partition per shard and each
is re-curated in its own order by its own shard, as the streaming shards do. With the same
settings it rebuilds the accepted records byte for byte, whatever encoder made the
embeddings; with other δ/k/policy it yields the dataset those settings would have built.
Rejections made before `scored` (filters, bad input) are not decided again: those samples
never reached `scored`.

``source="raw"`` re-encodes `raw-samples` with the current encoder (another model, other
filters) and recaptions inline, as `infogrowth curate` does. Its order is the topic's
partitions one after another, each in offset order: deterministic, and the streaming order
when `raw-samples` has one partition.

A replay records its settings in the `runs` topic (its outcomes reference that run), refuses
a version whose topics exist unless resumed, and a resumed one sends only what is missing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from infogrowth.commands.offline import Summary, make_curator, make_index, make_reader, sharded
from infogrowth.core.curate import Curator, Scored, apply_evictions, still_misaligned
from infogrowth.core.order import OrderedGate
from infogrowth.core.sample import make_policy
from infogrowth.core.shards import ShardedCurator
from infogrowth.io.avro import AvroSerde, MalformedMessage, decode_any
from infogrowth.io.kafka_io import (
    check_broker,
    end_offsets,
    ensure_topics,
    existing_topics,
    make_producer,
    read_topic,
)
from infogrowth.io.messages import outcome_record, sample_from_raw, scored_from_record
from infogrowth.io.runs import record_run, run_ref
from infogrowth.records import Outcome, Sample
from infogrowth.settings import Settings

Curated = tuple[Outcome, Sample, Scored | None]
SOURCES = ("scored", "raw")


@dataclass
class ReplayResult:
    summary: Summary
    accepted_topic: str
    rejected_topic: str
    source: str = "scored"
    run: str = ""  # the run reference its outcomes carry
    malformed: int = 0
    duplicates: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # in `scored`, recaption not back yet
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


def replay(
    settings: Settings,
    version: str,
    progress: bool = True,
    source: str = "scored",
    resume: bool = False,
) -> ReplayResult:
    """Curate `scored` (or `raw-samples`) again into `<accepted>-<version>` /
    `<rejected>-<version>`.

    ValueError if the version's topics exist, unless ``resume``: then only the outcomes they
    lack are sent, and the settings must be those the version was built with.
    """
    if source not in SOURCES:
        raise ValueError(f"replay source must be one of {SOURCES}, got {source!r}")
    check_broker(settings.kafka_bootstrap)
    accepted, rejected = output_topics(settings, version)
    result = ReplayResult(
        summary=Summary.of([]), accepted_topic=accepted, rejected_topic=rejected, source=source
    )
    existing = refuse_existing(settings, version, resume)
    if existing:
        _check_resumed_run(settings, version)
    sent = {r["id"] for r in _outcomes_in(settings, existing)}
    ensure_topics(settings.kafka_bootstrap, [accepted, rejected])
    topic = settings.topic_scored if source == "scored" else settings.topic_raw
    ends = end_offsets(settings.kafka_bootstrap, topic)
    total = sum(ends.values())
    bar = tqdm(total=total, unit="record", desc=f"replay {version}", disable=not progress)
    partitions = _by_partition(settings, topic, len(ends))
    if source == "scored":
        curator = _curator_without_models(settings)
        pairs = _curate_partitions(curator, partitions, bar, result)
        no_recaption = None  # the stream recaptioned; its records say how it went
    else:
        curator = make_curator(settings)
        pairs = _curate_raw(curator, _counted(partitions, bar), result)
        no_recaption = curator.no_recaption_reason()
    bar.close()
    result.run = record_run(
        settings, "replay", version=version, encoder=curator.encoder, if_absent=True
    )
    apply_evictions([o for o, _, _ in pairs])
    result.already_sent = sum(o.id in sent for o, _, _ in pairs)
    _produce(settings, result, [p for p in pairs if p[0].id not in sent])
    result.summary = Summary.of([o for o, _, _ in pairs], no_recaption)
    return result


def _by_partition(settings: Settings, topic: str, count: int) -> list[list[bytes]]:
    """The topic's records per partition, each in offset order."""
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for msg in read_topic(settings.kafka_bootstrap, topic):
        by_partition[msg.partition()].append(msg.value())
    return [by_partition.pop(partition, []) for partition in range(count)]


def _counted(partitions: Iterable[list[bytes]], bar: tqdm) -> Iterator[bytes]:
    """The records, partition after partition."""
    for values in partitions:
        for value in values:
            bar.update(1)
            yield value


def _curate_partitions(
    curator: Curator, partitions: list[list[bytes]], bar: tqdm, stats: ReplayResult
) -> list[Curated]:
    """Partition p of `scored` is shard p's order (unsharded: the one partition), curated
    by shard p alone with its own gate (a sample waiting for its recaption holds back its
    own shard only)."""
    shards = curator.shards if isinstance(curator, ShardedCurator) else [curator]
    if len(partitions) != len(shards):
        raise ValueError(
            f"`scored` has {len(partitions)} partitions, the curator {len(shards)} shard(s): "
            "replay with the run's centroid file (--centroids)"
        )
    pairs: list[Curated] = []
    for shard, values in zip(shards, partitions, strict=True):
        pairs += _curate_scored(shard, _counted([values], bar), stats)
    return pairs


def _curator_without_models(settings: Settings) -> Curator:
    """Gain index and policy only: re-curating `scored` never encodes or captions."""
    no_models = replace(settings, label_model="")
    curator = Curator(
        no_models,
        encoder=None,
        captioner=None,
        index=make_index(settings),
        policy=make_policy(settings),
        read_bytes=make_reader(settings),
    )
    return sharded(curator)


# --- from `scored`: the streaming curator's gate and stages, without Kafka ----------------
def _curate_scored(curator: Curator, values: Iterator[bytes], stats: ReplayResult) -> list[Curated]:
    serde = AvroSerde("ScoredSample")
    gate: OrderedGate[dict[str, Any]] = OrderedGate()
    admitted: set[str] = set()
    pairs: list[Curated] = []
    released: list[dict[str, Any]] = []
    for value in values:
        try:
            record = serde.decode(value)
        except MalformedMessage:
            stats.malformed += 1  # the streaming curator sent these to dead-letter
            continue
        released += _admit(curator, gate, admitted, record, stats)
        if len(released) >= curator.settings.batch_size:
            pairs += _finish(curator, released)
            released = []
    pairs += _finish(curator, released)
    stats.pending += [key for key in admitted if gate.waiting(key)]
    return pairs


def _admit(
    curator: Curator,
    gate: OrderedGate[dict[str, Any]],
    admitted: set[str],
    record: dict[str, Any],
    stats: ReplayResult,
) -> list[tuple[str, dict[str, Any]]]:
    """As agents/curator.py ``_admit``: queue a first record, resolve a recaptioned one."""
    key = record["id"]
    if record.get("attempt", 0) > 0:
        return gate.resolve(key, record) if gate.waiting(key) else []
    if key in admitted:
        stats.duplicates.append(key)  # an upstream retry: the curator skips it too
        return []
    admitted.add(key)
    return gate.push(key, record if curator.is_aligned(scored_from_record(record)) else None)


def _finish(curator: Curator, released: list[tuple[str, dict[str, Any]]]) -> list[Curated]:
    """Gain + policy for the aligned, rejection for the still misaligned, in gate order."""
    items = [scored_from_record(record) for _, record in released]
    aligned = [it for it in items if curator.is_aligned(it)]
    by_id = {o.id: o for o in curator.select(aligned)}
    pairs: list[Curated] = []
    for it in items:
        outcome = by_id.get(it.sample.id) or still_misaligned(it, curator.settings.delta)
        pairs.append((outcome, it.sample, it))
    return pairs


# --- from `raw-samples`: encode, filter and recaption again -------------------------------
def _curate_raw(curator: Curator, values: Iterator[bytes], stats: ReplayResult) -> list[Curated]:
    pairs: list[Curated] = []
    batch: list[Sample] = []
    for sample in _raw_samples(values, stats):
        batch.append(sample)
        if len(batch) >= curator.settings.batch_size:
            pairs += _curate(curator, batch)
            batch = []
    return pairs + _curate(curator, batch)


def _raw_samples(values: Iterator[bytes], stats: ReplayResult) -> Iterator[Sample]:
    serde = AvroSerde("RawSample")
    seen: set[str] = set()
    for value in values:
        try:
            sample = sample_from_raw(serde.decode(value))
        except MalformedMessage:
            stats.malformed += 1  # the streaming run sent these to dead-letter
            continue
        if not sample.id or sample.id in seen:
            stats.duplicates.append(sample.id)  # the streaming curator skips redeliveries too
            continue
        seen.add(sample.id)
        yield sample


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
