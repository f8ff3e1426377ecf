"""The compiled inner loops of the exact scan (core/exact.py), in numba.

After each chunk's GEMM, ``sweep_bfloat16`` / ``sweep_float32`` read its similarity matrix
once, row by row: the row's k largest similarities so far give a cut-off (the k-th less
twice the GEMM's error, never below -2, so a removed row's -inf never passes), and every
column at or above the cut-off when it is read is kept as a candidate. The cut-off only
rises, so a column left behind is below the final one, and the candidates hold every
column within twice the error of the row's final k-th largest (the k largest among them),
which is what the caller's final filter needs. A block of ``BLOCK`` columns is looked
into only when its maximum reaches the cut-off: one vectorised pass over the row, and the
few blocks near the top.

bfloat16 has no numba type, so a bfloat16 is read as its int16 bits; the
bits ``s ^ ((s >> 15) & 0x7FFF)`` order as the values do, so a block's maximum is an integer
maximum, and ``BFLOAT16_BY_KEY`` turns a cut-off into the smallest key at or above it.

``candidate_dots``: the similarity of each (query row, stored position) candidate, from the
store's two 16-bit halves (the float32 vector bit for bit) without building the rows,
summed in float64 in any order: off by far less than a float32 dot product's error bound,
which is all ``ExactVectors._closest`` asks of it.

The kernels are compiled at first use (~2.5 s) and cached beside this file or in the
user's cache folder (numba's cache); ``exact.load_torch`` does that at a worker's start.
Where neither can be written (a read-only install), they are compiled in every process.
"""

from __future__ import annotations

import numba
import numpy as np


def _compiled(**options: object):  # noqa: ANN202
    """numba.njit, cached where numba finds a folder it may write."""

    def compile_(fn):  # noqa: ANN001, ANN202
        try:
            return numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(fn)

    return compile_


BLOCK = 64  # columns per block whose maximum is checked against the cut-off
_LOWEST = -2.0  # below any similarity of unit vectors, above -inf (removed rows)


def _bfloat16_tables() -> tuple[np.ndarray, np.ndarray]:
    """Every bfloat16's value by its 16 bits, and by its order key (NaNs at the ends)."""
    bits = np.arange(65536, dtype=np.uint32)
    with np.errstate(invalid="ignore"):
        value = (bits << 16).view(np.float32).astype(np.float64)
    signed = bits.astype(np.uint16).view(np.int16).astype(np.int32)
    key = signed ^ ((signed >> 15) & 0x7FFF)
    by_key = np.empty(65536)
    by_key[key + 32768] = value
    nan = np.isnan(by_key)
    by_key[nan] = np.where(np.arange(65536)[nan] >= 32768, np.inf, -np.inf)
    return value, by_key


BFLOAT16_VALUE, BFLOAT16_BY_KEY = _bfloat16_tables()


@_compiled(inline="always")
def _keep(r, col, v, top, count, cols, vals):  # noqa: ANN001, ANN202
    """(col, v) into row r's candidates (counted past the buffer's end: the caller grows
    it and scans again) and v into its running k largest; the new k-th largest."""
    n = count[r]
    if n < cols.shape[1]:
        cols[r, n] = col
        vals[r, n] = v
    count[r] = n + 1
    k = top.shape[1]
    if v > top[r, k - 1]:
        i = k - 1
        while i > 0 and top[r, i - 1] < v:
            top[r, i] = top[r, i - 1]
            i -= 1
        top[r, i] = v
    return top[r, k - 1]


@_compiled(inline="always")
def _key(s):  # noqa: ANN001, ANN202
    """A bfloat16's order key from its int16 bits."""
    return s ^ ((s >> 15) & np.int16(0x7FFF))


@_compiled()
def _bfloat16_peaks(row, width, peaks):  # noqa: ANN001, ANN202
    whole = width // BLOCK
    for g in range(whole):  # a fixed trip count: vectorised
        peak = np.int16(-32768)
        for j in range(BLOCK):
            peak = max(peak, _key(row[g * BLOCK + j]))
        peaks[g] = peak
    if width % BLOCK:
        peak = np.int16(-32768)
        for c in range(whole * BLOCK, width):
            peak = max(peak, _key(row[c]))
        peaks[whole] = peak


@_compiled()
def sweep_bfloat16(sim, width, start, slack, top, count, cols, vals, value, by_key):  # noqa: ANN001, ANN201
    """One chunk's bfloat16 similarities (int16 bits, rows x columns; the first ``width``
    columns are stored positions ``start``...) into the running candidates."""
    peaks = np.empty(-(-width // BLOCK), np.int64)
    for r in range(sim.shape[0]):
        row = sim[r]
        _bfloat16_peaks(row, width, peaks)
        cut = max(top[r, top.shape[1] - 1] - slack[r], _LOWEST)
        floor = np.searchsorted(by_key, cut) - 32768
        for g in range(peaks.shape[0]):
            if peaks[g] < floor:
                continue
            for c in range(g * BLOCK, min(g * BLOCK + BLOCK, width)):
                v = value[np.int64(row[c]) & 0xFFFF]
                if v >= cut:
                    kth = _keep(r, start + c, v, top, count, cols, vals)
                    cut = max(kth - slack[r], _LOWEST)
                    floor = np.searchsorted(by_key, cut) - 32768


@_compiled(fastmath={"nnan", "nsz"})  # max of -inf works
def _float_peaks(row, width, peaks):  # noqa: ANN001, ANN202
    for g in range(peaks.shape[0]):
        peak = row[g * BLOCK]
        for c in range(g * BLOCK + 1, min(g * BLOCK + BLOCK, width)):
            peak = max(peak, row[c])
        peaks[g] = peak


@_compiled()
def sweep_float32(sim, width, start, slack, top, count, cols, vals):  # noqa: ANN001, ANN201
    """``sweep_bfloat16`` of a float32 GEMM's similarities."""
    peaks = np.empty(-(-width // BLOCK), np.float32)
    for r in range(sim.shape[0]):
        row = sim[r]
        _float_peaks(row, width, peaks)
        cut = max(top[r, top.shape[1] - 1] - slack[r], _LOWEST)
        for g in range(peaks.shape[0]):
            if peaks[g] < cut:
                continue
            for c in range(g * BLOCK, min(g * BLOCK + BLOCK, width)):
                v = np.float64(row[c])
                if v >= cut:
                    kth = _keep(r, start + c, v, top, count, cols, vals)
                    cut = max(kth - slack[r], _LOWEST)


@_compiled(fastmath={"reassoc", "contract"})
def candidate_dots(x, rows, cols, high, low, out):  # noqa: ANN001, ANN201
    """out[i] = x[rows[i]] . (stored vector cols[i], its halves joined), in float64."""
    bits = np.empty(x.shape[1], np.uint32)
    stored = bits.view(np.float32)
    for i in range(rows.shape[0]):
        h, lo, q = high[cols[i]], low[cols[i]], x[rows[i]]
        for j in range(bits.shape[0]):
            bits[j] = (np.uint32(h[j]) << 16) | np.uint32(lo[j])
        total = 0.0
        for j in range(bits.shape[0]):
            total += np.float64(q[j]) * np.float64(stored[j])
        out[i] = total
