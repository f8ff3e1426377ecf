"""`infogrowth export`: the `accepted` topic → a training dataset in S3 (or a directory).

Formats: Parquet shards (``part-00000.parquet``: metadata + embeddings, images by URI) or
WebDataset tar shards (``shard-00000.tar``: ``<key>.<ext>`` image bytes, ``<key>.txt``
caption, ``<key>.json`` metadata). ``manifest.json`` is written last and lists the shards,
their row counts and the topic offsets the export stopped at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from infogrowth.commands.ingest import s3_call
from infogrowth.io.avro import AvroSerde, MalformedMessage
from infogrowth.io.kafka_io import check_broker, end_offsets, read_topic
from infogrowth.io.runs import describe, read_runs
from infogrowth.io.store import ObjectStore, parse_s3_uri, read_reference
from infogrowth.io.vectors import as_lists
from infogrowth.records import BadInput
from infogrowth.settings import Settings

FORMATS = ("parquet", "webdataset")
MAX_REPORTED = 20
SHARD_NAME = re.compile(r"^(part-\d{5}\.parquet|shard-\d{5}\.tar)$")
PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("caption", pa.string()),
        ("caption_source", pa.string()),
        ("label", pa.string()),
        ("relabelled", pa.bool_()),
        ("gain", pa.float64()),
        ("label_gain", pa.float64()),
        ("alignment", pa.float64()),
        ("original_alignment", pa.float64()),
        ("image_embedding", pa.list_(pa.float32())),
        ("text_embedding", pa.list_(pa.float32())),
        ("extra", pa.string()),  # the record's extra map as a JSON object
        ("run", pa.string()),  # <app_id>@<settings_hash>: manifest.json's runs
    ]
)
METADATA_FIELDS = tuple(
    n for n in PARQUET_SCHEMA.names if n not in ("image_embedding", "text_embedding")
)


# --- destinations ------------------------------------------------------------------------
class Sink(Protocol):
    location: str

    def put(self, name: str, data: bytes, content_type: str) -> str: ...
    def names(self) -> list[str]: ...
    def remove(self, name: str) -> None: ...


class S3Sink:
    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/") + "/"
        self.location = store.uri(self.prefix.rstrip("/"))
        s3_call(store, store.ensure_bucket)

    def put(self, name: str, data: bytes, content_type: str) -> str:
        return s3_call(
            self.store, lambda: self.store.put_bytes(self.prefix + name, data, content_type)
        )

    def names(self) -> list[str]:
        keys = s3_call(self.store, lambda: self.store.list(self.prefix))
        return [k[len(self.prefix) :] for k in keys]

    def remove(self, name: str) -> None:
        s3_call(self.store, lambda: self.store.delete(self.prefix + name))


class DirSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        path.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes, content_type: str) -> str:
        target = self.path / name
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)  # readers never see half a shard
        return str(target)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


def open_dest(dest: str, settings: Settings) -> tuple[Sink, str]:
    """(sink, dataset name) for ``s3://bucket/path/NAME``, ``file://`` or a directory."""
    if dest.startswith("s3://"):
        try:
            bucket, prefix = parse_s3_uri(dest.rstrip("/"))
        except ValueError:
            raise ValueError(f"--dest {dest!r}: use s3://BUCKET/datasets/NAME") from None
        store = ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            bucket,
            secure=settings.s3_secure,
        )
        return S3Sink(store, prefix), prefix.rstrip("/").rsplit("/", 1)[-1]
    if dest.startswith("file:"):
        dest = unquote(urlparse(dest).path)
    elif len(urlparse(dest).scheme) > 1:
        raise ValueError(f"--dest {dest!r}: use s3://BUCKET/PATH or a local directory")
    path = Path(dest).expanduser().resolve()
    return DirSink(path), path.name


# --- reading the topic -------------------------------------------------------------------
@dataclass
class ExportSummary:
    dest: str
    format: str
    count: int = 0  # samples in the dataset
    read: int = 0  # messages read from the topic
    duplicates: int = 0
    evicted: int = 0  # accepted, then pushed out of the budget (over_budget in rejected)
    skipped: int = 0  # undecodable messages, unreadable images (webdataset)
    shards: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)

    def line(self) -> str:
        return (
            f"exported {self.count} samples in {len(self.shards)} {self.format} shards to "
            f"{self.dest} (read {self.read}, duplicates {self.duplicates}, "
            f"evicted {self.evicted}, skipped {self.skipped})"
        )


def collect(
    settings: Settings, topic: str, ends: dict[int, int], summary: ExportSummary, progress: bool
) -> list[dict[str, Any]]:
    """Accepted records up to ``ends``, one per id (last wins), in (partition, offset) order.

    Raw values are kept until the end (compact Avro bytes) and decoded once per winner.
    """
    serde = AvroSerde("AcceptedSample")
    latest: dict[str, tuple[int, int, bytes]] = {}
    bar = tqdm(unit="msg", desc="export: read", disable=not progress)
    for msg in read_topic(settings.kafka_bootstrap, topic, ends=ends):
        summary.read += 1
        bar.update(1)
        value = msg.value() or b""
        try:
            record_id = serde.decode(value)["id"]
        except MalformedMessage as exc:
            summary.note(f"{topic}[{msg.partition()}]@{msg.offset()}: {exc}")
            continue
        if record_id in latest:
            summary.duplicates += 1
        latest[record_id] = (msg.partition(), msg.offset(), value)
    bar.close()
    winners = sorted(latest.values(), key=lambda t: (t[0], t[1]))
    return [as_lists(serde.decode(value)) for _, _, value in winners]


def _ends_if_exists(settings: Settings, topic: str) -> dict[int, int]:
    try:
        return end_offsets(settings.kafka_bootstrap, topic)
    except ValueError:  # no such topic: nothing was ever rejected
        return {}


def evicted_ids(settings: Settings, topic: str, ends: dict[int, int]) -> set[str]:
    """Ids that the budget policy pushed out after accepting them (reason over_budget)."""
    serde = AvroSerde("RejectedSample")
    evicted = set()
    for msg in read_topic(settings.kafka_bootstrap, topic, ends=ends):
        try:
            record = serde.decode(msg.value() or b"")
        except MalformedMessage:
            continue
        if record.get("reason") == "over_budget":
            evicted.add(record["id"])
    return evicted


# --- formats -----------------------------------------------------------------------------
def parquet_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {name: record.get(name) for name in PARQUET_SCHEMA.names}
    row["extra"] = json.dumps(record.get("extra") or {}, sort_keys=True, ensure_ascii=False)
    return row


def parquet_shard(records: Sequence[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist([parquet_row(r) for r in records], schema=PARQUET_SCHEMA)
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def metadata(record: dict[str, Any]) -> dict[str, Any]:
    meta = {name: record.get(name) for name in METADATA_FIELDS}
    meta["extra"] = dict(record.get("extra") or {})
    return meta


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"RIFF", "webp"))


def sample_key(record_id: str, used: set[str]) -> str:
    """A WebDataset key: no dots or slashes (they would split the sample); unique."""
    key = _UNSAFE.sub("_", record_id) or "_"
    if key in used:
        key = f"{key}_{hashlib.sha1(record_id.encode()).hexdigest()[:8]}"
    used.add(key)
    return key


def image_extension(uri: str, data: bytes) -> str:
    suffix = Path(urlparse(uri).path).suffix.lower().lstrip(".")
    if suffix:
        return suffix
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), "bin")


def tar_shard(samples: Sequence[tuple[str, str, bytes, dict[str, Any]]]) -> bytes:
    """(key, ext, image bytes, metadata) → an uncompressed tar, byte-identical on reruns."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ext, image, meta in samples:
            caption = (meta.get("caption") or "").encode()
            text = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
            for name, data in (
                (f"{key}.{ext}", image),
                (f"{key}.txt", caption),
                (f"{key}.json", text),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class ImageReader:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: ObjectStore | None = None

    def read(self, ref: str | None) -> bytes:
        """Image bytes; BadInput for a missing image, ConnectionError if S3 is down."""
        if ref and ref.startswith("s3://") and self._store is None:
            self._store = ObjectStore.from_settings(self.settings)
        store = self._store
        if store is None:
            return read_reference(ref, None)
        return s3_call(store, lambda: read_reference(ref, store))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_parquet(
    records: list[dict[str, Any]], sink: Sink, shard_size: int, summary: ExportSummary, bar: tqdm
) -> None:
    for i, chunk in enumerate(chunks(records, shard_size)):
        data = parquet_shard(chunk)
        name = f"part-{i:05d}.parquet"
        uri = sink.put(name, data, "application/vnd.apache.parquet")
        summary.shards.append({"key": name, "uri": uri, "count": len(chunk), "bytes": len(data)})
        summary.count += len(chunk)
        bar.update(len(chunk))


def write_webdataset(
    records: list[dict[str, Any]],
    sink: Sink,
    shard_size: int,
    summary: ExportSummary,
    bar: tqdm,
    reader: ImageReader,
) -> None:
    used: set[str] = set()
    pending: list[tuple[str, str, bytes, dict[str, Any]]] = []

    def flush() -> None:
        name = f"shard-{len(summary.shards):05d}.tar"
        data = tar_shard(pending)
        uri = sink.put(name, data, "application/x-tar")
        summary.shards.append({"key": name, "uri": uri, "count": len(pending), "bytes": len(data)})
        summary.count += len(pending)
        pending.clear()

    for record in records:
        bar.update(1)
        try:
            image = reader.read(record.get("image"))
        except BadInput as exc:  # a sample without its image is no training sample
            summary.note(f"{record['id']}: {exc}")
            continue
        key = sample_key(record["id"], used)
        pending.append(
            (key, image_extension(record.get("image") or "", image), image, metadata(record))
        )
        if len(pending) >= shard_size:
            flush()
    if pending:
        flush()


# --- the command -------------------------------------------------------------------------
def build_manifest(
    name: str,
    settings: Settings,
    topic: str,
    ends: dict[int, int],
    summary: ExportSummary,
    records: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """What the dataset is: shards, source offsets, storage, columns, and the settings of
    the run(s) that curated it (from the runs topic, not from this command's settings)."""
    runs = run_summaries(settings, records, summary)
    single = runs[0] if len(runs) == 1 else {}
    return {
        "name": name,
        "format": summary.format,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "count": summary.count,
        "shards": summary.shards,
        "source": {
            "bootstrap": settings.kafka_bootstrap,
            "topic": topic,
            "isolation": "read_committed",
            "end_offsets": {str(p): off for p, off in sorted(ends.items())},
            "messages": summary.read,
            "duplicates": summary.duplicates,
            "evicted": summary.evicted,
        },
        "storage": {"s3_endpoint": settings.s3_endpoint, "s3_secure": settings.s3_secure},
        "columns": columns(summary.format),
        "app_id": single.get("app_id"),
        "run": single.get("run"),
        "settings": single.get("settings"),  # null unless one recorded run curated it all
        "runs": runs,
        "skipped": summary.skipped,
        "problems": summary.problems,
    }


def run_summaries(
    settings: Settings, records: Sequence[dict[str, Any]], summary: ExportSummary
) -> list[dict[str, Any]]:
    """Each run the exported records reference, with its recorded settings and sample count."""
    counts = Counter(r.get("run") for r in records)
    unknown = counts.pop(None, 0)
    if unknown:
        summary.problems.append(
            f"{unknown} samples carry no run reference (written before runs were recorded): "
            "their settings are unknown"
        )
    recorded = read_runs(settings) if counts else {}
    runs = []
    for ref, count in counts.most_common():
        if ref in recorded:
            runs.append({**describe(recorded[ref]), "samples": count})
        else:
            summary.problems.append(f"run {ref} is not in topic {settings.topic_runs}")
            runs.append({"run": ref, "settings": None, "samples": count})
    if len(runs) > 1:
        summary.problems.append(f"the samples come from {len(runs)} runs (see runs)")
    return runs


def columns(fmt: str) -> list[dict[str, str]]:
    """Parquet: the columns; webdataset: the files of a sample, then its .json fields."""
    fields = [{"name": f.name, "type": str(f.type)} for f in PARQUET_SCHEMA]
    if fmt == "parquet":
        return fields
    files = [
        {"name": "<key>.<ext>", "type": "image bytes (ext from the URI or the bytes)"},
        {"name": "<key>.txt", "type": "caption (utf-8)"},
        {"name": "<key>.json", "type": "metadata: the fields below"},
    ]
    return files + [f for f in fields if f["name"] in METADATA_FIELDS]


def export_dataset(
    dest: str,
    settings: Settings,
    *,
    fmt: str = "parquet",
    topic: str | None = None,
    rejected_topic: str | None = None,
    shard_size: int = 1000,
    progress: bool = True,
) -> ExportSummary:
    """Write the accepted samples (up to the topic's current end) as a sharded dataset.

    Samples the budget policy evicted later (``over_budget`` records in ``rejected_topic``,
    by default the rejected topic paired with the default accepted one) are left out.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    if topic is None:
        topic, rejected_topic = settings.topic_accepted, rejected_topic or settings.topic_rejected
    check_broker(settings.kafka_bootstrap)
    ends = end_offsets(settings.kafka_bootstrap, topic)  # first: a missing topic writes nothing
    # After the accepted ends: an eviction of a sample past them does not matter.
    rejected_ends = _ends_if_exists(settings, rejected_topic) if rejected_topic else {}
    sink, name = open_dest(dest, settings)
    summary = ExportSummary(dest=sink.location, format=fmt)
    records = collect(settings, topic, ends, summary, progress)
    if rejected_ends:
        evicted = evicted_ids(settings, rejected_topic, rejected_ends)
        kept = [r for r in records if r["id"] not in evicted]
        summary.evicted, records = len(records) - len(kept), kept
    bar = tqdm(total=len(records), unit="sample", desc="export: write", disable=not progress)
    if fmt == "parquet":
        write_parquet(records, sink, shard_size, summary, bar)
    else:
        write_webdataset(records, sink, shard_size, summary, bar, ImageReader(settings))
    bar.close()
    written = {s["key"] for s in summary.shards}
    for stale in sink.names():  # shards of an earlier, larger export of the same name
        if SHARD_NAME.match(stale) and stale not in written:
            sink.remove(stale)
    summary.manifest = build_manifest(name, settings, topic, ends, summary, records)
    manifest = json.dumps(summary.manifest, indent=2, ensure_ascii=False).encode()
    sink.put("manifest.json", manifest, "application/json")
    return summary
