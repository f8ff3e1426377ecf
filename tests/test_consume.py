"""Downstream consumers on the real broker and S3: CuratedStream, the PyTorch dataset with
several DataLoader workers, `infogrowth tail`, and the topics' partitions and retention."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from pipeline_helpers import run_settings, with_settings
from torch.utils.data import DataLoader

from infogrowth.commands.cli import main
from infogrowth.commands.pipeline import ensure_pipeline_topics, topic_names
from infogrowth.io.avro import AvroSerde
from infogrowth.io.consume import CuratedStream
from infogrowth.io.dataset import CuratedDataset
from infogrowth.io.kafka_io import ensure_topics, make_producer, produce_records, topic_configs
from infogrowth.io.store import ObjectStore
from infogrowth.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
EVICTED = {"a003", "a017", "a029"}


def accepted(i: int, image: str | None = None) -> dict[str, Any]:
    return {"id": f"a{i:03d}", "image": image, "caption": f"caption {i}", "gain": i / 100,
            "image_embedding": [float(i), 1.0], "text_embedding": [1.0, float(i)]}  # fmt: skip


def eviction(sample_id: str) -> dict[str, Any]:
    return {"id": sample_id, "reason": "over_budget", "detail": "pushed out"}


def produce(settings: Settings, topic: str, schema: str, records: list[dict[str, Any]]) -> None:
    producer = make_producer(settings.kafka_bootstrap)
    produce_records(producer, topic, AvroSerde(schema), records)


def produce_aborted(settings: Settings, record: dict[str, Any]) -> None:
    producer = make_producer(settings.kafka_bootstrap, **{"transactional.id": record["id"]})
    producer.init_transactions(30)
    producer.begin_transaction()
    value = AvroSerde("AcceptedSample").encode(record)
    producer.produce(settings.topic_accepted, key=record["id"].encode(), value=value)
    producer.flush(10)
    producer.abort_transaction(30)


@pytest.fixture
def curated(kafka, s3, tmp_path) -> tuple[Settings, dict[str, bytes]]:
    """A pipeline's topics with 40 accepted samples (images in S3), 3 of them evicted, and
    one accepted record in an aborted transaction."""
    settings = run_settings(kafka, s3, tmp_path)
    ensure_pipeline_topics(settings)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    images, records = {}, []
    for i in range(40):
        data = f"image bytes {i}".encode()
        uri = store.put_bytes(f"img/{i}.bin", data, "application/octet-stream")
        records.append(accepted(i, uri))
        images[records[-1]["id"]] = data
    produce(settings, settings.topic_accepted, "AcceptedSample", records)
    produce(settings, settings.topic_rejected, "RejectedSample", [eviction(i) for i in EVICTED])
    produce_aborted(settings, accepted(99))
    return settings, images


def test_dataloader_with_two_workers_reads_every_kept_id_exactly_once(curated):
    settings, images = curated
    dataset = CuratedDataset(settings)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    rows = list(loader)
    ids = Counter(r["id"] for r in rows)
    assert [i for i, n in ids.items() if n > 1] == []
    assert set(ids) == set(images) - EVICTED  # not the evicted ones, not the aborted a099
    assert all(r["image_bytes"] == images[r["id"]] for r in rows)
    assert len({r["partition"] for r in rows}) == 4  # keyed by id over all 4 partitions


def test_one_worker_reads_the_same_set_as_two(curated):
    settings, images = curated
    one = {r["id"] for r in DataLoader(CuratedDataset(settings), batch_size=None)}
    assert one == set(images) - EVICTED


def test_a_following_stream_skips_known_evictions_and_reports_late_ones(curated):
    settings, _ = curated
    late: list[str] = []
    stream = CuratedStream(
        settings, follow=True, idle_timeout_s=3, eviction_refresh_s=0, on_late_eviction=late.append
    )
    seen = []
    with stream:
        for sample in stream:
            seen.append(sample.id)
            if len(seen) == 5:  # evict something already handed out, then accept more
                produce(settings, settings.topic_rejected, "RejectedSample", [eviction(seen[0])])
                produce(settings, settings.topic_accepted, "AcceptedSample", [accepted(200)])
    assert not EVICTED & set(seen)
    assert "a200" in seen and len(seen) == len(set(seen)) == 38
    assert late == [seen[0]] == stream.late_evictions


def test_tail_prints_accepted_records_as_json_lines(curated, capsys):
    settings, images = curated
    flags = ["--kafka-bootstrap", settings.kafka_bootstrap,
             "--topic-accepted", settings.topic_accepted,
             "--topic-rejected", settings.topic_rejected]  # fmt: skip
    assert main(["tail", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["id"] for r in records} == set(images) - EVICTED and len(records) == 37
    assert all(r["image_embedding"] == {"dim": 2} for r in records)

    assert main(["tail", "--embeddings", "--max", "3", *flags]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3
    assert all(len(r["image_embedding"]) == 2 for r in records)

    assert main(["tail", "--follow", "--from-beginning", "--max", "37", *flags]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 37


def test_sources_of_truth_are_kept_forever_and_accepted_is_partitioned(
    kafka, s3, tmp_path, kafka_admin
):
    settings = with_settings(run_settings(kafka, s3, tmp_path), retention_ms=3_600_000)
    ensure_topics(kafka, [settings.topic_scored])  # made before, with the broker's retention
    ensure_pipeline_topics(settings)
    configs = topic_configs(kafka, topic_names(settings))
    for name in (settings.topic_raw, settings.topic_scored):
        assert configs[name]["retention.ms"] == "-1", name
        assert configs[name]["retention.bytes"] == "-1", name
    assert configs[settings.topic_runs]["cleanup.policy"] == "compact"  # one record per run
    sources = {settings.topic_raw, settings.topic_scored, settings.topic_runs}
    for name in set(topic_names(settings)) - sources:
        assert configs[name]["retention.ms"] == "3600000", name
    default = run_settings(kafka, s3, tmp_path)
    ensure_pipeline_topics(default)
    accepted_cfg = topic_configs(kafka, [default.topic_accepted])[default.topic_accepted]
    assert accepted_cfg["retention.ms"] == "604800000"  # Kafka's default: 7 days
    partitions = {
        name: len(meta.partitions)
        for name, meta in kafka_admin.list_topics(timeout=10).topics.items()
        if name in topic_names(default)
    }
    assert partitions.pop(default.topic_accepted) == 4
    assert set(partitions.values()) == {1}
