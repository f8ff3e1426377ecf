"""Information gain of a sample: mean cosine distance to its k nearest earlier samples.

InfoGrowth (arXiv 2405.18347) scores each incoming sample by how far it lies from what is
already in the dataset: one hnswlib cosine-distance index per modality, the k nearest
neighbours of the sample among everything inserted before it, the mean of their cosine
distances per modality, and the arithmetic mean of the modalities (the official code
averages the image and text mean distances). The gain is computed once, before the sample
is inserted, so it depends on arrival order.

Batching does not change the result: a batch is scored as if its samples arrived one at a
time. The HNSW index is queried for the whole batch at once (it only holds earlier
batches), an exact pass finds neighbours among the earlier rows of the same batch, and the
two candidate lists are merged. This equals one-at-a-time scoring whenever HNSW returns
the true k nearest; where it misses one (rare at ef=32, more often on high intrinsic
dimension), batched and one-at-a-time gains of that sample can differ slightly.

Determinism: inserts use one thread, because hnswlib's parallel inserts build a different
graph on every run; the same inputs in the same batches give byte-identical gains.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import hnswlib
import numpy as np

from infogrowth.records import BadInput

MEANS = ("arithmetic", "geometric", "harmonic")
_MAGIC = b"IGGAIN01"
# Inner product on vectors we L2-normalise ourselves: the same distance as hnswlib's
# 'cosine' space (which normalises then uses ip), but hnswlib then stores our exact vectors,
# so get_vectors() -> rebuild() reproduces the index bit for bit.
_SPACE = "ip"
_FORMAT_VERSION = 1
_INITIAL_CAPACITY = 1024
# Rows scored per exact in-batch pass; bigger batches are split so that the (n, n) distance
# matrix stays small (1024^2 float32 = 4 MiB). Splitting does not change any gain.
_CHUNK = 1024
# Rows whose norm is already 1 within this are left as they are, so normalising is idempotent
# and vectors read back with get_vectors() rebuild the very same index.
_UNIT_TOL = 1e-6
# float32 dot products of equal unit vectors land within ~1e-7 of distance 0; snap such
# distances to exactly 0 so a duplicate is a duplicate (geometric/harmonic means hinge on it).
_ZERO_TOL = 1e-6
# The first EXACT_PREFIX samples are also searched exactly (one float32 GEMM), so an index of
# up to that many samples gives exact gains whatever the batching (HNSW alone can miss a
# neighbour, e.g. among many identical vectors, and which one depends on the graph it
# searches). Exact search is faster than HNSW at this size on two cores (shared/notes).
EXACT_PREFIX = 30_000
# Extra exact candidates per row: a float32 near-tie at the k-th place is settled by the
# float64 re-score rather than by GEMM rounding, which varies with batch shape.
_EXACT_MARGIN = 4
_PARAMS = ("modalities", "k", "m", "ef_construction", "ef", "mean", "seed", "query_threads")


@dataclass
class GainBatch:
    """Gains of one batch, in input order.

    ``gain`` is nan for a sample with no earlier neighbour (the very first one).
    ``neighbours``/``neighbour_labels`` follow the first modality's nearest-first order and
    hold fewer than k entries while the index holds fewer than k earlier samples.
    """

    gain: np.ndarray
    neighbours: list[list[str]]
    neighbour_labels: list[list[str | None]]
    modality_gains: dict[str, np.ndarray] = field(default_factory=dict)


class GainIndex:
    """Incremental kNN gain over one hnswlib cosine index per modality.

    Capacity grows on demand (doubling). Not thread-safe: one writer, as hnswlib requires.
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("image", "text"),
        k: int = 4,
        m: int = 48,
        ef_construction: int = 100,
        ef: int = 32,
        mean: str = "arithmetic",
        seed: int = 100,
        query_threads: int = -1,
    ) -> None:
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct and non-empty, got {modalities!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if mean not in MEANS:
            raise ValueError(f"mean must be one of {'|'.join(MEANS)}, got {mean!r}")
        self.modalities = tuple(modalities)
        self.k = int(k)
        self.m = int(m)
        self.ef_construction = int(ef_construction)
        self.ef = int(ef)
        self.mean = mean
        self.seed = int(seed)
        self.query_threads = int(query_threads)
        self.dims: dict[str, int] | None = None
        self._indices: dict[str, hnswlib.Index] = {}
        self._capacity = 0
        self._ids: list[str] = []
        self._labels: list[str | None] = []
        self._pos: dict[str, int] = {}
        self._prefix: dict[str, np.ndarray] = {}  # modality -> first EXACT_PREFIX vectors

    # --- container protocol ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._pos

    @property
    def ids(self) -> list[str]:
        """Sample ids in insertion order (a copy)."""
        return list(self._ids)

    @property
    def labels(self) -> list[str | None]:
        """Labels in insertion order (a copy)."""
        return list(self._labels)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor arguments; ``GainIndex(**index.params)`` makes an empty twin."""
        return {key: getattr(self, key) for key in _PARAMS}

    # --- scoring ---------------------------------------------------------------------------
    def gain_and_add(
        self,
        ids: Sequence[str],
        vectors: Mapping[str, np.ndarray],
        labels: Sequence[str | None] | None = None,
    ) -> GainBatch:
        """Score each sample against everything inserted before it, then insert it."""
        if len(ids) == 0:
            return _concat([], self.modalities)
        ids, labels, mats = self._validate(ids, vectors, labels)
        parts = [
            self._gain_and_add_chunk(ids[s : s + _CHUNK], labels[s : s + _CHUNK], mats, s)
            for s in range(0, len(ids), _CHUNK)
        ]
        return _concat(parts, self.modalities)

    def _gain_and_add_chunk(
        self,
        ids: list[str],
        labels: list[str | None],
        mats: dict[str, np.ndarray],
        start: int,
    ) -> GainBatch:
        chunk = {mod: x[start : start + len(ids)] for mod, x in mats.items()}
        per_mod: dict[str, np.ndarray] = {}
        first_pos: np.ndarray | None = None
        for mod in self.modalities:
            dist, pos = self._neighbours(mod, chunk[mod])
            per_mod[mod] = mean_distance(dist, self.mean)
            if first_pos is None:
                first_pos = pos
        self._insert(ids, labels, chunk)
        assert first_pos is not None
        neighbours = [[self._ids[p] for p in row if p >= 0] for row in first_pos.tolist()]
        neighbour_labels = [[self._labels[p] for p in row if p >= 0] for row in first_pos.tolist()]
        gain = np.mean(np.stack([per_mod[mod] for mod in self.modalities]), axis=0)
        return GainBatch(gain, neighbours, neighbour_labels, per_mod)

    def _neighbours(self, mod: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k nearest earlier samples of each row: (distances float64 nan-padded, positions -1).

        hnswlib (earlier batches) and an exact pass (earlier rows of this batch) propose
        candidates; their distances are then recomputed one way for all of them, so a
        gain does not depend on where the batch boundaries fell.
        """
        n0, n = len(self._ids), len(x)
        cand_p: list[np.ndarray] = []
        if n0 > 0 and mod in self._prefix:
            cand_p.append(self._exact_prefix(mod, x))
        if n0 > 0:
            labels, _ = self._indices[mod].knn_query(
                x, k=min(self.k, n0), num_threads=self.query_threads
            )
            cand_p.append(labels.astype(np.int64))
        if n > 1:
            in_batch = self._in_batch(x)
            cand_p.append(np.where(in_batch >= 0, in_batch + n0, -1))
        if not cand_p:
            return np.full((n, self.k), np.nan), np.full((n, self.k), -1, dtype=np.int64)
        pos = _first_occurrences(np.hstack(cand_p))
        return self._merge(self._exact_distances(mod, x, pos), pos)

    def _exact_prefix(self, mod: str, x: np.ndarray) -> np.ndarray:
        """Positions of the nearest stored samples among the first EXACT_PREFIX, by GEMM."""
        prefix = self._prefix[mod][: min(len(self._ids), EXACT_PREFIX)]
        kb = min(self.k + _EXACT_MARGIN, len(prefix))
        sim = x @ prefix.T
        return np.argpartition(-sim, kb - 1, axis=1)[:, :kb].astype(np.int64)

    def _in_batch(self, x: np.ndarray) -> np.ndarray:
        """Positions (within the batch) of the k nearest earlier rows; -1 where none exists."""
        n = len(x)
        kb = min(self.k, n - 1)
        sim = x @ x.T
        sim[_upper_mask(n)] = -np.inf  # only rows before i are "earlier"
        idx = np.argpartition(-sim, kb - 1, axis=1)[:, :kb]
        earlier = np.isfinite(np.take_along_axis(sim, idx, axis=1))
        return np.where(earlier, idx, -1).astype(np.int64)

    def _exact_distances(self, mod: str, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """1 − cos of each row and its candidates, inf where pos < 0. float32 products are
        exact in float64, and the float64 sum runs in the same order for every pair."""
        n0 = len(self._ids)
        flat = pos.ravel()
        stored, in_batch = (flat >= 0) & (flat < n0), flat >= n0
        others = np.zeros((flat.size, x.shape[1]), dtype=np.float64)
        if stored.any():
            others[stored] = self._indices[mod].get_items(flat[stored])
        others[in_batch] = x[flat[in_batch] - n0]
        rows = np.repeat(x.astype(np.float64), pos.shape[1], axis=0)
        dist = 1.0 - (rows * others).sum(axis=1)
        dist[flat < 0] = np.inf
        return dist.reshape(pos.shape)

    def _merge(self, dist: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep the k smallest candidates per row, nan/-1 padded to k columns."""
        order = np.argsort(dist, axis=1, kind="stable")[:, : self.k]
        dist = np.take_along_axis(dist, order, axis=1)
        pos = np.take_along_axis(pos, order, axis=1)
        missing = self.k - dist.shape[1]
        if missing > 0:
            dist = np.pad(dist, ((0, 0), (0, missing)), constant_values=np.inf)
            pos = np.pad(pos, ((0, 0), (0, missing)), constant_values=-1)
        invalid = ~np.isfinite(dist)
        dist = np.clip(dist, 0.0, 2.0)
        dist[dist < _ZERO_TOL] = 0.0
        dist[invalid] = np.nan
        pos[invalid] = -1
        return dist, pos

    # --- inserting -------------------------------------------------------------------------
    def _insert(
        self, ids: list[str], labels: list[str | None], mats: dict[str, np.ndarray]
    ) -> None:
        if not self._indices:
            self._create({mod: mats[mod].shape[1] for mod in self.modalities})
        n0, n = len(self._ids), len(ids)
        self._reserve(n0 + n)
        positions = np.arange(n0, n0 + n, dtype=np.int64)
        for mod in self.modalities:
            self._indices[mod].add_items(mats[mod], positions, num_threads=1)
            self._keep_prefix(mod, mats[mod], n0)
        self._pos.update(zip(ids, range(n0, n0 + n), strict=True))
        self._ids.extend(ids)
        self._labels.extend(labels)

    def _keep_prefix(self, mod: str, x: np.ndarray, n0: int) -> None:
        """Copies rows n0… of ``x`` into the exact-search prefix (grown by doubling)."""
        take = x[: max(0, EXACT_PREFIX - n0)]
        if len(take) == 0:
            return
        buf = self._prefix.get(mod)
        if buf is None or len(buf) < n0 + len(take):
            size = min(EXACT_PREFIX, max(2 * (0 if buf is None else len(buf)), n0 + len(take)))
            grown = np.empty((size, x.shape[1]), np.float32)
            if buf is not None:
                grown[:n0] = buf[:n0]
            self._prefix[mod] = buf = grown
        buf[n0 : n0 + len(take)] = take

    def _create(self, dims: dict[str, int]) -> None:
        self.dims = dict(dims)
        self._capacity = _INITIAL_CAPACITY
        for mod in self.modalities:
            index = hnswlib.Index(space=_SPACE, dim=dims[mod])
            index.init_index(
                max_elements=self._capacity,
                M=self.m,
                ef_construction=self.ef_construction,
                random_seed=self.seed,
            )
            index.set_ef(self.ef)
            self._indices[mod] = index

    def _reserve(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        capacity = max(self._capacity * 2, needed)
        for index in self._indices.values():
            index.resize_index(capacity)
        self._capacity = capacity

    # --- validation ------------------------------------------------------------------------
    def _validate(
        self,
        ids: Sequence[str],
        vectors: Mapping[str, np.ndarray],
        labels: Sequence[str | None] | None,
    ) -> tuple[list[str], list[str | None], dict[str, np.ndarray]]:
        ids = [str(i) for i in ids]
        n = len(ids)
        if len(set(ids)) != n:
            raise ValueError("duplicate sample ids inside the batch")
        known = [i for i in ids if i in self._pos]
        if known:
            raise ValueError(f"sample id already in the index: {known[0]!r}")
        labels = [None] * n if labels is None else list(labels)
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} ids")
        if set(vectors) != set(self.modalities):
            raise ValueError(f"vectors must have keys {self.modalities}, got {tuple(vectors)}")
        mats = {mod: self._normalise(mod, vectors[mod], ids) for mod in self.modalities}
        return ids, labels, mats

    def _normalise(self, mod: str, vectors: np.ndarray, ids: list[str]) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(ids):
            raise ValueError(f"{mod} vectors must be ({len(ids)}, d), got {x.shape}")
        if self.dims is not None and x.shape[1] != self.dims[mod]:
            raise ValueError(f"{mod} vectors must have {self.dims[mod]} dims, got {x.shape[1]}")
        norms = np.linalg.norm(x.astype(np.float64), axis=1)
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():
            raise BadInput(f"{mod} embedding of {ids[int(np.argmax(bad))]!r} is zero or not finite")
        norms[np.abs(norms - 1.0) <= _UNIT_TOL] = 1.0
        return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)

    # --- stored embeddings -----------------------------------------------------------------
    def get_vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored (L2-normalised, float32) vectors of ``ids``, per modality."""
        positions = [self._pos[i] for i in ids]
        if not positions:
            return {
                mod: np.zeros((0, (self.dims or {}).get(mod, 0)), np.float32)
                for mod in self.modalities
            }
        return {
            mod: np.asarray(self._indices[mod].get_items(positions), dtype=np.float32)
            for mod in self.modalities
        }

    @classmethod
    def rebuild(
        cls,
        ids: Sequence[str],
        vectors: Mapping[str, np.ndarray],
        labels: Sequence[str | None] | None = None,
        **params: Any,
    ) -> GainIndex:
        """Re-insert stored embeddings in their original order, without scoring them.

        Same order + same params (seed) + serial inserts rebuild the very same graph, so
        future gains are byte-identical to those of the original index.
        """
        index = cls(**params)
        ids, labels, mats = index._validate(ids, vectors, labels)
        if ids:
            index._insert(ids, labels, mats)
        return index

    # --- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index atomically (temp file + rename) to ``path``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            self._write(fh)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GainIndex:
        with open(path, "rb") as fh:
            return cls._read(fh)

    def to_bytes(self) -> bytes:
        """One self-contained blob: settings, ids, labels and every hnswlib index."""
        buf = io.BytesIO()
        self._write(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> GainIndex:
        """Restore ``to_bytes()``.

        The graph is restored as it was, but hnswlib does not persist the state of its
        level generator: samples inserted after a load get other random levels than in the
        original, so later gains are equal whenever the HNSW search returns the exact
        top-k (almost always at ef=32), not guaranteed byte for byte. ``rebuild`` from the
        stored embeddings is the exact (slower) restore.
        """
        return cls._read(io.BytesIO(blob))

    def _write(self, fh: BinaryIO) -> None:
        header = {
            "format_version": _FORMAT_VERSION,
            **self.params,
            "modalities": list(self.modalities),
            "dims": self.dims,
            "capacity": self._capacity,
            "ids": self._ids,
            "labels": self._labels,
        }
        _write_part(fh, json.dumps(header).encode("utf-8"), magic=True)
        for mod in self.modalities if self._indices else ():
            _write_part(fh, _index_bytes(self._indices[mod]))

    @classmethod
    def _read(cls, fh: BinaryIO) -> GainIndex:
        header = json.loads(_read_part(fh, magic=True))
        if header.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported gain index format {header.get('format_version')}")
        params = {key: header[key] for key in _PARAMS}
        index = cls(**params)
        if header["dims"] is None:
            return index
        index.dims = {str(k): int(v) for k, v in header["dims"].items()}
        index._capacity = max(int(header["capacity"]), len(header["ids"]))
        for mod in index.modalities:
            index._indices[mod] = _index_from_bytes(
                _read_part(fh), index.dims[mod], index._capacity, index.ef
            )
        index._ids = list(header["ids"])
        index._labels = list(header["labels"])
        index._pos = {sample_id: i for i, sample_id in enumerate(index._ids)}
        head = list(range(min(len(index._ids), EXACT_PREFIX)))
        for mod in index.modalities:
            stored = np.asarray(index._indices[mod].get_items(head), dtype=np.float32)
            index._keep_prefix(mod, stored.reshape(len(head), index.dims[mod]), 0)
        return index


def _first_occurrences(pos: np.ndarray) -> np.ndarray:
    """``pos`` with each row's repeated positions (found by two searches) set to -1."""
    order = np.argsort(pos, axis=1, kind="stable")
    ranked = np.take_along_axis(pos, order, axis=1)
    repeat = np.zeros(pos.shape, dtype=bool)
    repeat[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    out = pos.copy()
    np.put_along_axis(out, order, np.where(repeat, -1, ranked), axis=1)
    return out


@functools.lru_cache(maxsize=4)
def _upper_mask(n: int) -> np.ndarray:
    """(n, n) boolean mask of the diagonal and above."""
    mask = np.triu(np.ones((n, n), dtype=bool))
    mask.flags.writeable = False
    return mask


def mean_distance(dist: np.ndarray, kind: str = "arithmetic") -> np.ndarray:
    """Row-wise mean of nan-padded distances; nan for a row with no distance at all.

    geometric and harmonic are 0 as soon as one distance is 0 (an exact duplicate): the
    limits of exp(mean(log d)) and n / sum(1/d) as d -> 0, taken on purpose.
    """
    valid = ~np.isnan(dist)
    count = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "arithmetic":
            out = np.where(valid, dist, 0.0).sum(axis=1) / count
        elif kind == "geometric":
            out = np.exp(np.where(valid, np.log(dist), 0.0).sum(axis=1) / count)
        elif kind == "harmonic":
            out = count / np.where(valid, 1.0 / dist, 0.0).sum(axis=1)
        else:
            raise ValueError(f"mean must be one of {'|'.join(MEANS)}, got {kind!r}")
    return np.where(count > 0, out, np.nan).astype(np.float64)


def _concat(parts: list[GainBatch], modalities: tuple[str, ...]) -> GainBatch:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.zeros(0, dtype=np.float64)
        return GainBatch(empty, [], [], {mod: empty.copy() for mod in modalities})
    return GainBatch(
        np.concatenate([p.gain for p in parts]),
        [row for p in parts for row in p.neighbours],
        [row for p in parts for row in p.neighbour_labels],
        {mod: np.concatenate([p.modality_gains[mod] for p in parts]) for mod in modalities},
    )


def _write_part(fh: BinaryIO, data: bytes, magic: bool = False) -> None:
    if magic:
        fh.write(_MAGIC)
    fh.write(struct.pack("<Q", len(data)))
    fh.write(data)


def _read_part(fh: BinaryIO, magic: bool = False) -> bytes:
    if magic and fh.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not a gain index blob (bad magic)")
    raw = fh.read(8)
    if len(raw) != 8:
        raise ValueError("truncated gain index blob")
    (size,) = struct.unpack("<Q", raw)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("truncated gain index blob")
    return data


def _index_bytes(index: hnswlib.Index) -> bytes:
    # hnswlib only saves to a path; its binary format is compact (no pickle of numpy arrays).
    with tempfile.TemporaryDirectory(prefix="gainindex-") as tmp:
        path = os.path.join(tmp, "index.bin")
        index.save_index(path)
        return Path(path).read_bytes()


def _index_from_bytes(data: bytes, dim: int, capacity: int, ef: int) -> hnswlib.Index:
    with tempfile.TemporaryDirectory(prefix="gainindex-") as tmp:
        path = os.path.join(tmp, "index.bin")
        Path(path).write_bytes(data)
        index = hnswlib.Index(space=_SPACE, dim=dim)
        index.load_index(path, max_elements=capacity)
    index.set_ef(ef)  # ef is not part of hnswlib's file format
    return index
