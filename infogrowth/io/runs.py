"""Run settings travel with the data.

Each run (a worker, a replay) writes the settings it curates with once, as a `RunSettings`
record in the compacted `runs` topic (``topic_runs``), keyed by its run reference
``<app_id>@<settings_hash>``. Every outcome record carries that reference in its ``run``
field, so `export` and `replay` read the settings a dataset was built with instead of the
settings of the shell they run in. The hash covers the curation settings only (not topics,
batch size or credentials), so a replay with unchanged settings reproduces the run's records
byte for byte, run field included. Secrets are never recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from infogrowth.core.gain import LEGACY_EXACT_PREFIX
from infogrowth.io.avro import AvroSerde, MalformedMessage
from infogrowth.io.kafka_io import ensure_topics, make_producer, produce_records, read_topic
from infogrowth.settings import FIELD_TYPES, SECRET_FIELDS, Layer, Settings

if TYPE_CHECKING:
    from infogrowth.core.encode import Encoder

SCHEMA = "RunSettings"
COMPACTED = {"cleanup.policy": "compact"}
# The settings that decide what a run keeps (the hash covers exactly these).
RUN_SETTINGS = (
    "mode", "encoder", "clip_model", "captioner", "captioner_model", "captioner_url",
    "delta", "k", "gain_mean", "hnsw_m", "hnsw_ef_construction", "hnsw_ef",
    "policy", "tau", "budget", "dup_distance",
    "dup_hash_bits", "dup_hash_distance", "dup_hash_near",
    "min_side", "max_aspect", "min_words", "max_words", "max_caption_repeats", "alignment_top",
    "label_confidence", "label_action", "label_model", "seed",
)  # fmt: skip
assert not SECRET_FIELDS & set(RUN_SETTINGS)


def _without_userinfo(url: str) -> str:
    """A URL without ``user:password@`` (a captioner URL may carry credentials)."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def run_values(settings: Settings) -> dict[str, Any]:
    """The recorded settings of a run, by name."""
    values = {name: getattr(settings, name) for name in RUN_SETTINGS}
    values["captioner_url"] = _without_userinfo(values["captioner_url"])
    if settings.centroids:  # sharded: the (versioned) centroid file decides too
        values["centroids"] = settings.centroids
    if settings.exact_limit != LEGACY_EXACT_PREFIX:  # recorded since it became a setting
        values["exact_limit"] = settings.exact_limit
    return values


def settings_hash(values: Mapping[str, Any]) -> str:
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_ref(settings: Settings) -> str:
    """``<app_id>@<settings_hash>``: the ``run`` field of the outcomes these settings decide."""
    return f"{settings.app_id}@{settings_hash(run_values(settings))}"


def encoder_dims(encoder: Encoder | None) -> tuple[int | None, int | None]:
    """Embedding sizes fixed by the encoder; (None, None) when the data sets them."""
    if encoder is None or not encoder.explicit:
        return None, None
    return encoder.image_dim, encoder.text_dim


def run_record(
    settings: Settings,
    origin: str,
    version: str | None = None,
    encoder: Encoder | None = None,
) -> dict[str, Any]:
    values = run_values(settings)
    image_dim, text_dim = encoder_dims(encoder)
    topics = [f.name for f in fields(Settings) if f.name.startswith("topic_")]
    return {
        "run": run_ref(settings),
        "app_id": settings.app_id,
        "settings_hash": settings_hash(values),
        "settings": {name: json.dumps(value) for name, value in values.items()},
        "origin": origin,
        "replay_version": version,
        "image_dim": image_dim,
        "text_dim": text_dim,
        "topics": {name: getattr(settings, name) for name in topics},
        "created": datetime.now(UTC),
    }


def ensure_runs_topic(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap, [settings.topic_runs], 1, COMPACTED)


def record_run(
    settings: Settings,
    origin: str,
    *,
    version: str | None = None,
    encoder: Encoder | None = None,
    if_absent: bool = False,
) -> str:
    """Writes this run's RunSettings record; returns its run reference. With ``if_absent``
    nothing is written when the reference is already recorded (a replay with a worker's
    settings keeps the worker's record)."""
    ensure_runs_topic(settings)
    record = run_record(settings, origin, version, encoder)
    if if_absent and record["run"] in read_runs(settings):
        return str(record["run"])
    producer = make_producer(settings.kafka_bootstrap)
    produce_records(producer, settings.topic_runs, AvroSerde(SCHEMA), [record], lambda r: r["run"])
    return str(record["run"])


def read_runs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The recorded runs by reference, the most recently written last; {} without a topic."""
    serde = AvroSerde(SCHEMA)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for msg in read_topic(settings.kafka_bootstrap, settings.topic_runs, timeout_s=30):
            try:
                record = serde.decode(msg.value() or b"")
            except MalformedMessage:
                continue
            runs.pop(record["run"], None)  # re-inserted: the dict keeps write order
            runs[record["run"]] = record
    except ValueError as exc:
        if "does not exist" not in str(exc):
            raise
    return runs


def latest_worker_run(runs: Mapping[str, dict[str, Any]], app_id: str) -> dict[str, Any] | None:
    """The settings the worker of ``app_id`` last started with."""
    mine = [r for r in runs.values() if r["app_id"] == app_id and r["origin"] == "worker"]
    return mine[-1] if mine else None


def recorded_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """A RunSettings record's settings as typed values."""
    return {name: json.loads(text) for name, text in record["settings"].items()}


def run_layer(record: Mapping[str, Any]) -> Layer:
    """The run's settings (those Settings still has) as a settings layer, named after the
    run in error messages."""
    values = {"exact_limit": LEGACY_EXACT_PREFIX, **recorded_settings(record)}
    return Layer(f"run {record['run']}", {k: v for k, v in values.items() if k in FIELD_TYPES})


def describe(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run as plain JSON (for manifest.json)."""
    return {
        "run": record["run"],
        "app_id": record["app_id"],
        "origin": record["origin"],
        "replay_version": record["replay_version"],
        "created": record["created"].isoformat(timespec="seconds"),
        "settings": recorded_settings(record),
        "image_dim": record["image_dim"],
        "text_dim": record["text_dim"],
        "topics": dict(record["topics"]),
    }
