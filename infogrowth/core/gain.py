"""Information gain of a sample: mean cosine distance to its k nearest earlier samples.

InfoGrowth (arXiv 2405.18347) scores each incoming sample by how far it lies from what is
already in the dataset: one hnswlib cosine-distance index per modality, the k nearest
neighbours of the sample among everything inserted before it, the mean of their cosine
distances per modality, and the arithmetic mean of the modalities (the official code
averages the image and text mean distances). The gain is computed once, before the sample
is inserted, so it depends on arrival order.

A caller's ``decide`` hook sees each sample's gain and nearest neighbours and says whether
it enters the index and which earlier samples leave it (hnswlib ``mark_deleted``): the
curator indexes only the samples it keeps, so gains are measured against the curated set.

Batching does not change the result: a batch is scored as if its samples arrived one at a
time. For the whole batch at once: the k nearest among the samples stored before it (an
exact search of the stored vectors, core/exact.py, while the index holds no more than
``exact_limit`` samples, EXACT_PREFIX by default; else one parallel hnswlib query), each
row's most similar earlier rows of the batch (the k most similar in float32 and any within
float32's error of the k-th: ``_within``), the distances of all those candidates, and
each row's k nearest assuming every earlier row of the batch is kept. Distances are float64
re-scores of the vectors (GEMM rounding varies with the batch's shape; a re-score does not,
so ties and rounding cannot change the k nearest), except those of hnswlib's candidates past
the limit: hnswlib's own float32 distance, which depends on the two vectors alone and is the
same in any batch (fetching the vector back from hnswlib 0.8.0 costs ~15 us, more than the
search's share). The rows are then walked in order for ``decide``: a row takes that answer
as it is (with no ``decide`` hook the whole batch is kept and no row is walked at all)
unless a decision touched it (an earlier row of the batch in that answer was not kept or
was removed, one of its stored candidates was removed); then it is recomputed alone. Both give
the same bits (tests/test_gain.py compares them with the fast walk switched off). Kept rows
are stored in arrival order, and removals noted where they happen. The first batch that
finds more than ``exact_limit`` samples stored builds the HNSW graphs from them (serial
inserts in that order, each removal replayed in its place; a one-off pause: 15 s for 10^5
samples x 512-d on the 2-core VM, 17 s for two modalities side by side, while the store
and the graphs are both in memory) and the exact store goes; from then on each batch's kept
rows enter hnswlib in one serial add_items call, split at removals. Either way a graph is
that of one-at-a-time inserts whatever the batching (``rebuild`` replays the same order).

Exactness: while the index holds at most ``exact_limit`` samples, gains are exact (the k
nearest of a float64 brute-force scan, ties to the earliest sample) and byte-identical in
any batching. Past that, the stored candidates are
hnswlib's: gains equal one-at-a-time scoring whenever HNSW returns the true k nearest, and
differ from a float64 brute-force scan by float32 rounding (~1e-7).
``bench/gain_bench.py`` measures recall@4 and the gain error against numpy brute force; the
defaults (M=16, ef_construction=64, ef=128) reach recall@4 0.9993 past 30k on its default
100k x 512 set of 1,000 clusters (99.9% of gains exact), but 0.995 and 0.968 on sets of 100
and 10,000 clusters, where a missed neighbour is mostly one at almost the same distance (93%
of gains exact and a mean error of 7e-4 at worst); the worst single gains are off by 0.5-0.7
(a whole neighbourhood missed). Recall@4 of the hnswlib candidates alone on the default set,
past 30k (2026-11-23): M=16/efC=64 0.9982 at ef=64, 0.9991 at ef=96, 0.9993 at ef=128;
M=16/efC=96 0.9992 at ef=48 but inserts ~1.5x slower; efC=40 (M=16) or M=12/efC=48 stay
below 0.993 even at ef=128.

Determinism: each modality's inserts use one thread, because hnswlib's parallel inserts
build a different graph on every run; they run on background threads (one per modality,
side by side; hnswlib releases the GIL) and every hnswlib read waits for them, so they
overlap the caller's work but never a search; the same inputs in the same batches give
byte-identical gains.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import hnswlib
import numpy as np
from threadpoolctl import ThreadpoolController

from infogrowth.core.exact import ExactVectors, float32_dot_error
from infogrowth.records import BadInput

log = logging.getLogger(__name__)

MEANS = ("arithmetic", "geometric", "harmonic")
_MAGIC = b"IGGAIN01"
# Inner product on vectors we L2-normalise ourselves: the same distance as hnswlib's
# 'cosine' space (which normalises then uses ip), but hnswlib then stores our exact vectors,
# so get_vectors() -> rebuild() reproduces the index bit for bit.
_SPACE = "ip"
# 2: the exact store and its removals until the graphs exist (1: always the graphs)
_FORMAT_VERSION = 2
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
# An index of up to EXACT_PREFIX samples is searched exactly (core/exact.py), and has no HNSW
# graphs: exact gains whatever the batching (HNSW can miss a neighbour, e.g. among many
# identical vectors, and which one depends on the graph it searches), in the memory of the
# float32 vectors alone. On the 2-core VM (AMX) the exact scan of a batch of 256 costs about
# an HNSW search plus insert at ~EXACT_PREFIX samples (README, gain_bench).
EXACT_PREFIX = 100_000
# The limit of indexes saved, and of runs recorded, before it was a parameter (2026-12-06):
# they keep it, so their replays and later gains stay byte-identical.
LEGACY_EXACT_PREFIX = 30_000
# Rows per hnswlib insert call when the graphs are built from the exact store (bounds the
# float32 copy handed to hnswlib; the calls run one after the other: the same graph).
_BUILD_ROWS = 8192
# Rows walk with the batch's optimistic answers until a decision touches them (tests switch
# this off to compare with the row-by-row walk, which must give the same bits).
_FAST_WALK = True
_PARAMS = (
    "modalities", "k", "m", "ef_construction", "ef", "mean", "seed", "query_threads",
    "exact_limit",
)  # fmt: skip


@dataclass(frozen=True)
class Neighbour:
    """The nearest earlier live sample in one modality and its cosine distance (1 − cos)."""

    id: str
    distance: float


@dataclass(frozen=True)
class Verdict:
    """What ``decide`` says about one sample: does it enter the index, which samples leave."""

    insert: bool = True
    remove: Sequence[str] = ()


# decide(row in the batch, gain or None, nearest neighbour per modality,
#        labels of the k nearest in the first modality) -> Verdict
Decide = Callable[[int, "float | None", "dict[str, Neighbour | None]", "list[str | None]"], Verdict]


def _insert_all(row: int, gain: float | None, *_: object) -> Verdict:
    return Verdict()


def _rows_from(start: int, decide: Decide) -> Decide:
    """``decide`` for a chunk of a batch that starts at row ``start``: it is told each row's
    place in the whole batch. Until 2026-12-07 it was told the row's place in its chunk of
    _CHUNK rows, so a batch of more than 1,024 samples (the curator's gate releasing a long
    wait at once) had the second chunk's rows decided as the first chunk's samples."""
    if start == 0 or decide is _insert_all:  # _insert_all: the walk's fast path
        return decide

    def shifted(row: int, *rest: Any) -> Verdict:  # gain, nearest, labels as given
        return decide(start + row, *rest)

    return shifted


@dataclass
class GainBatch:
    """Gains of one batch, in input order.

    ``gain`` is nan for a sample with no earlier neighbour (the very first one).
    ``neighbours``/``neighbour_labels`` follow the first modality's nearest-first order and
    hold fewer than k entries while the index holds fewer than k earlier samples.
    ``nearest[modality][i]`` is sample i's nearest earlier live sample (None if none);
    ``inserted[i]`` whether sample i entered the index.
    """

    gain: np.ndarray
    neighbours: list[list[str]]
    neighbour_labels: list[list[str | None]]
    modality_gains: dict[str, np.ndarray] = field(default_factory=dict)
    nearest: dict[str, list[Neighbour | None]] = field(default_factory=dict)
    inserted: list[bool] = field(default_factory=list)


@dataclass
class _Row:
    gain: float
    neighbours: list[str]
    neighbour_labels: list[str | None]
    modality_gains: dict[str, float]
    nearest: dict[str, Neighbour | None]
    inserted: bool = True


class GainIndex:
    """Incremental kNN gain over one hnswlib cosine index per modality.

    Capacity grows on demand (doubling). Not thread-safe: one writer, as hnswlib requires.
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("image", "text"),
        k: int = 4,
        m: int = 16,
        ef_construction: int = 64,
        ef: int = 128,
        mean: str = "arithmetic",
        seed: int = 100,
        query_threads: int = -1,
        exact_limit: int | None = None,
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
        # exact search up to this many samples stored, then HNSW (default EXACT_PREFIX)
        self.exact_limit = EXACT_PREFIX if exact_limit is None else int(exact_limit)
        self.dims: dict[str, int] | None = None
        self._indices: dict[str, hnswlib.Index] = {}
        self._capacity = 0
        self._ids: list[str] = []
        self._labels: list[str | None] = []
        self._pos: dict[str, int] = {}
        self._deleted: set[int] = set()  # positions taken out of the search (remove)
        self._stored = 0  # positions 0.._stored-1 are stored (in hnswlib: or on their way)
        self._pending: list[Future[None]] = []  # inserts running on the inserter threads
        # modality -> every stored vector, while the index holds at most exact_limit
        self._exact: dict[str, ExactVectors] = {}
        # (samples stored, position) of each removal before the HNSW graphs exist: their
        # build replays them where they happened
        self._removals: list[tuple[int, int]] = []
        self._gone: np.ndarray | None = None  # _deleted sorted, for the exact search

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
        decide: Decide | None = None,
    ) -> GainBatch:
        """Score each sample against the live samples inserted before it, then insert it.

        ``decide`` (default: insert everything) sees each sample's gain and nearest
        neighbours in arrival order and says whether it enters the index and which earlier
        samples leave it; later samples of the batch see that decision, as if they came
        one at a time.
        """
        if len(ids) == 0:
            return _concat([], self.modalities)
        ids, labels, mats = self._validate(ids, vectors, labels)
        decide = decide or _insert_all
        parts = [
            self._gain_and_add_chunk(
                ids[s : s + _CHUNK], labels[s : s + _CHUNK], mats, s, _rows_from(s, decide)
            )
            for s in range(0, len(ids), _CHUNK)
        ]
        return _concat(parts, self.modalities)

    def remove(self, ids: Iterable[str]) -> None:
        """Take samples out of the neighbour search (hnswlib mark_deleted); ids stay known."""
        for sample_id in ids:
            pos = self._pos[sample_id]
            if pos in self._deleted:
                continue
            if self._indices:
                for mod in self.modalities:
                    self._hnsw(mod).mark_deleted(pos)
            else:
                self._removals.append((self._stored, pos))
            self._deleted.add(pos)
            self._gone = None

    def sync(self) -> None:
        """Waits until every inserted sample is in hnswlib (inserts run in the background;
        every read waits for them anyway: this is for timing and shutdown)."""
        self._drain()

    @property
    def live(self) -> int:
        """Samples a neighbour search can return (inserted minus removed)."""
        return len(self._ids) - len(self._deleted)

    def _gain_and_add_chunk(
        self,
        ids: list[str],
        labels: list[str | None],
        mats: dict[str, np.ndarray],
        start: int,
        decide: Decide,
    ) -> GainBatch:
        chunk = {mod: x[start : start + len(ids)] for mod, x in mats.items()}
        # the caller's thread and the cores the insert threads (one per modality) leave
        inserters = len(self.modalities) if self._indices else 0
        with _blas_threads(_CORES - inserters + 1):
            return self._walk_chunk(chunk, ids, labels, decide)

    def _walk_chunk(
        self,
        chunk: dict[str, np.ndarray],
        ids: list[str],
        labels: list[str | None],
        decide: Decide,
    ) -> GainBatch:
        walk = _BatchWalk(self, chunk)
        try:
            if decide is _insert_all and _FAST_WALK:
                self._insert_every_row(walk, ids, labels)  # inserts overlap the output lists
                return self._optimistic(walk, ids, labels)
            batch = self._optimistic(walk, ids, labels)
            clean = True  # every row so far kept, nothing removed: every answer holds
            for i in range(len(ids)):
                # A row whose answer no decision touched takes it as it is, also after
                # other rows were dropped (until 2026-12-06 every row after a drop was
                # walked alone: 12,000 clustered samples, 83% rejected, walked 10,875 rows
                # alone, now 2,058, and select took ~200 instead of ~160 us a sample)
                if _FAST_WALK and (clean or walk.holds(i)):
                    nearest = {mod: batch.nearest[mod][i] for mod in self.modalities}
                    gain = float(batch.gain[i])
                    verdict = decide(
                        i, None if math.isnan(gain) else gain, nearest, batch.neighbour_labels[i]
                    )
                    self._apply(walk, i, ids, labels, verdict)
                    batch.inserted[i] = verdict.insert
                    clean = clean and verdict.insert and not verdict.remove
                else:
                    _put_row(batch, i, self._walk_row(walk, i, ids, labels, decide))
            return batch
        finally:
            walk.flush()

    def _insert_every_row(self, walk: _BatchWalk, ids: list[str], labels: list[str | None]) -> None:
        """``_apply`` of an insert-everything verdict to every row, in one go."""
        first = len(self._ids)
        self._pos.update(zip(ids, range(first, first + len(ids)), strict=True))
        self._ids.extend(ids)
        self._labels.extend(labels)
        walk.inserted_all()
        walk.flush()

    def _optimistic(self, walk: _BatchWalk, ids: list[str], labels: list[str | None]) -> GainBatch:
        """Every row's output assuming every row of the batch is kept and nothing is removed
        (then the answers of ``_BatchWalk`` hold as they are and row j sits at n0 + j)."""
        n0, known_ids, known_labels = walk.n0, self._ids, self._labels

        def id_of(p: int) -> str:
            return known_ids[p] if p < n0 else ids[p - n0]

        first = walk.fast[self.modalities[0]].pos.tolist()
        neighbour_labels = [
            [known_labels[p] if p < n0 else labels[p - n0] for p in row if p >= 0] for row in first
        ]
        nearest: dict[str, list[Neighbour | None]] = {}
        for mod in self.modalities:
            dist, pos = walk.fast[mod].dist[:, 0].tolist(), walk.fast[mod].pos[:, 0].tolist()
            nearest[mod] = [
                Neighbour(id_of(p), d) if p >= 0 else None for d, p in zip(dist, pos, strict=True)
            ]
        means = {mod: walk.fast[mod].mean.copy() for mod in self.modalities}
        return GainBatch(
            _mean_of_modalities(np.stack(list(means.values()))),
            [[id_of(p) for p in row if p >= 0] for row in first],
            neighbour_labels,
            means,
            nearest,
            [True] * len(ids),
        )

    def _walk_row(
        self,
        walk: _BatchWalk,
        i: int,
        ids: list[str],
        labels: list[str | None],
        decide: Decide,
    ) -> _Row:
        """Row i alone, after decisions that touched the batch's optimistic answers."""
        per_mod = {mod: walk.neighbours(mod, i) for mod in self.modalities}
        dists = {mod: mean for mod, (_, _, mean) in per_mod.items()}
        gain = float(_mean_of_modalities(np.array([[dists[mod]] for mod in self.modalities]))[0])
        nearest = {mod: self._nearest(d, pos) for mod, (d, pos, _) in per_mod.items()}
        first = [int(p) for p in per_mod[self.modalities[0]][1] if p >= 0]
        row = _Row(
            gain=gain,
            neighbours=[self._ids[p] for p in first],
            neighbour_labels=[self._labels[p] for p in first],
            modality_gains=dists,
            nearest=nearest,
        )
        verdict = decide(i, None if math.isnan(gain) else gain, nearest, row.neighbour_labels)
        self._apply(walk, i, ids, labels, verdict)
        row.inserted = verdict.insert
        return row

    def _apply(
        self, walk: _BatchWalk, i: int, ids: list[str], labels: list[str | None], verdict: Verdict
    ) -> None:
        if verdict.insert:
            walk.inserted(i, self._register(ids[i], labels[i]))
        if verdict.remove:
            walk.remove(verdict.remove)

    def _nearest(self, dist: np.ndarray, pos: np.ndarray) -> Neighbour | None:
        if pos[0] < 0:
            return None
        return Neighbour(self._ids[int(pos[0])], float(dist[0]))

    def _merge(self, dist: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k smallest candidates of one row, nearest first (ties: earliest inserted),
        nan/-1 padded to k entries; ``pos`` must be ascending."""
        order = np.argsort(dist, kind="stable")[: self.k]
        dist, pos = _finish(dist[order][None, :], pos[order][None, :], self.k)
        return dist[0], pos[0]

    # --- inserting -------------------------------------------------------------------------
    def _register(self, sample_id: str, label: str | None) -> int:
        """Gives a sample its position; its vectors are stored with ``_append``."""
        pos = len(self._ids)
        self._pos[sample_id] = pos
        self._ids.append(sample_id)
        self._labels.append(label)
        return pos

    def _append(self, x: Mapping[str, np.ndarray], first: int) -> None:
        """Stores rows of ``x`` (registered at positions first, first+1, …): in the exact
        store while there is one, and in hnswlib once its graphs exist, in order and on one
        thread per modality, so each graph is that of one-at-a-time inserts (the
        modalities' graphs are independent, so they are built side by side)."""
        n = len(next(iter(x.values())))
        if n == 0:
            return
        self._drain()
        if self.dims is None:
            self.dims = {mod: x[mod].shape[1] for mod in self.modalities}
            self._exact = {mod: ExactVectors(dim) for mod, dim in self.dims.items()}
        for store in self._exact.values():
            assert store.count == first, "the exact store holds every position before these"
        for mod, store in self._exact.items():
            store.append(x[mod])
        self._stored = first + n
        if self._indices:
            self._insert(x, first)

    def _insert(self, x: Mapping[str, np.ndarray], first: int) -> None:
        """hnswlib inserts of rows of ``x`` at positions first…, in the background."""
        n = len(next(iter(x.values())))
        self._drain()
        self._reserve(first + n)
        positions = np.arange(first, first + n)
        pool = _inserter(self)  # one task per modality: their graphs are independent
        self._pending = [
            pool.submit(self._add_items, mod, x[mod], positions) for mod in self.modalities
        ]

    def _add_items(self, mod: str, x: np.ndarray, positions: np.ndarray) -> None:
        self._indices[mod].add_items(x, positions, num_threads=1)

    def _hnsw(self, mod: str) -> hnswlib.Index:
        """The modality's hnswlib index, once the background inserts have finished."""
        self._drain()
        return self._indices[mod]

    def _drain(self) -> None:
        """Waits for the inserts running in the background (and raises their error)."""
        pending, self._pending = self._pending, []
        wait(pending)  # all of them, even when one failed: none may still be writing
        for insert in pending:
            insert.result()

    def _exact_search(self, mod: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Per row of ``x``, the positions of its k nearest live stored samples, exact
        (core/exact.py; -1 padded), and their float64 distances (inf for -1). None if the
        index is empty."""
        store = self._exact.get(mod)
        if store is None or self._stored == 0:
            return None
        if self._gone is None:
            self._gone = np.fromiter(sorted(self._deleted), np.int64, len(self._deleted))
        return store.nearest(x, self.k, self._stored, self._gone)

    def _build(self) -> None:
        """The HNSW graphs of every stored sample, once the index outgrows ``exact_limit``:
        serial inserts in order, each removal where it happened, so the graphs are those of
        one-at-a-time inserts (as ``rebuild`` makes them); then the exact store goes."""
        if self._indices or self.dims is None:
            self._exact, self._removals = {}, []
            return
        self._capacity = _INITIAL_CAPACITY
        while self._capacity < self._stored:
            self._capacity *= 2
        self._create(self.dims)
        log.info("gain index: building the HNSW graphs of %d samples", self._stored)
        marks = [*self._removals, (self._stored, -1)]
        start = 0
        for stored, pos in marks:
            for s in range(start, stored, _BUILD_ROWS):
                rows = np.arange(s, min(stored, s + _BUILD_ROWS))
                self._insert({mod: e.rows(rows) for mod, e in self._exact.items()}, s)
            start = max(start, stored)
            if pos >= 0:
                for mod in self.modalities:
                    self._hnsw(mod).mark_deleted(pos)
        self._drain()
        self._exact, self._removals = {}, []

    def _query(self, mod: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """hnswlib's k nearest live stored samples of each row of ``x`` and their distances
        (None if none)."""
        live = self._stored - len(self._deleted)
        if live <= 0:
            return None
        index = self._hnsw(mod)
        pos, dist = index.knn_query(x, k=min(self.k, live), num_threads=self.query_threads)
        return pos.astype(np.int64), dist.astype(np.float64)

    def _create(self, dims: dict[str, int]) -> None:
        """Empty hnswlib indices of ``self._capacity`` samples."""
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
        self._drain()
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
        """The stored (L2-normalised, float32) vectors of ``ids``, per modality, removed
        samples included."""
        positions = [self._pos[i] for i in ids]
        if not positions:
            return {
                mod: np.zeros((0, (self.dims or {}).get(mod, 0)), np.float32)
                for mod in self.modalities
            }
        return {mod: self._items(mod, positions) for mod in self.modalities}

    def _items(self, mod: str, positions: list[int]) -> np.ndarray:
        if mod in self._exact:
            return self._exact[mod].rows(positions)
        # hnswlib hides removed items from get_items too; the flag alone changes no graph edge.
        hidden = sorted(self._deleted.intersection(positions))
        index = self._hnsw(mod)
        for pos in hidden:
            index.unmark_deleted(pos)
        try:
            return np.asarray(index.get_items(positions), dtype=np.float32)
        finally:
            for pos in hidden:
                index.mark_deleted(pos)

    @classmethod
    def rebuild(
        cls,
        ids: Sequence[str],
        vectors: Mapping[str, np.ndarray],
        labels: Sequence[str | None] | None = None,
        removals: Mapping[str, Sequence[str]] | None = None,
        **params: Any,
    ) -> GainIndex:
        """Re-insert stored embeddings in their original order, without scoring them;
        ``removals[id]`` are the samples removed right after ``id`` was inserted.

        Same order + same removals + same params (seed) + serial inserts rebuild the very
        same graph, so future gains are byte-identical to those of the original index.
        """
        index = cls(**params)
        index.insert_stored(ids, vectors, labels, removals)
        return index

    def insert_stored(
        self,
        ids: Sequence[str],
        vectors: Mapping[str, np.ndarray],
        labels: Sequence[str | None] | None = None,
        removals: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``rebuild``'s inserts, after the samples already here (a snapshot's tail)."""
        ids, labels, mats = self._validate(ids, vectors, labels)
        removals = removals or {}
        first, start = len(self._ids), 0
        for row, (sample_id, label) in enumerate(zip(ids, labels, strict=True)):
            self._register(sample_id, label)
            gone = removals.get(sample_id, ())
            if gone or row == len(ids) - 1:  # one add_items per run of rows between removals
                self._append({mod: x[start : row + 1] for mod, x in mats.items()}, first + start)
                self.remove(gone)
                start = row + 1

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
        """Restore ``to_bytes()``: the graphs as they were, and their level generators where
        they were (hnswlib does not save them; ``_with_levels_continued``), so samples
        inserted later get the levels they would have got in the saved index and future
        gains are byte-identical, as after ``rebuild`` (the slower restore, from the stored
        embeddings)."""
        return cls._read(io.BytesIO(blob))

    def _write(self, fh: BinaryIO) -> None:
        graphs = bool(self._indices)
        header = {
            "format_version": _FORMAT_VERSION,
            **self.params,
            "modalities": list(self.modalities),
            "dims": self.dims,
            "capacity": self._capacity,
            "ids": self._ids,
            "labels": self._labels,
            "deleted": sorted(self._deleted),
            "graphs": graphs,
            "removals": [] if graphs else self._removals,
        }
        _write_part(fh, json.dumps(header).encode("utf-8"), magic=True)
        for mod in self.modalities if self.dims else ():
            if graphs:
                _write_part(fh, _index_bytes(self._hnsw(mod)))
            else:
                for part in self._exact[mod].to_parts():
                    _write_part(fh, part)

    @classmethod
    def _read(cls, fh: BinaryIO) -> GainIndex:
        header = json.loads(_read_part(fh, magic=True))
        version = header.get("format_version")
        if version not in (1, _FORMAT_VERSION):
            raise ValueError(f"unsupported gain index format {version}")
        params = {key: header[key] for key in _PARAMS if key != "exact_limit"}
        params["exact_limit"] = header.get("exact_limit", LEGACY_EXACT_PREFIX)
        index = cls(**params)
        if header["dims"] is None:
            return index
        index.dims = {str(k): int(v) for k, v in header["dims"].items()}
        index._ids = list(header["ids"])
        index._labels = list(header["labels"])
        index._pos = {sample_id: i for i, sample_id in enumerate(index._ids)}
        index._deleted = set(header.get("deleted", []))
        index._stored = len(index._ids)
        if not header.get("graphs", True):
            index._removals = [(int(at), int(pos)) for at, pos in header["removals"]]
            for mod in index.modalities:
                high, low = _read_part(fh), _read_part(fh)
                index._exact[mod] = ExactVectors.from_parts(index.dims[mod], high, low)
            return index
        index._capacity = max(int(header["capacity"]), len(header["ids"]))
        for mod in index.modalities:
            index._indices[mod] = _index_from_bytes(
                _read_part(fh), index.dims[mod], index._capacity, index.ef, index.seed
            )
        if index._stored <= index.exact_limit:  # saved with its graphs: exact till then
            vectors = index.get_vectors(index._ids)
            for mod in index.modalities:
                index._exact[mod] = ExactVectors(index.dims[mod])
                index._exact[mod].append(vectors[mod])
        return index


class _BatchWalk:
    """Neighbours of the rows of one batch, as if the rows came one at a time.

    Up front, for the whole batch: the candidates among the samples stored before it (an
    exact search while they are at most ``exact_limit``, else one parallel hnswlib query), each
    row's earlier rows of the batch that can be among its k nearest (``_within``), the
    distances of all of them (see the module docstring), and each row's answer assuming
    every earlier row of the batch is kept. The walk takes that answer unless a decision
    made meanwhile touched it (a row of the batch in it was not inserted or was removed, or
    one of its stored candidates was removed); then it recomputes that row alone. Kept rows
    enter hnswlib in one add_items call per batch, split at removals, in arrival order: the
    graph is that of one-at-a-time inserts.
    """

    def __init__(self, index: GainIndex, x: dict[str, np.ndarray]) -> None:
        self.index = index
        self.x = x
        self.n0 = index._stored
        self.exact = self.n0 <= index.exact_limit
        if not self.exact:
            index._build()
        size = len(next(iter(x.values())))
        self.alive = np.zeros(size + 1, bool)  # rows inserted and not removed; [size]: pad
        self.alive[size] = True
        self.rows: list[int] = []  # rows inserted, in order (position n0 + j for rows[j])
        self.position = np.full(size, -1, np.int64)  # position of each inserted row
        self.flushed = 0  # how many of them are in hnswlib
        self.touched: set[int] = set()  # stored positions removed during the batch
        self.x64 = {mod: v.astype(np.float64) for mod, v in x.items()}
        searched = {
            mod: self._stored_candidates(mod, v) if self.n0 else _none(v) for mod, v in x.items()
        }
        self.stored = {mod: pos for mod, (pos, _) in searched.items()}
        self.stored_dist = {mod: dist for mod, (_, dist) in searched.items()}
        # After the search (which waits for the inserter past the prefix): a small BLAS call
        # racing the inserter thread for the two cores is several times slower.
        self.sim = {mod: v @ v.T for mod, v in x.items()}
        self.fast = {mod: self._answers(mod) for mod in x}

    # --- bookkeeping -----------------------------------------------------------------------
    def inserted(self, row: int, pos: int) -> None:
        assert pos == self.n0 + len(self.rows)
        self.alive[row] = True
        self.position[row] = pos
        self.rows.append(row)

    def inserted_all(self) -> None:
        """Every row of the batch inserted, in order, at positions n0, n0 + 1, …"""
        assert not self.rows
        size = len(self.position)
        self.alive[:size] = True
        self.position[:] = np.arange(self.n0, self.n0 + size)
        self.rows = list(range(size))

    def remove(self, ids: Sequence[str]) -> None:
        self.flush()  # serial order: the rows kept so far enter the graph before removals
        self.index.remove(ids)
        for sample_id in ids:
            pos = self.index._pos[sample_id]
            if pos >= self.n0:
                self.alive[self.rows[pos - self.n0]] = False
            else:
                self.touched.add(pos)

    def flush(self) -> None:
        rows = self.rows[self.flushed :]
        if rows:
            self.index._append({m: v[rows] for m, v in self.x.items()}, self.n0 + self.flushed)
            self.flushed = len(self.rows)

    # --- per row ---------------------------------------------------------------------------
    def holds(self, i: int) -> bool:
        """Whether row i's answers (``_answers``) stand in every modality."""
        return all(self._holds(mod, i) for mod in self.fast)

    def _holds(self, mod: str, i: int) -> bool:
        """None of the row's stored candidates was removed, and no earlier row of the batch
        in its answer is gone (not kept, or removed): a gone candidate outside the answer
        changes nothing, and the rows that would take its place lie farther (``_within``)."""
        if not self.alive[self.fast[mod].rows[i]].all():
            return False
        return not (self.touched and self.touched.intersection(self.stored[mod][i]))

    def neighbours(self, mod: str, i: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(distances nan-padded to k, positions -1-padded, their mean) of row i."""
        dist, pos, mean = self.fast[mod].dist, self.fast[mod].pos, self.fast[mod].mean
        if self._holds(mod, i):
            found = pos[i]
            if found.max() >= self.n0:  # rows of the batch: their actual positions
                fresh = found >= self.n0
                found = found.copy()
                found[fresh] = self.position[found[fresh] - self.n0]
            return dist[i], found, float(mean[i])
        d, p = self._recompute(mod, i)
        return d, p, float(mean_distance(d[None, :], self.index.mean)[0])

    def _recompute(self, mod: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        raw, raw_dist = self.stored[mod][i], self.stored_dist[mod][i]
        if self.touched.intersection(raw.tolist()):
            self.flush()
            again = self._stored_candidates(mod, self.x[mod][i : i + 1])
            raw, raw_dist = again[0][0], again[1][0]
        found = raw >= 0
        raw, raw_dist = raw[found], raw_dist[found]
        kept = np.flatnonzero(self.alive[:i])
        sim = self.sim[mod][i, kept]
        order = np.argsort(-sim, kind="stable")
        top = kept[order[_within(sim[order][None, :], self.index.k, self.x[mod].shape[1])[0]]]
        fresh = self.position[top]
        pos = np.unique(np.concatenate([raw, fresh]))
        dist = np.empty(len(pos), np.float64)
        old = pos < self.n0  # stored before the batch: the search's distances
        dist[old] = raw_dist[np.searchsorted(raw, pos[old])]
        new = self.x64[mod][[self.rows[p - self.n0] for p in pos[~old]]]
        dist[~old] = 1.0 - (self.x64[mod][i][None, :] * new).sum(axis=1)
        return self.index._merge(dist, pos)

    # --- whole batch -----------------------------------------------------------------------
    def _stored_candidates(self, mod: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``x``, candidate positions among the stored samples, ascending, -1 at
        the end, and their distances (inf for -1): while the stored samples are at most
        ``exact_limit``, the exact search's (float64 re-scores of the stored vectors); beyond,
        hnswlib's own distances, which depend on the two vectors alone (hnswlib 0.8.0 returns
        a stored vector through ~500 Python floats, ~15 us: a re-score would cost more than
        the search's share of the gain)."""
        found = (self.index._exact_search if self.exact else self.index._query)(mod, x)
        if found is None:
            return _none(x)
        pos, dist = found
        order = np.argsort(np.where(pos < 0, np.iinfo(np.int64).max, pos), axis=1, kind="stable")
        return np.take_along_axis(pos, order, axis=1), np.take_along_axis(dist, order, axis=1)

    def _answers(self, mod: str) -> _Answers:
        """Each row's k nearest if every earlier row of the batch is kept (rows of the batch
        get virtual positions n0 + row), with what ``_holds`` needs (``_Answers``)."""
        x64, k, n0 = self.x64[mod], self.index.k, self.n0
        size = len(x64)
        stored, dist_stored = self.stored[mod], self.stored_dist[mod]
        earlier = np.tril(np.ones((size, size), bool), -1)
        sim = np.where(earlier, self.sim[mod], -np.inf)
        order = np.argsort(-sim, axis=1, kind="stable")
        inside = _within(np.take_along_axis(sim, order, axis=1), k, x64.shape[1])
        width = max(k, int(inside.sum(axis=1).max(initial=0)))  # each row's are a prefix
        top = np.sort(np.where(inside[:, :width], order[:, :width], size), axis=1)
        dist_batch = 1.0 - (x64[:, None, :] * x64[np.minimum(top, size - 1)]).sum(axis=-1)
        dist = np.concatenate([dist_stored, np.where(top < size, dist_batch, np.inf)], axis=1)
        pos = np.concatenate([stored, np.where(top < size, n0 + top, -1)], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        dist, pos = np.take_along_axis(dist, order, 1), np.take_along_axis(pos, order, 1)
        dist, pos = _finish(dist, pos, k)
        rows = np.where(pos >= n0, pos - n0, size)  # -1 pads are below n0
        return _Answers(dist, pos, mean_distance(dist, self.index.mean), rows)


class _Answers(NamedTuple):
    """A batch's answers for one modality, every earlier row of the batch assumed kept."""

    dist: np.ndarray  # (rows, k) distances, nearest first, nan-padded
    pos: np.ndarray  # (rows, k) positions (virtual for rows of the batch), -1-padded
    mean: np.ndarray  # (rows,) their mean distance
    rows: np.ndarray  # (rows, k) the earlier rows of the batch in each answer (pad: the
    # number of rows); of the batch's candidates, only these can change it (``_within``)


def _within(ranked: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Which earlier rows of the batch, ranked by float32 similarity (most similar first;
    -inf: none), can be among each row's k nearest: the first k and any within twice the
    float32 error of the k-th (a float32 near-tie can go either way in the float64
    re-score). The rows past them lie farther than the row's k-th nearest among these and
    its stored candidates, so dropping a candidate outside that answer changes nothing
    (``_BatchWalk._holds`` relies on it)."""
    ranked = ranked.astype(np.float64)
    if ranked.shape[1] < k:
        return np.isfinite(ranked)
    floor = ranked[:, k - 1] - 2 * float32_dot_error(dim)
    return np.isfinite(ranked) & (ranked >= floor[:, None])


def _none(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No stored candidates for the rows of ``x``."""
    return np.zeros((len(x), 0), np.int64), np.zeros((len(x), 0), np.float64)


def _finish(dist: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of up to k candidates, nearest first (inf: none) -> distances clipped to [0, 2],
    snapped to 0 near 0, nan/-1 padded to k columns."""
    valid = np.isfinite(dist)
    dist = np.where(valid, np.clip(dist, 0.0, 2.0), np.nan)
    pos = np.where(valid, pos, -1)
    missing = k - dist.shape[1]
    if missing:
        dist = np.pad(dist, ((0, 0), (0, missing)), constant_values=np.nan)
        pos = np.pad(pos, ((0, 0), (0, missing)), constant_values=-1)
    dist[dist < _ZERO_TOL] = 0.0
    return dist, pos


def _put_row(batch: GainBatch, i: int, row: _Row) -> None:
    batch.gain[i] = row.gain
    batch.neighbours[i] = row.neighbours
    batch.neighbour_labels[i] = row.neighbour_labels
    for mod, value in row.modality_gains.items():
        batch.modality_gains[mod][i] = value
        batch.nearest[mod][i] = row.nearest[mod]
    batch.inserted[i] = row.inserted


def _mean_of_modalities(means: np.ndarray) -> np.ndarray:
    """(modalities, rows) mean distances -> the gain of each row; one formula for the batch
    and for a row alone, so both give the same bits."""
    return means.mean(axis=0)


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
        nearest: dict[str, list[Neighbour | None]] = {mod: [] for mod in modalities}
        return GainBatch(empty, [], [], {mod: empty.copy() for mod in modalities}, nearest)
    return GainBatch(
        np.concatenate([p.gain for p in parts]),
        [row for p in parts for row in p.neighbours],
        [row for p in parts for row in p.neighbour_labels],
        {mod: np.concatenate([p.modality_gains[mod] for p in parts]) for mod in modalities},
        {mod: [n for p in parts for n in p.nearest[mod]] for mod in modalities},
        [flag for p in parts for flag in p.inserted],
    )


_INSERTERS: dict[int, ThreadPoolExecutor] = {}  # per process id: threads do not survive fork
_INSERTING: weakref.WeakSet[GainIndex] = weakref.WeakSet()


def _inserter(index: GainIndex) -> ThreadPoolExecutor:
    """The threads of every index's hnswlib inserts. An index submits one task per modality
    and waits for them before the next (``_drain``), so each graph is built serially and is
    deterministic; hnswlib releases the GIL, so inserts overlap the caller's work and the two
    modalities of image-text samples use both cores."""
    _INSERTING.add(index)
    pid = os.getpid()
    if pid not in _INSERTERS:
        _INSERTERS[pid] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gain-insert")
    return _INSERTERS[pid]


_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _blas_threads(threads: int) -> Any:
    """numpy's BLAS on ``threads`` threads (1 to the cores) while a batch is scored: the
    caller's thread and those the background inserts leave. OpenBLAS's helper threads spin
    while they wait for work, and beside two insert threads (image and text) on two cores
    they took the cores from them. 12,000 image-text samples x 512-d, core `curate`, four
    interleaved pairs: ~1,900 against ~1,580 samples/s and 0.81x the CPU; the pipeline's
    worker used ~0.75x the CPU. One modality keeps numpy's two threads on two cores. The
    thread count does not change a GEMM's results here (the candidates are re-scored in
    float64; gains compared bit for bit with 1 and 2 threads)."""
    return _blas().limit(limits=min(_CORES, max(1, threads)), user_api="blas")


def _drain_all() -> None:
    for index in list(_INSERTING):
        index.sync()


os.register_at_fork(before=_drain_all)  # a forked child must not copy a half-built graph


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


def _index_from_bytes(data: bytes, dim: int, capacity: int, ef: int, seed: int) -> hnswlib.Index:
    with tempfile.TemporaryDirectory(prefix="gainindex-") as tmp:
        path = os.path.join(tmp, "index.bin")
        Path(path).write_bytes(data)
        index = hnswlib.Index(space=_SPACE, dim=dim)
        index.load_index(path, max_elements=capacity)
    if _levels_continue():
        (state,) = index.__getstate__()
        del index  # one copy of the graph besides the state, not two
        index = _with_levels_continued(state, seed)
    index.set_ef(ef)  # ef is not part of hnswlib's file format
    return index


# hnswlib draws each new sample's level from std::default_random_engine seeded with
# random_seed, and does not save that generator: a loaded index starts a fresh stream, so
# samples inserted after a load got other levels (another graph, and gains that differ
# whenever HNSW misses a neighbour) than in the index that was saved. libstdc++'s engine is
# minstd_rand0 (x -> 16807 x mod 2^31-1) and one level draw takes two of its numbers
# (generate_canonical<double, 53> over a 31-bit range), so the generator after n inserts is
# the one seeded with seed * 16807^(2n) mod 2^31-1. hnswlib's pickle state carries the seed
# it re-seeds with; ``_levels_continue`` checks the arithmetic once per process.
_MINSTD_A, _MINSTD_M, _DRAWS_PER_LEVEL = 16807, 2**31 - 1, 2


def _level_seed(seed: int, inserted: int) -> int:
    """The seed of a fresh generator equal to the one of an index after ``inserted`` inserts."""
    start = seed % _MINSTD_M or 1  # minstd_rand0.seed(0) is seed(1)
    return start * pow(_MINSTD_A, _DRAWS_PER_LEVEL * inserted, _MINSTD_M) % _MINSTD_M


def _with_levels_continued(state: dict[str, Any], seed: int) -> hnswlib.Index:
    """The index of a pickle state (``Index.__getstate__``), its level generator continuing
    the stream of the index that was saved."""
    state = {**state, "seed": _level_seed(seed, int(state["cur_element_count"]))}
    index = hnswlib.Index.__new__(hnswlib.Index)
    index.__setstate__((state,))
    return index


@functools.cache
def _levels_continue() -> bool:
    """Whether ``_with_levels_continued`` reproduces this hnswlib build's graph: a small
    index saved halfway and continued must equal the one built in one go, byte for byte
    (another C++ library or hnswlib version may draw levels differently)."""
    x = np.random.default_rng(0).standard_normal((96, 8)).astype(np.float32)

    def built(rows: int, seed: int = 7) -> hnswlib.Index:
        index = hnswlib.Index(space=_SPACE, dim=8)
        index.init_index(max_elements=len(x), M=4, ef_construction=16, random_seed=seed)
        index.add_items(x[:rows], np.arange(rows), num_threads=1)
        return index

    continued = _with_levels_continued(built(48).__getstate__()[0], seed=7)
    continued.add_items(x[48:], np.arange(48, len(x)), num_threads=1)
    if _index_bytes(continued) == _index_bytes(built(len(x))):
        return True
    log.warning(
        "this hnswlib build draws HNSW levels differently: samples inserted after loading a "
        "gain index get other levels than in the saved one (gains equal whenever HNSW finds "
        "the exact k nearest, not byte for byte)"
    )
    return False
