"""Sharded curation: S independent curators, each over the samples nearest its centroid.

One curator (one gain index, one policy) is a single writer over one total order, which caps
it at one machine. With S shards, every sample goes to the shard of its nearest centroid
(``Centroids.route``) and each shard curates its own subsequence, in order, against its own
index: a sample's gain is measured against the kept samples *of its shard* only. Near
neighbours mostly share a centroid, so this is close to the unsharded curation, not equal
(``bench/shard_bench.py`` measures how close). S=1 is the exact, unsharded curation.

Routing uses the image embedding, L2-normalised (the duplicate check is on the image, so a
copy of an image always lands in its original's shard). The centroids are k-means centres of
such vectors, fitted once on a bootstrap sample (``fit``) and stored as a versioned file whose
name carries its content hash (``centroids-<version>.bin``), so a run names exactly the
centroids it used.

Budget policy: shard ``i`` of ``S`` keeps ``budget // S`` samples, one more for the first
``budget % S`` shards, so the shards together keep at most ``budget``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from infogrowth.core.curate import Curator, Scored
from infogrowth.records import Outcome
from infogrowth.settings import Settings

FORMAT = "infogrowth-centroids/1"


@dataclass(frozen=True)
class Centroids:
    """K centres of L2-normalised image embeddings; the shard of a vector is its nearest."""

    centres: np.ndarray  # (K, d) float32
    seed: int = 0
    fitted_on: int = 0  # vectors in the bootstrap sample

    @property
    def shards(self) -> int:
        return int(self.centres.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centres.shape[1])

    def route(self, image_emb: np.ndarray) -> int:
        """The shard of one image embedding: its nearest centre (Euclidean, after L2
        normalisation; the first on a tie). Row by row in float64, so a sample's shard never
        depends on the batch it came in."""
        vector = _unit(np.asarray(image_emb, dtype=np.float64).reshape(1, -1))[0]
        if vector.shape[0] != self.dim:
            raise ValueError(
                f"{vector.shape[0]}-d embedding, but the centroids are {self.dim}-d: fit "
                "centroids on this run's embeddings (infogrowth shards fit)"
            )
        distances = ((self.centres.astype(np.float64) - vector) ** 2).sum(axis=1)
        return int(np.argmin(distances))

    def to_bytes(self) -> bytes:
        """A JSON header line, then the centres as little-endian float32."""
        head = {"format": FORMAT, "shards": self.shards, "dim": self.dim, "seed": self.seed}
        head["fitted_on"] = self.fitted_on
        body = np.ascontiguousarray(self.centres, dtype="<f4").tobytes()
        return json.dumps(head, sort_keys=True).encode() + b"\n" + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Centroids:
        line, _, body = data.partition(b"\n")
        try:
            head = json.loads(line)
        except ValueError:
            head = {}
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise ValueError(f"not a centroid file (expected {FORMAT})")
        centres = np.frombuffer(body, dtype="<f4").astype(np.float32)
        if centres.size != head["shards"] * head["dim"]:
            raise ValueError("centroid file is truncated")
        shape = (head["shards"], head["dim"])
        return cls(centres.reshape(shape), head["seed"], head["fitted_on"])

    @property
    def version(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return f"centroids-{self.version}.bin"


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def fit(image_embs: np.ndarray, shards: int, seed: int = 0) -> Centroids:
    """k-means (k-means++ start, fixed seed) on the L2-normalised vectors."""
    from sklearn.cluster import KMeans  # only this command needs sklearn

    vectors = _unit(np.asarray(image_embs, dtype=np.float64))
    if shards < 1 or len(vectors) < shards:
        raise ValueError(f"fitting {shards} centroids needs at least {shards} samples")
    model = KMeans(n_clusters=shards, n_init=4, random_state=seed).fit(vectors)
    return Centroids(model.cluster_centers_.astype(np.float32), seed, len(vectors))


def shard_settings(settings: Settings, shard: int, shards: int) -> Settings:
    """The settings of one shard: its share of the budget (module docstring)."""
    share = settings.budget // shards + (1 if shard < settings.budget % shards else 0)
    return replace(settings, budget=share)


def shard_curator(base: Curator, shard: int, shards: int) -> Curator:
    """A curator for one shard: ``base``'s models and filters, its own selection state
    (gain index, image hashes, policy)."""
    curator = copy.copy(base)
    curator.settings = shard_settings(base.settings, shard, shards)
    curator.reset_selection()
    return curator


class ShardedCurator(Curator):
    """``Curator`` whose selection runs per shard; every other step is ``base``'s."""

    def __init__(self, base: Curator, centroids: Centroids) -> None:
        self.__dict__.update(base.__dict__)  # the same models, filters and label memory
        self.base = base
        self.centroids = centroids
        self.shards = [shard_curator(base, s, centroids.shards) for s in range(centroids.shards)]

    def reset_shard(self, shard: int) -> Curator:
        """A fresh curator (empty index and policy) for ``shard``, in place of the old one:
        a streaming worker that (re)gains a shard restores its state into it."""
        self.shards[shard] = shard_curator(self.base, shard, len(self.shards))
        return self.shards[shard]

    def route(self, item: Scored) -> int:
        return self.centroids.route(item.encoded.image_emb)

    def select(self, items: Sequence[Scored]) -> list[Outcome]:
        """Each shard selects its items in arrival order; outcomes in ``items`` order."""
        rows: dict[int, list[int]] = {}
        for row, item in enumerate(items):
            rows.setdefault(self.route(item), []).append(row)
        outcomes: list[Outcome | None] = [None] * len(items)
        for shard, members in sorted(rows.items()):
            selected = self.shards[shard].select([items[r] for r in members])
            for row, outcome in zip(members, selected, strict=True):
                outcomes[row] = outcome
        return outcomes  # type: ignore[return-value]
