"""The exact store of the gain stage: vectors back bit for bit, and the k nearest exactly
those of a float64 brute force, ties, near-ties and removed rows included, in any batch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from infogrowth.core import exact
from infogrowth.core.exact import ExactVectors


def probe_output(code: str) -> list[str]:
    """What ``code`` prints, run in a fresh interpreter (imports and caches of its own)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(x: np.ndarray, stored: np.ndarray, k: int, gone: np.ndarray):
    """k nearest by float64 distance (the store's formula), ties to the earliest position."""
    d = 1.0 - (x.astype(np.float64)[:, None, :] * stored.astype(np.float64)[None]).sum(axis=2)
    d[:, gone] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    return np.where(np.isfinite(dist), order, -1), dist


@pytest.fixture(scope="module")
def hard() -> np.ndarray:
    """Clusters of near-identical vectors: differences far below bfloat16's resolution
    (~0.4%), exact duplicates, and vectors that differ in a single low bit."""
    rng = np.random.default_rng(3)
    base = unit(rng, 40, 48)
    x = base[rng.integers(0, 40, 2500)].astype(np.float64)
    x += rng.normal(scale=1e-4, size=x.shape) * (rng.random((len(x), 1)) < 0.7)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x[100:110] = x[99]  # duplicates
    bits = x[200:220].view(np.uint32)
    bits[:, 5] ^= 1  # one low bit flipped: ties in bfloat16, not in float64
    return x


@pytest.fixture(params=["bfloat16", "float32", "small"], ids=lambda p: f"{p}-gemm")
def gemm(request, monkeypatch) -> str:
    """Every scan, whatever this CPU and the store's size would choose: the chunked scan in
    bfloat16 (AVX512/AMX) or in float32 (AVX2), and a small store's numpy GEMM."""
    monkeypatch.setattr(exact, "bfloat16_gemm", lambda: request.param == "bfloat16")
    monkeypatch.setattr(exact, "_MEASURED", False)  # the scan the CPU has, every time
    monkeypatch.setattr(exact, "_SMALL", 10**9 if request.param == "small" else 0)
    return request.param


def test_rows_come_back_bit_for_bit(hard) -> None:
    store = ExactVectors(48)
    for s in range(0, 2500, 700):  # growth across several appends
        store.append(hard[s : s + 700])
    assert store.count == 2500
    assert store.rows(np.arange(2500)).tobytes() == hard.tobytes()
    again = ExactVectors.from_parts(48, *store.to_parts())
    assert again.rows(np.arange(2500)).tobytes() == hard.tobytes()
    assert again.worst == store.worst


@pytest.mark.parametrize("k", [1, 4, 30])
def test_nearest_equals_a_float64_brute_force(hard, k: int, gemm: str) -> None:
    n = 2000
    store = ExactVectors(48)
    store.append(hard[:n])
    gone = np.unique(np.random.default_rng(k).integers(0, n, 300))
    queries = hard[n:]
    pos, dist = store.nearest(queries, k, n, gone)
    want_pos, want_dist = brute(queries, hard[:n], k, gone)
    np.testing.assert_array_equal(pos, want_pos)
    assert dist.tobytes() == want_dist.tobytes()


def test_a_row_alone_gets_the_same_bits_as_in_a_batch(hard, gemm: str) -> None:
    store = ExactVectors(48)
    store.append(hard[:1500])
    gone = np.arange(0, 1500, 7)
    pos, dist = store.nearest(hard[1500:1800], 4, 1500, gone)
    for i in (0, 17, 299):
        alone = store.nearest(hard[1500 + i : 1501 + i], 4, 1500, gone)
        np.testing.assert_array_equal(alone[0][0], pos[i])
        assert alone[1][0].tobytes() == dist[i].tobytes()


def test_a_row_with_more_candidates_than_the_scan_holds_grows_the_buffers(
    hard, gemm: str, monkeypatch
) -> None:
    """The scan keeps each row's candidates in a buffer of fixed size: a row with more (a
    dense cluster of near-duplicates) makes it scan again with room for them, and the store
    keeps the larger size for its next scans."""
    monkeypatch.setattr(exact, "_CANDIDATES", 2)
    store = ExactVectors(48)
    store.append(hard[:2000])
    pos, dist = store.nearest(hard[2000:], 4, 2000, np.zeros(0, np.int64))
    want_pos, want_dist = brute(hard[2000:], hard[:2000], 4, np.zeros(0, np.int64))
    np.testing.assert_array_equal(pos, want_pos)
    assert dist.tobytes() == want_dist.tobytes()
    assert store._capacity > 2 or gemm == "small"


def test_fewer_live_rows_than_k_and_the_first_n_only(hard, gemm: str) -> None:
    store = ExactVectors(48)
    store.append(hard[:50])
    gone = np.arange(3, 10)  # of the first 10 searched, 3 live
    pos, dist = store.nearest(hard[60:64], 4, 10, gone)
    assert (pos[:, :3] >= 0).all() and (pos[:, :3] < 3).all()
    assert (pos[:, 3] == -1).all() and np.isinf(dist[:, 3]).all()
    none, _ = store.nearest(hard[60:62], 4, 3, np.arange(3))
    assert (none == -1).all()


def test_the_float32_scan_leaves_only_its_sums_error_to_re_score(monkeypatch) -> None:
    """The float32 scan multiplies the query and the stored vectors as they are (the two
    halves joined), so its candidates are those within twice the float32 sum's error of the
    k-th: k per row where no two similarities are that close. Scanning the truncated
    vectors with a rounded query (what the bfloat16 GEMM must) puts both residuals in the
    bound: on this dense neighbourhood, over three times as many candidates."""
    monkeypatch.setattr(exact, "_SMALL", 0)  # the chunked scan, as a large store has
    rng = np.random.default_rng(5)
    centre = unit(rng, 1, 64)
    near = centre + 0.35 * unit(rng, 3000, 64)  # similarities to the centre ~0.94, dense
    x = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    store = ExactVectors(64)
    store.append(x[:2900])
    assert store.worst > 0.0  # vectors bfloat16 does not hold
    queries, k = x[2900:], 4
    rows, _, _ = store._candidates(queries, k, 2900, np.zeros(0, np.int64), bfloat16=False)
    per_row = np.bincount(rows, minlength=len(queries))
    assert per_row.min() >= k
    assert np.median(per_row) == k and per_row.max() <= k + 2
    wide, _, _ = store._candidates(queries, k, 2900, np.zeros(0, np.int64), bfloat16=True)
    assert np.median(np.bincount(wide, minlength=len(queries))) > 3 * k
    pos, _ = store.nearest(queries, k, 2900, np.zeros(0, np.int64))
    np.testing.assert_array_equal(pos, brute(queries, x[:2900], k, np.zeros(0, np.int64))[0])


@pytest.mark.parametrize(
    ("variable", "default", "users"),
    [("OMP_WAIT_POLICY", "PASSIVE", "ACTIVE"), ("OPENBLAS_THREAD_TIMEOUT", "4", "28")],
)
def test_importing_the_package_makes_helper_threads_sleep_unless_told_otherwise(
    variable: str, default: str, users: str
) -> None:
    """torch's OpenMP and numpy's OpenBLAS threads spin after each call and took the cores
    from the gain stage and the worker's event loop: the package asks for sleeping ones
    before either library starts its threads, and a user's choice wins."""
    import os

    probe = f"import infogrowth, os; print(os.environ['{variable}'])"
    env = {k: v for k, v in os.environ.items() if k != variable}
    for given, expected in ((None, default), (users, users)):
        run_env = env if given is None else {**env, variable: given}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=run_env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected


def test_a_worker_says_which_gemm_its_scans_use(gemm: str, caplog) -> None:
    with caplog.at_level("INFO", logger="infogrowth.core.exact"):
        exact.load_torch()
    both = "bfloat16 or float32 (whichever measures faster)"
    said = both if gemm == "bfloat16" else "float32 (this CPU has no bfloat16 GEMM)"
    assert f"exact gain search: {said} GEMM scans" in caplog.text


def test_a_worker_compiles_the_scans_sweep_at_start() -> None:
    """``load_torch`` (a worker's start) also compiles (or loads from numba's cache) the
    sweeps its scans run, so the first batch past _SMALL stored does not wait for them."""
    probe = (
        "from infogrowth.core import exact, exact_kernels as k\n"
        "exact.load_torch()\n"
        "print(bool(k.sweep_float32.signatures), bool(k.sweep_bfloat16.signatures)"
        " == exact.bfloat16_gemm())\n"
    )
    assert probe_output(probe) == ["True", "True"]


def test_a_store_scans_with_the_gemm_measured_cheaper_and_tries_the_other_again(
    monkeypatch,
) -> None:
    """Where the CPU has both GEMMs, each is tried once, then the cheaper per query row and
    stored vector is used, and the other measured again after _RETRY_EVERY scans, then
    after twice as many each time it is still the dearer (up to _RETRY_MOST): a change in
    the data (denser neighbourhoods, more to re-score) or the machine turns the choice,
    and the one given up is then watched closely again."""
    monkeypatch.setattr(exact, "bfloat16_gemm", lambda: True)
    assert (exact._RETRY_EVERY, exact._RETRY_MOST) == (16, 128)
    choice = exact.ScanChoice()
    cost = {True: 3.0, False: 2.0}
    used = []
    for scan in range(1, 601):
        if scan == 400:
            cost[True] = 1.0  # bfloat16 becomes the cheaper
        bfloat16 = choice.bfloat16(10)
        used.append(bfloat16)
        choice.measured(bfloat16, cost[bfloat16] * 10 * 100, 10, 100)
    assert used[:2] == [True, False]  # each measured once
    # float32 preferred; bfloat16 tried again after 16, 32, 64, 128 and 128 scans, found
    # the cheaper at the last
    assert [i + 1 for i, b in enumerate(used) if b][:7] == [1, 16, 48, 112, 240, 368, 496]
    assert all(used[495:511])  # scans 496 to 511
    # then bfloat16 preferred, float32 tried again after 16 and 32 scans
    assert [i + 1 for i, b in enumerate(used) if not b and i >= 496] == [512, 544]
    monkeypatch.setattr(exact, "bfloat16_gemm", lambda: False)
    assert exact.ScanChoice().bfloat16(10) is False  # no bfloat16 GEMM: never


def test_a_one_row_re_search_neither_counts_nor_times_a_scan(monkeypatch) -> None:
    """A budget eviction's one-row re-search pays a scan's fixed costs for one row: timed
    per row, it would make its GEMM look dearer for the next 16 batches. It takes the
    preferred GEMM and leaves the costs and the retry count alone."""
    monkeypatch.setattr(exact, "bfloat16_gemm", lambda: True)
    choice = exact.ScanChoice()
    for bfloat16, seconds in ((True, 1.0), (False, 2.0)):  # each tried once: bfloat16 cheaper
        assert choice.bfloat16(10) is bfloat16
        choice.measured(bfloat16, seconds, 10, 100)
    before = (dict(choice.cost), choice.scans)
    for _ in range(3 * exact._RETRY_EVERY):
        assert choice.bfloat16(1) is True  # the preferred, never the retry
        choice.measured(True, 50.0, 1, 100)  # 50x dearer per row: fixed costs
    assert (choice.cost, choice.scans) == before
    assert [choice.bfloat16(10) for _ in range(exact._RETRY_EVERY)].count(False) == 1


def test_a_small_store_is_searched_without_importing_torch() -> None:
    """A short run (`curate` of a few rows) does not pay torch's import (1.3 s of 2.5 s for 50
    rows); a store past _SMALL rows does."""
    probe = (
        "import sys, numpy as np\n"
        "from infogrowth.core.exact import ExactVectors, _SMALL\n"
        "x = np.random.default_rng(0).normal(size=(_SMALL + 1, 16)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "store = ExactVectors(16)\n"
        "store.append(x)\n"
        "store.nearest(x[:5], 4, _SMALL, np.zeros(0, np.int64))\n"
        "print('torch' in sys.modules)\n"
        "store.nearest(x[:5], 4, _SMALL + 1, np.zeros(0, np.int64))\n"
        "print('torch' in sys.modules)\n"
    )
    assert probe_output(probe) == ["False", "True"]


def test_the_scan_works_where_numba_may_not_write_its_cache() -> None:
    """A read-only install (no folder numba may write its cache to): the compiled sweep is
    compiled in the process instead of failing the import."""
    probe = (
        "import numpy as np\n"
        "from numba.core import caching\n"
        "caching.CacheImpl._locator_classes = []  # no writable folder anywhere\n"
        "from infogrowth.core import exact\n"
        "from infogrowth.core.exact import ExactVectors\n"
        "exact._SMALL = 0\n"
        "x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "store = ExactVectors(16)\n"
        "store.append(x)\n"
        "pos, _ = store.nearest(x[:5], 1, 300, np.zeros(0, np.int64))\n"
        "print(pos.ravel().tolist())\n"
    )
    assert probe_output(probe)[-5:] == ["[0,", "1,", "2,", "3,", "4]"]
