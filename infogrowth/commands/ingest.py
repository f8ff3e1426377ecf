"""`infogrowth ingest`: a JSONL/Parquet file of samples → RawSample records on Kafka.

Local images are uploaded to S3 under a content-addressed key (so re-ingesting uploads
nothing new) and replaced by their s3:// URI: records carry references, never bytes.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from minio.error import S3Error
from tqdm import tqdm
from urllib3.exceptions import HTTPError

from infogrowth.io.avro import AvroSerde
from infogrowth.io.files import count_rows, read_rows
from infogrowth.io.kafka_io import (
    UNLIMITED_RETENTION,
    check_broker,
    ensure_topics,
    make_producer,
    produce_records,
)
from infogrowth.io.messages import raw_record
from infogrowth.io.store import ObjectStore
from infogrowth.settings import Settings

T = TypeVar("T")
MAX_REPORTED = 20  # problems kept in the summary; the counts are always complete


@dataclass
class IngestSummary:
    topic: str
    produced: int = 0
    uploaded: int = 0  # rows whose local image is now in S3 (new or already there)
    new_uploads: int = 0  # objects actually written by this run
    missing: int = 0  # rows produced with a local image that could not be read
    skipped: int = 0  # rows not produced: unreadable line, no id, schema violation, too large
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)

    def line(self) -> str:
        return (
            f"produced {self.produced} to {self.topic}, uploaded {self.uploaded} images "
            f"({self.new_uploads} new), missing {self.missing}, skipped {self.skipped}"
        )


class ImageUploader:
    """Local image → s3://bucket/<prefix><sha256[:16]><ext>; same bytes, same key."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix
        self._store: ObjectStore | None = None
        self._done: dict[Path, str] = {}  # resolved path -> uri, for repeats within a run

    def store(self) -> ObjectStore:
        # Created on the first local image: a file of s3:// references needs no S3 access.
        if self._store is None:
            store = ObjectStore.from_settings(self.settings)
            s3_call(store, store.ensure_bucket)
            self._store = store
        return self._store

    def upload(self, path: Path) -> tuple[str, bool]:
        """(uri, newly written). Raises OSError when the file cannot be read."""
        if path in self._done:
            return self._done[path], False
        data = path.read_bytes()
        key = f"{self.prefix}{hashlib.sha256(data).hexdigest()[:16]}{path.suffix.lower()}"
        store = self.store()
        new = not s3_call(store, lambda: store.exists(key))
        if new:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            s3_call(store, lambda: store.put_bytes(key, data, kind))
        self._done[path] = store.uri(key)
        return self._done[path], new


def s3_call(store: ObjectStore, call: Callable[[], T]) -> T:
    """Infrastructure failures of S3 as one-line ConnectionErrors (StoreUnavailable)."""
    try:
        return call()
    except (S3Error, HTTPError) as exc:
        raise store.unavailable(exc) from None


def local_path(ref: str, base_dir: Path) -> Path | None:
    """The file a local reference names (relative: input's directory first); None if remote."""
    if ref.startswith("file:"):
        parsed = urlparse(ref)
        return Path(unquote(parsed.path)) if parsed.netloc in ("", "localhost") else None
    if len(urlparse(ref).scheme) > 1:  # s3://, http://, ...; one letter is a Windows drive
        return None
    path = Path(ref).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        return base_dir / path
    return path


def _crawl_time(value: Any) -> Any:
    """ISO-8601 strings → aware datetimes (Avro timestamp-millis); anything else as-is."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value  # the schema check reports it
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def prepare_row(
    row: Mapping[str, Any], number: int, base_dir: Path, uploader: ImageUploader, s: IngestSummary
) -> dict[str, Any] | None:
    """The RawSample record of one row, or None (counted and noted) if it cannot be sent."""
    if "_error" in row:
        s.skipped += 1
        s.note(str(row["_error"]))
        return None
    if row.get("id") is None or str(row["id"]) == "":
        s.skipped += 1
        s.note(f"row {number}: missing id")
        return None
    row = dict(row)
    if "crawl_time" in row:
        row["crawl_time"] = _crawl_time(row["crawl_time"])
    image = row.get("image")
    path = local_path(image, base_dir) if isinstance(image, str) and image.strip() else None
    if path is not None:
        try:
            row["image"], new = uploader.upload(path)
        except ConnectionError:  # an OSError too, but S3 being down is not a missing image
            raise
        except OSError as exc:  # kept as is: the pipeline rejects it with a reason
            s.missing += 1
            s.note(f"row {number} ({row['id']}): image {image}: {exc.strerror or exc}")
        else:
            s.uploaded += 1
            s.new_uploads += int(new)
    return raw_record(row)


def ingest_file(
    path: str | Path,
    settings: Settings,
    *,
    topic: str | None = None,
    prefix: str = "images/",
    progress: bool = True,
) -> IngestSummary:
    """Upload the file's local images and produce one RawSample per usable row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    topic = topic or settings.topic_raw
    check_broker(settings.kafka_bootstrap)
    partitions = settings.raw_partitions if topic == settings.topic_raw else 1
    ensure_topics(settings.kafka_bootstrap, [topic], partitions, UNLIMITED_RETENTION)  # a source
    summary = IngestSummary(topic=topic)
    uploader = ImageUploader(settings, prefix)
    base_dir = path.resolve().parent
    bar = tqdm(total=count_rows(path), unit="row", desc="ingest", disable=not progress)

    def records() -> Iterator[dict[str, Any]]:
        for number, row in enumerate(read_rows(path), 1):
            record = prepare_row(row, number, base_dir, uploader, summary)
            bar.update(1)
            if record is not None:
                yield record

    def invalid(record: Mapping[str, Any], exc: ValueError) -> None:
        summary.skipped += 1
        summary.note(f"{record.get('id')}: {exc}")

    try:
        producer = make_producer(settings.kafka_bootstrap)
        summary.produced = produce_records(
            producer, topic, AvroSerde("RawSample"), records(), on_invalid=invalid
        )
    finally:
        bar.close()
    return summary
