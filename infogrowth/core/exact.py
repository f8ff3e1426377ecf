"""Exact nearest-neighbour search for the gain stage: one bfloat16 GEMM, proven candidates.

Each stored float32 vector is kept as its two 16-bit halves: the high half is the vector
truncated to bfloat16 (the matrix one bfloat16 GEMM scans, on AMX/AVX512-BF16 units where
the CPU has them), and with the low half it gives back the float32 vector bit for bit, so
the store costs what the float32 vectors cost and holds nothing twice.

Where the CPU has no bfloat16 GEMM (AVX2: torch's bfloat16 GEMM is 5-6x slower than its
float32 one there), the scan is a float32 GEMM of the query and the stored vectors as they
are (each chunk's two halves joined, ~1 ms per 4,096 vectors): off only by a float32 dot
product's error, so about k candidates a row are left to re-score, where the bfloat16 scan's
bound (both vectors' rounding and its result's) leaves tens in a dense neighbourhood.
Where the CPU has both, each store uses the one measured faster on its data (``ScanChoice``).
A small store is scanned in numpy without torch (``_SMALL``), by the same rule.

The bfloat16 GEMM's similarities are off from the exact ones by a bounded error: for unit
x and y, ``x.y - xb.yb = rx.yb + x.ry`` where xb, yb are the bfloat16 vectors and rx, ry
what they drop, so it is at most ``|rx| + |ry|`` (Cauchy-Schwarz), plus the GEMM's float32
sum over exact bfloat16 products and its bfloat16 result (the float32 GEMM's: that of a
float32 dot product, ``float32_dot_error``). With ``eps`` that bound for a row, every
stored vector that can be among the row's k most similar has a GEMM similarity within
``2 eps`` of the k-th largest GEMM similarity; all of those are candidates and are re-scored
in float64 from the exact vectors. The k nearest are therefore exact whatever the GEMM's
rounding (which varies with the batch's shape and the CPU), ties included (a tie at the
k-th place goes to the earliest position): no recall to trade, no margin to tune.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

import numpy as np

# |r| of a vector rounded (query) or truncated (stored) to bfloat16 is measured per vector;
# on top: the float32 sum of d exact bfloat16 products (at most d * 2^-24 relative), and a
# bfloat16 result (half a unit in the last place: 2^-8 relative, so 2^-8 for a similarity
# up to 1 and a bit; a float32 GEMM's result has no such rounding), with room for norms a
# bit above 1 (the gain index leaves norms within 1e-6 of 1 as they are).
_RESULT_ROUNDING = 2.0**-8
_NORM_SLACK = 1.01
_SUM_SLACK = 1.001
# Stored vectors per step of the scan (see ExactVectors._candidates).
_CHUNK = 4096
_INITIAL_ROWS = 1024  # a multiple of _LANES, as every size after it
# Store rows of a chunk's GEMM: a multiple of this (whole rows of the allocated store).
_LANES = 32
# Candidates a query row has room for in a scan at first (a dense neighbourhood may need
# more: the store remembers what its last scan needed).
_CANDIDATES = 512
# Stored vectors up to which the scan is one float32 GEMM in numpy, without torch (see
# ExactVectors._small_candidates).
_SMALL = 2048
_LOW_HALF = 0 if sys.byteorder == "little" else 1  # where a float32's low 16 bits lie
# Where the CPU has both GEMMs: after _RETRY_EVERY chunked scans, one takes the GEMM not
# preferred, to measure it again; each retry that finds it still the dearer doubles the
# wait, up to _RETRY_MOST scans (ScanChoice). Tests turn the choice off (_MEASURED).
_RETRY_EVERY = 16
_RETRY_MOST = 128
_MEASURED = True
# Scans of fewer query rows (a one-row re-search after a budget eviction) use the preferred
# GEMM and are not timed: the call's fixed costs would inflate their per-row cost.
_TIMED_ROWS = 8
_WARM_UP_DIM = 16  # of load_torch's one small scan
log = logging.getLogger(__name__)


def float32_sum_error(dim: int) -> float:
    """The most a float32 sum of ``dim`` products of unit vectors can be off."""
    return dim * 2.0**-24


def float32_dot_error(dim: int) -> float:
    """The most a float32 dot product of two unit vectors of ``dim`` dims (norms a little
    above 1 included) is off from the exact one: a float32 sum of ``dim`` products."""
    return _NORM_SLACK * float32_sum_error(dim)


@functools.cache
def _torch() -> Any:
    import torch  # a second or so to import: only once the gain stage scans

    return torch


@functools.cache
def _kernels() -> Any:
    from infogrowth.core import exact_kernels  # numba: imported (and compiled) once scans are

    return exact_kernels


@functools.cache
def bfloat16_gemm() -> bool:
    """Whether the scan multiplies in bfloat16: where oneDNN has a bfloat16 GEMM (AVX512,
    AMX). Else in float32 (256 x 4096 x 512 on the AVX2 VM: 86 ms in torch's bfloat16 GEMM,
    10 ms widened to float32 in numpy's). The candidates and the k nearest are exact
    either way."""
    check = getattr(_torch().ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # a build without oneDNN
        return False


def load_torch() -> None:
    """Imports torch and the compiled sweep now, for a long-running process: its first
    scan would otherwise stall a batch for the import (1.2-1.3 s in the pipeline bench's
    measured run) and the sweep's compilation (~2.5 s; ~0.1 s from numba's cache). Logs
    which GEMM the scans use: the speed of the exact search depends on it."""
    _torch()
    kind = (
        "bfloat16 or float32 (whichever measures faster)"
        if bfloat16_gemm()
        else "float32 (this CPU has no bfloat16 GEMM)"
    )
    log.info("exact gain search: %s GEMM scans", kind)
    warm_up_scan(_WARM_UP_DIM)  # the kernels' types do not depend on the dimension


def warm_up_scan(dim: int) -> None:
    """One tiny scan of ``dim``-d vectors through the chunked GEMM path (the one a store
    past ``_SMALL`` vectors takes): torch, its GEMM code and per-thread buffers loaded
    before something is measured."""
    store = ExactVectors(dim)
    x = np.eye(4, dim, dtype=np.float32)
    store.append(x)
    for bfloat16 in {bfloat16_gemm(), False}:
        store._candidates(x, 1, len(x), np.zeros(0, np.int64), bfloat16)


class ScanChoice:
    """Which GEMM a store's scans use where the CPU has both. The bfloat16 one multiplies
    about twice as fast (AVX512-BF16; more on AMX), but its bound holds both vectors'
    rounding and its result's, where the float32 scan's holds only its sums' error, so it
    leaves many more candidates to re-score: on dense neighbourhoods the float32 scan can be
    the faster (this VM, Zen 4, before the compiled sweep: a batch of 256 against 10k
    stored of the pipeline bench's set, 26 against 39 ms, 4 against 72 candidates a row),
    on sparse ones the bfloat16 one is (gain bench, 100k x 512: 3,060-3,094/s with bfloat16
    scans only, 1,813-1,860/s with float32 ones). Each scan's cost per query row and
    stored vector (search and re-score) is measured; the cheaper one is used, and the
    other tried again after ``_RETRY_EVERY`` scans, then after twice as many each time it
    is still the dearer (up to ``_RETRY_MOST``; a retry every 16 scans cost the gain bench
    ~5%), and again after ``_RETRY_EVERY`` once it turned out the cheaper. Both find the
    same k nearest, so the choice changes no result."""

    def __init__(self) -> None:
        self.cost: dict[bool, float] = {}  # bfloat16 or not -> seconds per row x vector
        self.scans = 0  # timed scans
        self.retried = 0  # the timed scan that last took the GEMM not preferred
        self.wait = _RETRY_EVERY  # scans from one retry to the next

    def bfloat16(self, rows: int) -> bool:
        """The GEMM for a scan of ``rows`` query rows."""
        if not bfloat16_gemm():
            return False
        if not _MEASURED:
            return True
        if rows < _TIMED_ROWS:
            return self._preferred()
        self.scans += 1
        for untried in (True, False):
            if untried not in self.cost:
                return untried
        if self.scans - self.retried < self.wait:
            return self._preferred()
        self.retried = self.scans
        return not self._preferred()

    def _preferred(self) -> bool:
        return self.cost.get(True, 0.0) <= self.cost.get(False, float("inf"))

    def measured(self, bfloat16: bool, seconds: float, rows: int, stored: int) -> None:
        if rows < _TIMED_ROWS:
            return
        retry = len(self.cost) == 2 and bfloat16 != self._preferred()
        self.cost[bfloat16] = seconds / max(rows * stored, 1)
        if retry:  # still the dearer: wait longer; now the cheaper: watch the other closely
            dearer = bfloat16 != self._preferred()
            self.wait = min(2 * self.wait, _RETRY_MOST) if dearer else _RETRY_EVERY


class ExactVectors:
    """The stored vectors of one modality, in insertion order, and their exact search."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self.high = np.zeros((0, dim), np.uint16)  # bfloat16 bits: the truncated vector
        self.low = np.zeros((0, dim), np.uint16)  # the rest of each float32
        self.residual = np.zeros(0, np.float64)  # |vector - truncated|, per vector
        self.worst = 0.0  # the largest residual
        self._buffers: dict[Any, Any] = {}  # the scan's similarities, by type (_scan_buffer)
        self._wide: Any = None  # a chunk's float32 bits, the halves joined (_exact_rows)
        self._capacity = _CANDIDATES  # candidates a row may have in a scan (_Found)
        self.choice = ScanChoice()

    def append(self, x: np.ndarray) -> None:
        """Stores rows of ``x`` (float32, unit norm) after those already here."""
        n = len(x)
        if self.count + n > len(self.high):
            size = max(2 * len(self.high), self.count + n)
            size = -(-size // _INITIAL_ROWS) * _INITIAL_ROWS
            for name in ("high", "low", "residual"):
                old = getattr(self, name)
                grown = np.zeros((size, *old.shape[1:]), old.dtype)
                grown[: self.count] = old[: self.count]
                setattr(self, name, grown)
        for s in range(0, n, _CHUNK):  # bounded temporaries for a large restore
            self._put(np.ascontiguousarray(x[s : s + _CHUNK], np.float32), self.count + s)
        self.count += n

    def _put(self, x: np.ndarray, first: int) -> None:
        bits = x.view(np.uint32)
        high = (bits >> 16).astype(np.uint16)
        rows = slice(first, first + len(x))
        self.high[rows], self.low[rows] = high, (bits & 0xFFFF).astype(np.uint16)
        # What truncation drops is exact in float32; its norm is rounded up by far more than
        # a float32 sum of squares can be off.
        rest = x - (high.astype(np.uint32) << 16).view(np.float32)
        self.residual[rows] = np.sqrt(np.einsum("ij,ij->i", rest, rest)) * _SUM_SLACK
        self.worst = max(self.worst, float(self.residual[rows].max(initial=0.0)))

    def rows(self, positions: np.ndarray | list[int]) -> np.ndarray:
        """The float32 vectors at ``positions``, bit for bit as stored."""
        at = np.asarray(positions, np.int64)
        # Each half gathered into its place in the 32-bit words: no shifted and OR-ed
        # temporaries (2.5 against 3.8 ms for the ~4,400 candidates of a batch of 256).
        out = np.empty((len(at), self.dim), np.float32)
        halves = out.view(np.uint16).reshape(len(at), self.dim, 2)
        halves[:, :, _LOW_HALF], halves[:, :, 1 - _LOW_HALF] = self.low[at], self.high[at]
        return out

    def to_parts(self) -> tuple[bytes, bytes]:
        return self.high[: self.count].tobytes(), self.low[: self.count].tobytes()

    @classmethod
    def from_parts(cls, dim: int, high: bytes, low: bytes) -> ExactVectors:
        store = cls(dim)
        bits = np.frombuffer(high, np.uint16).astype(np.uint32) << 16
        bits |= np.frombuffer(low, np.uint16)
        store.append(bits.view(np.float32).reshape(-1, dim))
        return store

    def nearest(
        self, x: np.ndarray, k: int, n: int, gone: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``x`` (float32, unit norm): the positions of its k nearest among the
        first ``n`` stored vectors that are not in ``gone`` (-1 padded) and their float64
        cosine distances (inf for -1), nearest first, ties to the earliest position."""
        pos = np.full((len(x), k), -1, np.int64)
        dist = np.full((len(x), k), np.inf)
        live = n - len(gone)
        if live <= 0:
            return pos, dist
        if n <= _SMALL:
            self._closest(x, *self._small_candidates(x, min(k, live), n, gone), pos, dist)
            return pos, dist
        bfloat16 = self.choice.bfloat16(len(x))
        started = time.perf_counter()
        self._closest(x, *self._candidates(x, min(k, live), n, gone, bfloat16), pos, dist)
        self.choice.measured(bfloat16, time.perf_counter() - started, len(x), n)
        return pos, dist

    def _candidates(
        self, x: np.ndarray, k: int, n: int, gone: np.ndarray, bfloat16: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, position, similarity) of every stored vector that can be among each row's
        k most similar (see the module docstring), grouped by row; the GEMM in bfloat16 on
        the truncated vectors, or in float32 on the exact ones. The similarities are within
        a float32 dot product's error of the exact ones (``_closest`` needs no more).

        The store is scanned in chunks of _CHUNK vectors (temporaries of one size, which
        malloc reuses: a similarity matrix a little larger every batch grew the heap by
        ~5 KB per stored sample); a compiled sweep reads each chunk's similarities once and
        keeps those at or above the row's running cut-off (core/exact_kernels.py)."""
        torch, kernels = _torch(), _kernels()
        if bfloat16:
            query = torch.from_numpy(x).to(torch.bfloat16)  # rounded to nearest
            query_residual = np.linalg.norm(x - query.to(torch.float64).numpy(), axis=1)
            eps = self._error(query_residual)
        else:  # the float32 GEMM takes the query and the stored vectors as they are
            query = np.ascontiguousarray(x, np.float32)
            eps = np.full(len(x), float32_dot_error(self.dim))
        slack = 2 * eps  # how far below a row's k-th GEMM value a true k nearest may lie
        while True:  # once, unless a row had more candidates than the buffers hold
            found = _Found(len(x), k, self._capacity)
            for start in range(0, n, _CHUNK):
                width = -(-min(_CHUNK, n - start) // _LANES) * _LANES  # whole store rows
                if bfloat16:
                    stored = torch.from_numpy(self.high[start : start + width].view(np.int16))
                    sim = self._scan_buffer(len(x), width, torch.bfloat16)
                    torch.matmul(query, stored.view(torch.bfloat16).T, out=sim)
                else:  # numpy's float32 GEMM (OpenBLAS): ~20% faster than torch's on AVX2
                    sim = self._scan_buffer(len(x), width, torch.float32)
                    np.matmul(query, self._exact_rows(start, width).T, out=sim.numpy())
                dropped = gone[(gone >= start) & (gone < start + width)] - start
                if len(dropped):
                    sim.index_fill_(1, torch.from_numpy(dropped), float("-inf"))
                searched = min(width, n - start)  # store rows past n: zeros, or not searched
                if bfloat16:
                    kernels.sweep_bfloat16(
                        sim.view(torch.int16).numpy(), searched, start, slack, *found.state,
                        kernels.BFLOAT16_VALUE, kernels.BFLOAT16_BY_KEY,
                    )  # fmt: skip
                else:
                    kernels.sweep_float32(sim.numpy(), searched, start, slack, *found.state)
            if found.fits():
                break
            self._capacity = found.needed()
        rows, cols, values = found.grouped()
        # The row's own k-th largest GEMM similarity (-inf with fewer than k: all are kept):
        # the tighter cut-off.
        keep = values >= found.top[rows, -1] - slack[rows]
        rows, cols = rows[keep], cols[keep]
        if not bfloat16:
            return rows, cols, values[keep]  # float32 GEMM similarities: close enough
        sims = np.empty(len(rows))
        kernels.candidate_dots(x, rows, cols, self.high, self.low, sims)
        return rows, cols, sims

    def _small_candidates(
        self, x: np.ndarray, k: int, n: int, gone: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_candidates`` of a small store (a short run, the start of a long one) without
        torch, whose import takes a second or so (1.3 s of a 2.5 s `curate` of 50 rows): the
        exact float32 vectors in one float32 GEMM, off from the exact similarities by at most
        ``float32_dot_error`` in any order of sums, so every stored vector within twice that
        of the row's k-th largest is a candidate. A superset of the k nearest either way:
        ``_closest`` picks the same ones."""
        sim = x @ self.rows(np.arange(n)).T
        sim[:, gone[gone < n]] = -np.inf
        kth = np.partition(sim, n - k, axis=1)[:, n - k]  # the k-th largest: a live row's
        floor = kth.astype(np.float64) - 2 * float32_dot_error(self.dim)
        rows, cols = np.nonzero(sim >= floor[:, None])  # grouped by row
        return rows, cols, sim[rows, cols]

    def _scan_buffer(self, rows: int, columns: int, dtype: Any) -> Any:
        """The similarities of a chunk, in memory kept from chunk to chunk; one per type, so
        that a scan with the other GEMM (ScanChoice's retry) is not timed with a fresh
        buffer's page faults."""
        torch = _torch()
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < rows * columns:
            buffer = self._buffers[dtype] = torch.empty(max(rows, 256) * _CHUNK, dtype=dtype)
        return buffer[: rows * columns].view(rows, columns)

    def _exact_rows(self, start: int, width: int) -> np.ndarray:
        """Stored rows ``start`` to ``start + width`` as float32, bit for bit (the two halves
        joined), in memory kept from chunk to chunk."""
        if self._wide is None:
            self._wide = np.empty(_CHUNK * self.dim, np.uint32)
        bits = self._wide[: width * self.dim].reshape(width, self.dim)
        rows = slice(start, start + width)
        np.left_shift(self.high[rows], 16, out=bits, dtype=np.uint32, casting="unsafe")
        np.bitwise_or(bits, self.low[rows], out=bits, casting="unsafe")
        return bits.view(np.float32)

    def _error(self, query_residual: np.ndarray) -> np.ndarray:
        """Per query row, a bound on |bfloat16 GEMM similarity - exact similarity| for any
        stored row."""
        sum_error = float32_sum_error(self.dim)
        return _NORM_SLACK * (query_residual + self.worst + sum_error + _RESULT_ROUNDING)

    def _closest(
        self,
        x: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        sim: np.ndarray,
        pos: np.ndarray,
        dist: np.ndarray,
    ) -> None:
        """The k nearest of each row among its candidates (grouped by row, with their
        similarities ``sim``, off by at most a float32 dot product's error), into ``pos``
        and ``dist``: those within that error of the k-th are re-scored in float64, the
        same formula for a pair in any batch."""
        k = pos.shape[1]
        # As in _candidates: every true k nearest is within twice the error of the k-th.
        eps = float32_dot_error(self.dim)
        order = np.lexsort((-sim, rows))
        kth = _kth(sim[order].astype(np.float64), rows[order], len(x), k)
        keep = sim >= kth[rows] - 2 * eps
        rows, cols = rows[keep], cols[keep]
        stored = self.rows(cols)
        d = 1.0 - (x[rows].astype(np.float64) * stored.astype(np.float64)).sum(axis=1)
        order = np.lexsort((cols, d, rows))  # per row: nearest first, then earliest
        rows, cols, d = rows[order], cols[order], d[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        take = rank < k
        pos[rows[take], rank[take]] = cols[take]
        dist[rows[take], rank[take]] = d[take]


class _Found:
    """A scan's running candidates: per query row its k largest similarities so far, and
    the (position, similarity) of each candidate in a buffer of ``capacity`` a row."""

    def __init__(self, rows: int, k: int, capacity: int) -> None:
        self.top = np.full((rows, k), -np.inf)
        self.count = np.zeros(rows, np.int64)
        self.cols = np.empty((rows, capacity), np.int64)
        self.vals = np.empty((rows, capacity))

    @property
    def state(self) -> tuple[np.ndarray, ...]:
        return self.top, self.count, self.cols, self.vals

    def fits(self) -> bool:
        return int(self.count.max(initial=0)) <= self.cols.shape[1]

    def needed(self) -> int:
        """A capacity with room for the largest row's candidates (a power of two)."""
        return 1 << int(self.count.max()).bit_length()

    def grouped(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, position, similarity) of every candidate, grouped by row."""
        held = np.arange(self.cols.shape[1]) < self.count[:, None]
        return np.nonzero(held)[0], self.cols[held], self.vals[held]


def _kth(values: np.ndarray, rows: np.ndarray, n_rows: int, k: int) -> np.ndarray:
    """Per row, the k-th largest of its values (its smallest if it has fewer than k; -inf if
    none); ``values`` grouped by row, each row's largest first."""
    if len(values) == 0:
        return np.full(n_rows, -np.inf)
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    counts = np.diff(bounds)
    at = bounds[:-1] + np.minimum(k, counts) - 1
    return np.where(counts > 0, values[np.clip(at, 0, len(values) - 1)], -np.inf)
