"""ingest (file → S3 + Kafka) and export (accepted topic → dataset) on the real broker and S3."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import S3Server
from PIL import Image

from infogrowth.commands.cli import main
from infogrowth.commands.export import export_dataset
from infogrowth.commands.ingest import ingest_file
from infogrowth.io.avro import AvroSerde
from infogrowth.io.kafka_io import (
    check_broker,
    end_offsets,
    ensure_topics,
    make_producer,
    produce_records,
    read_topic,
)
from infogrowth.settings import Settings
from infra import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


def _bucket() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _settings(kafka: str, s3: S3Server, bucket: str) -> Settings:
    return Settings.from_env(
        kafka_bootstrap=kafka,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=bucket,
    )


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")
    return path.read_bytes()


def _read_all(kafka: str, topic: str, schema: str) -> list[dict[str, Any]]:
    serde = AvroSerde(schema)
    return [serde.decode(m.value()) for m in read_topic(kafka, topic, timeout_s=20)]


# --- ingest ------------------------------------------------------------------------------
def test_ingest_uploads_images_and_produces_records(
    kafka: str, s3: S3Server, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory("raw")
    bucket = _bucket()
    (tmp_path / "img").mkdir()
    images = {
        "a": _png(tmp_path / "img" / "a.png", (255, 0, 0)),
        "b": _png(tmp_path / "img" / "b.png", (0, 255, 0)),
        "c": _png(tmp_path / "c.PNG", (0, 0, 255)),
    }
    lines = [
        {"id": "a", "image": "img/a.png", "caption": "red", "source": "crawler-1"},
        {"id": "b", "image": str(tmp_path / "img" / "b.png"), "caption": "green", "n": 3},
        "{not json",
        {"id": "c", "image": (tmp_path / "c.PNG").as_uri(), "crawl_time": "2024-05-01T12:00:00Z"},
        {"id": "gone", "image": "img/missing.png", "caption": "nothing"},
        {"caption": "no id"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    settings = _settings(kafka, s3, bucket)

    summary = ingest_file(src, settings, topic=topic, prefix="img/", progress=False)

    assert (summary.produced, summary.uploaded, summary.new_uploads) == (4, 3, 3)
    assert (summary.missing, summary.skipped) == (1, 2)
    records = {r["id"]: r for r in _read_all(kafka, topic, "RawSample")}
    assert sorted(records) == ["a", "b", "c", "gone"]
    store = s3.store(bucket)
    for rid, data in images.items():
        uri = records[rid]["image"]
        assert uri.startswith(f"s3://{bucket}/img/") and uri.endswith(".png")
        assert store.get_bytes(uri) == data
    assert records["gone"]["image"] == "img/missing.png"  # kept: rejected downstream
    assert records["a"]["source"] == "crawler-1"
    assert records["b"]["extra"] == {"n": "3"}
    assert records["c"]["crawl_time"].year == 2024
    assert len(store.list("img/")) == 3

    again = ingest_file(src, settings, topic=topic, prefix="img/", progress=False)

    assert (again.produced, again.uploaded, again.new_uploads) == (4, 3, 0)
    assert len(store.list("img/")) == 3
    second = _read_all(kafka, topic, "RawSample")[4:]
    assert {r["id"]: r["image"] for r in second} == {k: v["image"] for k, v in records.items()}


def test_ingest_cli_summary(
    kafka: str,
    s3: S3Server,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("raw")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "x", "image": "s3://elsewhere/x.jpg", "caption": "c"}) + "\n")
    flags = ["--kafka-bootstrap", kafka, "--s3-endpoint", s3.endpoint]
    flags += ["--s3-access-key", s3.access_key, "--s3-secret-key", s3.secret_key]

    assert main(["ingest", str(src), "--topic", topic, "--quiet", *flags]) == 0

    err = capsys.readouterr().err
    assert "produced 1" in err and "uploaded 0 images (0 new)" in err
    assert [r["image"] for r in _read_all(kafka, topic, "RawSample")] == ["s3://elsewhere/x.jpg"]


def test_unreachable_broker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=f"Kafka broker at {dead} is unreachable"):
        check_broker(dead, timeout=1.0)
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a"}\n')

    assert main(["ingest", str(src), "--kafka-bootstrap", dead, "--quiet"]) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith("infogrowth ingest: error: Kafka broker at") and "\n" not in err


# --- export ------------------------------------------------------------------------------
def _accepted(i: int, image: str, caption: str) -> dict[str, Any]:
    return {
        "id": f"s-{i}",
        "image": image,
        "caption": caption,
        "caption_source": "recaptioned" if i == 1 else "original",
        "label": None,
        "gain": 0.1 * i,
        "alignment": 0.5,
        "image_embedding": [float(i), 1.0, 0.0],
        "text_embedding": [0.0, 1.0, float(i)],
        "extra": {"source": "test", "n": str(i)},
    }


@pytest.fixture
def accepted_topic(
    kafka: str, s3: S3Server, topic_factory: Callable[..., str]
) -> tuple[str, str, dict[str, bytes]]:
    """A topic of 5 AcceptedSample messages, 4 distinct ids, images in a fresh bucket."""
    topic = topic_factory("accepted", partitions=2)
    bucket = _bucket()
    store = s3.store(bucket)
    images: dict[str, bytes] = {}
    records = []
    for i in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(buf, format="PNG")
        images[f"s-{i}"] = buf.getvalue()
        uri = store.put_bytes(f"img/{i}.png", buf.getvalue(), "image/png")
        records.append(_accepted(i, uri, f"caption {i}"))
    records.append(_accepted(2, records[2]["image"], "caption 2 again"))  # duplicate id
    produce_records(make_producer(kafka), topic, AvroSerde("AcceptedSample"), records)
    return topic, bucket, images


def test_export_parquet_to_s3(
    kafka: str, s3: S3Server, accepted_topic: tuple[str, str, dict[str, bytes]]
) -> None:
    topic, bucket, _ = accepted_topic
    settings = _settings(kafka, s3, bucket)

    summary = export_dataset(
        f"s3://{bucket}/datasets/demo", settings, topic=topic, shard_size=3, progress=False
    )

    store = s3.store(bucket)
    assert store.list("datasets/demo/") == [
        "datasets/demo/manifest.json",
        "datasets/demo/part-00000.parquet",
        "datasets/demo/part-00001.parquet",
    ]
    manifest = json.loads(store.get_bytes("datasets/demo/manifest.json"))
    assert manifest["name"] == "demo" and manifest["count"] == 4 == summary.count
    assert [s["count"] for s in manifest["shards"]] == [3, 1]
    assert manifest["source"]["topic"] == topic and manifest["source"]["duplicates"] == 1
    assert sum(manifest["source"]["end_offsets"].values()) == 5
    rows = []
    for shard in manifest["shards"]:
        rows += pq.read_table(io.BytesIO(store.get_bytes(shard["uri"]))).to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["s-0", "s-1", "s-2", "s-3"]
    assert by_id["s-2"]["caption"] == "caption 2 again"  # last wins
    assert by_id["s-1"]["caption_source"] == "recaptioned"
    assert by_id["s-3"]["image"] == f"s3://{bucket}/img/3.png"
    assert by_id["s-3"]["image_embedding"] == [3.0, 1.0, 0.0]
    assert json.loads(by_id["s-3"]["extra"]) == {"source": "test", "n": "3"}


def test_export_webdataset_to_s3_and_directory(
    kafka: str,
    s3: S3Server,
    accepted_topic: tuple[str, str, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    topic, bucket, images = accepted_topic
    store = s3.store(bucket)
    store.delete("img/0.png")  # an accepted sample whose image vanished is left out
    settings = _settings(kafka, s3, bucket)

    summary = export_dataset(
        f"s3://{bucket}/datasets/wds", settings, fmt="webdataset", topic=topic, progress=False
    )

    assert summary.count == 3 and summary.skipped == 1
    manifest = json.loads(store.get_bytes("datasets/wds/manifest.json"))
    assert manifest["format"] == "webdataset" and manifest["count"] == 3
    assert [s["key"] for s in manifest["shards"]] == ["shard-00000.tar"]
    shard = store.get_bytes("datasets/wds/shard-00000.tar")
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        names = sorted(tar.getnames())
        assert names == sorted(f"s-{i}.{ext}" for i in (1, 2, 3) for ext in ("png", "txt", "json"))
        assert tar.extractfile("s-3.png").read() == images["s-3"]  # type: ignore[union-attr]
        assert tar.extractfile("s-2.txt").read() == b"caption 2 again"  # type: ignore[union-attr]
        meta = json.loads(tar.extractfile("s-1.json").read())  # type: ignore[union-attr]
        assert meta["id"] == "s-1" and meta["caption_source"] == "recaptioned"

    local = export_dataset(
        str(tmp_path / "out" / "wds"), settings, fmt="webdataset", topic=topic, progress=False
    )

    assert local.count == 3
    assert sorted(p.name for p in (tmp_path / "out" / "wds").iterdir()) == [
        "manifest.json",
        "shard-00000.tar",
    ]
    assert (tmp_path / "out" / "wds" / "shard-00000.tar").read_bytes() == store.get_bytes(
        "datasets/wds/shard-00000.tar"
    )  # shards are byte-identical across runs


def test_export_cli_to_directory(
    kafka: str,
    s3: S3Server,
    accepted_topic: tuple[str, str, dict[str, bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, bucket, _ = accepted_topic
    out = tmp_path / "ds"
    (out).mkdir()
    (out / "part-00007.parquet").write_bytes(b"stale")
    argv = ["export", "--dest", str(out), "--topic", topic, "--kafka-bootstrap", kafka, "--quiet"]

    assert main(argv) == 0

    assert "exported 4 samples in 1 parquet shards" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "part-00000.parquet"]
    assert pq.read_table(out / "part-00000.parquet").num_rows == 4


# --- read_topic ----------------------------------------------------------------------------
def test_read_topic_stops_at_end_of_transactional_topic(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("txn")
    serde = AvroSerde("RawSample")
    producer = make_producer(kafka, **{"transactional.id": f"test-{topic}"})
    producer.init_transactions(30)
    for ids, commit in ((["a", "b"], True), (["x", "y"], False), (["c"], True)):
        producer.begin_transaction()
        produce_records(producer, topic, serde, [{"id": i} for i in ids])
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    producer.begin_transaction()  # left open: read_committed stops before it
    produce_records(producer, topic, serde, [{"id": "open"}])

    started = time.monotonic()
    ids = [serde.decode(m.value())["id"] for m in read_topic(kafka, topic, timeout_s=30)]

    assert ids == ["a", "b", "c"]
    assert time.monotonic() - started < 10  # stopped at the end, not on the timeout
    assert end_offsets(kafka, topic) == {0: 8}  # 5 records + 3 markers before the open one
    producer.commit_transaction(30)
    assert [serde.decode(m.value())["id"] for m in read_topic(kafka, topic)][-1] == "open"


def test_ensure_topics_is_idempotent(kafka: str, kafka_admin: Any) -> None:
    name = f"ensure-{uuid.uuid4().hex[:10]}"
    assert ensure_topics(kafka, [name, name], partitions=2) == [name]
    assert ensure_topics(kafka, [name]) == []
    assert end_offsets(kafka, name) == {0: 0, 1: 0}
    assert list(read_topic(kafka, name, timeout_s=5)) == []
    kafka_admin.delete_topics([name])


def test_read_missing_topic_is_a_clear_error(kafka: str) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        list(read_topic(kafka, f"nope-{uuid.uuid4().hex[:8]}", timeout_s=5))


def test_export_leaves_out_samples_evicted_by_the_budget(
    kafka: str,
    s3: S3Server,
    topic_factory: Callable[..., str],
    accepted_topic: tuple[str, str, dict[str, bytes]],
) -> None:
    topic, bucket, _ = accepted_topic
    rejected = topic_factory("rejected")
    evictions = [{"id": "s-1", "reason": "over_budget", "detail": "pushed out by s-3"}]
    misaligned = [{"id": "s-0", "reason": "misaligned", "detail": "not an eviction"}]
    produce_records(
        make_producer(kafka), rejected, AvroSerde("RejectedSample"), evictions + misaligned
    )
    settings = _settings(kafka, s3, bucket)

    summary = export_dataset(
        f"s3://{bucket}/datasets/budget",
        settings,
        topic=topic,
        rejected_topic=rejected,
        progress=False,
    )

    assert summary.evicted == 1 and summary.count == 3
    manifest = json.loads(s3.store(bucket).get_bytes("datasets/budget/manifest.json"))
    assert manifest["source"]["evicted"] == 1
    table = pq.read_table(
        io.BytesIO(s3.store(bucket).get_bytes("datasets/budget/part-00000.parquet"))
    )
    assert sorted(table.column("id").to_pylist()) == ["s-0", "s-2", "s-3"]
