"""`infogrowth shards fit`: the centroid file of a sharded curator (infogrowth/core/shards.py),
and reading one back from a path or S3 for the commands and the worker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from infogrowth.core.shards import Centroids, fit
from infogrowth.io.avro import AvroSerde, MalformedMessage
from infogrowth.io.files import read_rows
from infogrowth.io.messages import sample_from_raw, scored_from_record
from infogrowth.io.store import ObjectStore, parse_s3_uri, read_reference
from infogrowth.records import Sample
from infogrowth.settings import Settings

TOPIC_SOURCES = ("scored", "raw")


def save(centroids: Centroids, dest: str, settings: Settings) -> str:
    """Writes ``centroids-<version>.bin`` under ``dest`` (a directory or ``s3://bucket/prefix``);
    returns the reference to pass as ``--centroids``."""
    if dest.startswith("s3://"):
        bucket, key = parse_s3_uri(dest.rstrip("/") + "/" + centroids.file_name)
        store = ObjectStore.from_settings(replace(settings, s3_bucket=bucket))
        store.ensure_bucket()
        return store.put_bytes(key, centroids.to_bytes())
    path = Path(dest) / centroids.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(centroids.to_bytes())
    return str(path)


def load(ref: str, settings: Settings) -> Centroids:
    """The centroids behind ``ref``; a file named ``centroids-<version>.bin`` must hold that
    version (a renamed or damaged file is an error, not a silent other sharding)."""
    store = ObjectStore.from_settings(settings) if ref.startswith("s3://") else None
    centroids = Centroids.from_bytes(read_reference(ref, store))
    name = Path(ref).name
    if name.startswith("centroids-") and name != centroids.file_name:
        raise ValueError(f"{ref}: its content is version {centroids.version}, not its name's")
    return centroids


def settings_centroids(settings: Settings) -> Centroids | None:
    """The run's centroids (None: one unsharded curator), checked against ``shards``."""
    if not settings.centroids:
        if settings.shards > 1:
            raise ValueError(
                f"shards={settings.shards} needs --centroids (fit them: infogrowth shards fit)"
            )
        return None
    centroids = load(settings.centroids, settings)
    if settings.shards not in (1, centroids.shards):  # 1: take the count from the file
        raise ValueError(
            f"shards={settings.shards}, but {settings.centroids} has {centroids.shards} centroids"
        )
    return centroids


def shard_count(settings: Settings) -> int:
    centroids = settings_centroids(settings)
    return 1 if centroids is None else centroids.shards


def file_embeddings(path: Path, n: int, settings: Settings) -> Iterator[np.ndarray]:
    """Image embeddings of the first ``n`` rows of a file (encoded when not precomputed)."""
    rows = (r for r in read_rows(path) if "_error" not in r and r.get("id"))
    samples = [Sample.from_dict(r) for r in islice(rows, n)]
    yield from _encoded(samples, settings, path.parent)


def _encoded(samples: list[Sample], settings: Settings, base_dir: Path | None) -> Iterator[Any]:
    from infogrowth.commands.offline import make_curator

    curator = make_curator(replace_centroids(settings), base_dir)
    for start in range(0, len(samples), settings.batch_size):
        for res in curator.score(samples[start : start + settings.batch_size]):
            if hasattr(res, "encoded"):
                yield res.encoded.image_emb


def replace_centroids(settings: Settings) -> Settings:
    """Fitting needs the encoder, never the centroids being replaced."""
    return replace(settings, centroids="", shards=1)


def topic_embeddings(source: str, n: int, settings: Settings) -> Iterator[np.ndarray]:
    """Image embeddings of the first ``n`` records of `scored` (as stored) or raw (encoded)."""
    from infogrowth.io.kafka_io import read_topic

    topic = settings.topic_scored if source == "scored" else settings.topic_raw
    serde = AvroSerde("ScoredSample" if source == "scored" else "RawSample")
    records = []
    for message in read_topic(settings.kafka_bootstrap, topic):
        try:
            records.append(serde.decode(message.value()))
        except MalformedMessage:
            continue
        if len(records) >= n:
            break
    if source == "scored":
        yield from (scored_from_record(r).encoded.image_emb for r in records)
    else:
        yield from _encoded([sample_from_raw(r) for r in records], settings, None)


def fit_centroids(source: str, n: int, settings: Settings) -> Centroids:
    """k-means with ``settings.shards`` centres and ``settings.seed`` on a bootstrap sample."""
    if settings.shards < 2:
        raise ValueError("shards fit needs --shards 2 or more (1 shard needs no centroids)")
    if source in TOPIC_SOURCES:
        vectors = list(topic_embeddings(source, n, settings))
    else:
        vectors = list(file_embeddings(Path(source), n, settings))
    if not vectors:
        raise ValueError(f"{source}: no sample with an embedding to fit centroids on")
    return fit(np.stack(vectors), settings.shards, settings.seed)
