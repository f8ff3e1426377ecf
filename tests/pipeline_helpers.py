"""Shared by the streaming tests: isolated settings per run, data sets, topic reads."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from infogrowth.commands.demo import demo_settings
from infogrowth.commands.ingest import ingest_file
from infogrowth.io.kafka_io import read_topic
from infogrowth.settings import Settings


def run_settings(kafka: str, s3: Any, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with topics, consumer group and bucket nobody else uses."""
    base = Settings.from_env(
        kafka_bootstrap=kafka,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket="pipeline",
        data_dir=str(tmp_path / "data"),
        batch_size=16,
        take_within=0.3,
        **overrides,
    )
    return demo_settings(base, uuid.uuid4().hex[:8])


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)


def embedding_rows(n: int, dim: int = 24, seed: int = 0) -> list[dict[str, Any]]:
    """Samples with precomputed embeddings: clusters, exact and near duplicates, a few
    misaligned captions (text unrelated to the image) and a NaN embedding."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    rows = []
    for i in range(n):
        img = centres[i % 12] + 0.35 * rng.normal(size=dim)
        txt = img + 0.2 * rng.normal(size=dim)
        if i % 10 == 3 and rows:  # an exact re-crawl of an earlier sample
            prev = rows[int(rng.integers(len(rows)))]
            img, txt = np.array(prev["image_embedding"]), np.array(prev["text_embedding"])
        if i % 17 == 5:  # a caption about something else
            txt = rng.normal(size=dim)
        rows.append({"id": f"s{i:04d}", "caption": f"sample {i}", "source": "test",
                     "image_embedding": img.astype(np.float32).tolist(),
                     "text_embedding": txt.astype(np.float32).tolist()})  # fmt: skip
    if n > 7:
        rows[7]["image_embedding"][0] = float("nan")
    return rows


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """A worker's /metrics: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status_flags(settings: Settings, metrics_url: str) -> list[str]:
    """`infogrowth status` flags for a worker run with ``settings``."""
    from infogrowth.commands.cli import TOPIC_FLAGS, flag_name

    flags = ["--kafka-bootstrap", settings.kafka_bootstrap, "--app-id", settings.app_id]
    flags += ["--metrics-url", metrics_url]
    for f in fields(settings):
        if f.name in TOPIC_FLAGS:
            flags += [flag_name(f.name), getattr(settings, f.name)]
    return flags


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def topic_values(settings: Settings, topic: str) -> list[bytes]:
    return [m.value() for m in read_topic(settings.kafka_bootstrap, topic, timeout_s=30)]


def trickle(settings: Settings, rows: list[dict], tmp_path: Path, chunk: int = 100) -> None:
    """Ingests ``rows`` a chunk every half second (a crawl, not a bulk load: the worker is
    still mid-stream when a fault test strikes)."""
    for start in range(0, len(rows), chunk):
        path = write_jsonl(tmp_path / f"chunk{start}.jsonl", rows[start : start + chunk])
        while True:
            try:
                ingest_file(path, settings, progress=False)
                break
            except ConnectionError:  # ingest's check that the broker answers, before it
                time.sleep(1.0)  # sends anything: a crawler tries the chunk again
        time.sleep(0.5)
