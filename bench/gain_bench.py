"""Throughput, recall and memory of GainIndex against bare hnswlib and numpy brute force.

All sides see the same seeded clustered vectors in the same batches, timed batch by batch,
interleaved (who goes first alternates), so load changes on the machine hit them alike:

- GainIndex: gain + insert with its semantics (neighbours inside the batch, float64
  re-score, exact search while the index holds <= EXACT_PREFIX samples, then HNSW); its
  background inserts are waited for inside its timed span, so they cannot hide in the
  other sides' time (in the pipeline they overlap the caller's work instead).
- bare hnswlib: the minimal equivalent, knn_query (parallel) then add_items (serial, for a
  deterministic graph), same M / ef_construction / ef / k; it misses neighbours inside the
  batch, so its gains differ.
- numpy brute force: the exact answer (float32 GEMM against everything earlier, top k+4
  re-scored in float64), timed on every ``--check-every``-th batch; it is the reference
  for recall@k of GainIndex's neighbours and for the error of its gains (a missed
  neighbour whose stand-in lies at almost the same distance barely moves the gain).

Memory: resident-set growth of a fresh process that builds the index, GainIndex against
bare hnswlib (vectors + graph) holding the same vectors. Libraries are loaded before the
measurement starts (torch, which the exact search uses, maps ~490 MB of code: the
process's, as in a worker that runs the models, not the index's).

    .venv/bin/python bench/gain_bench.py            # 100k x 512, the issue's targets
    .venv/bin/python bench/gain_bench.py --n 20000 --no-memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np
from tqdm import tqdm

from infogrowth.core import exact, gain
from infogrowth.core.gain import GainIndex

TARGET_RATE, TARGET_RECALL, TARGET_MEMORY = 3000.0, 0.999, 1.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    p.add_argument("--dim", type=int, default=512, help="dimensions (default 512)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--m", type=int, default=16, help="HNSW M (default 16)")
    p.add_argument("--ef-construction", type=int, default=64, help="HNSW efC (default 64)")
    p.add_argument("--ef", type=int, default=128, help="HNSW query ef (default 128)")
    p.add_argument("--k", type=int, default=4, help="neighbours (default 4)")
    p.add_argument("--threads", type=int, default=2, help="query threads (default 2)")
    p.add_argument("--clusters", type=int, default=1000, help="clusters (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--check-every", type=int, default=10, help="brute-force batch stride")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument(
        "--exact-limit",
        type=int,
        default=gain.EXACT_PREFIX,
        help=f"exact search up to this many samples, then HNSW (default {gain.EXACT_PREFIX})",
    )
    p.add_argument("--memory-child", choices=["ours", "bare"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors: Gaussian clusters around random centres (seeded)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    x = centres[rng.integers(0, clusters, n)]
    x += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_ours(args: argparse.Namespace) -> GainIndex:
    return GainIndex(
        modalities=("x",),
        k=args.k,
        m=args.m,
        ef_construction=args.ef_construction,
        ef=args.ef,
        query_threads=args.threads,
        exact_limit=args.exact_limit,
    )


class Bare:
    """The minimal equivalent: query the earlier batches, then insert serially."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.index = hnswlib.Index(space="ip", dim=args.dim)
        self.index.init_index(max_elements=args.n, M=args.m, ef_construction=args.ef_construction)
        self.index.set_ef(args.ef)
        self.k, self.threads, self.count = args.k, args.threads, 0

    def step(self, x: np.ndarray, query: bool = True) -> None:
        if self.count and query:
            self.index.knn_query(x, k=min(self.k, self.count), num_threads=self.threads)
        self.index.add_items(x, np.arange(self.count, self.count + len(x)), num_threads=1)
        self.count += len(x)


def brute_force(x: np.ndarray, start: int, size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest earlier rows (indices, nearest first) of rows start..start+size and
    their mean cosine distance (the exact gain; nan for the very first row)."""
    q = x[start : start + size]
    sim = q @ x[: start + size].T
    sim[:, start:][np.triu_indices(len(q), 0, sim.shape[1] - start)] = -np.inf  # later rows
    kb = min(k + 4, start + size - 1)
    top = np.argpartition(-sim, kb - 1, axis=1)[:, :kb]
    exact = (q.astype(np.float64)[:, None, :] * x[top].astype(np.float64)).sum(axis=-1)
    exact[~np.isfinite(np.take_along_axis(sim, top, axis=1))] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    similarity = np.take_along_axis(exact, order, axis=1)
    found = np.isfinite(similarity)
    distance = np.where(found, np.clip(1.0 - similarity, 0.0, 2.0), 0.0)
    count = found.sum(axis=1)
    gain = np.where(count > 0, distance.sum(axis=1) / np.maximum(count, 1), np.nan)
    return np.take_along_axis(top, order, axis=1), gain


def run(args: argparse.Namespace) -> dict[str, float]:
    x = clustered(args.n, args.dim, args.clusters, args.seed)
    ids = [f"s{i}" for i in range(args.n)]
    ours, bare = make_ours(args), Bare(args)
    seconds = {"ours": 0.0, "bare": 0.0, "brute": 0.0}
    brute_samples = 0
    hits = {"all": [0, 0], "beyond_prefix": [0, 0]}  # [found, expected]
    errors: list[np.ndarray] = []  # |gain - exact gain| of the checked rows
    for step, start in enumerate(tqdm(range(0, args.n, args.batch), unit="batch")):
        xb, ib = x[start : start + args.batch], ids[start : start + args.batch]
        check = step % args.check_every == args.check_every - 1
        names = ["ours", "bare"] + (["brute"] if check else [])
        for name in names if step % 2 == 0 else reversed(names):  # alternate who goes first
            t0 = time.perf_counter()
            if name == "ours":
                batch = ours.gain_and_add(ib, {"x": xb})
                ours.sync()  # its background inserts count as its time
            elif name == "bare":
                bare.step(xb)
            else:
                truth, exact_gain = brute_force(x, start, len(xb), args.k)
            seconds[name] += time.perf_counter() - t0
        if check:
            brute_samples += len(xb)
            errors.append(np.abs(batch.gain - exact_gain)[~np.isnan(exact_gain)])
            for row, want in zip(batch.neighbours, truth, strict=True):
                expected = {ids[j] for j in want}
                for key in ("all", "beyond_prefix") if start > args.exact_limit else ("all",):
                    hits[key][0] += len(expected.intersection(row))
                    hits[key][1] += len(expected)
    return {
        "ours": args.n / seconds["ours"],
        "bare": args.n / seconds["bare"],
        "brute": brute_samples / seconds["brute"],
        **{f"recall_{key}": found / max(total, 1) for key, (found, total) in hits.items()},
        **gain_error(np.concatenate(errors) if errors else np.zeros(0)),
    }


def gain_error(error: np.ndarray) -> dict[str, float]:
    """Mean, p99 and max of |gain - exact gain|, and the share of gains within 1e-6."""
    if len(error) == 0:
        return {"error_mean": 0.0, "error_p99": 0.0, "error_max": 0.0, "exact_share": 1.0}
    return {
        "error_mean": float(error.mean()),
        "error_p99": float(np.quantile(error, 0.99)),
        "error_max": float(error.max()),
        "exact_share": float((error < 1e-6).mean()),
    }


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(args: argparse.Namespace) -> None:
    """Builds one index in this fresh process and prints its resident-set growth."""
    x = clustered(args.n, args.dim, args.clusters, args.seed)
    ids = [f"s{i}" for i in range(args.n)]
    # torch's GEMM code and per-thread buffers (44 MiB for its float32 GEMM on the AVX2 VM),
    # which a worker that runs the models has anyway, are not counted as the index's
    exact.warm_up_scan(args.dim)
    before = rss_bytes()
    if args.memory_child == "ours":
        index = make_ours(args)
        for s in range(0, args.n, args.batch):
            index.gain_and_add(ids[s : s + args.batch], {"x": x[s : s + args.batch]})
    else:
        bare = Bare(args)
        for s in range(0, args.n, args.batch):
            bare.step(x[s : s + args.batch], query=False)
    print(json.dumps({"rss": rss_bytes() - before}))


def measure_memory(argv: list[str], side: str) -> int:
    cmd = [sys.executable, __file__, *argv, "--memory-child", side]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["rss"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return
    print(
        f"n={args.n} dim={args.dim} batch={args.batch} M={args.m} efC={args.ef_construction}"
        f" ef={args.ef} k={args.k} query threads={args.threads} exact limit={args.exact_limit}"
    )
    r = run(args)
    print(f"GainIndex            {r['ours']:9.0f} samples/s  (target >= {TARGET_RATE:.0f})")
    print(
        f"bare hnswlib         {r['bare']:9.0f} samples/s"
        f"  ratio GainIndex/bare {r['ours'] / r['bare']:.3f}"
    )
    print(
        f"numpy brute force    {r['brute']:9.0f} samples/s"
        f"  ratio GainIndex/brute {r['ours'] / r['brute']:.3f}"
        "  (sampled batches across the run)"
    )
    beyond = (
        f"{r['recall_beyond_prefix']:.5f} past the exact limit"
        if args.n > args.exact_limit
        else "every sample within the exact limit"
    )
    print(
        f"recall@{args.k} vs brute force  {r['recall_all']:.5f} all, {beyond}"
        f"  (target >= {TARGET_RECALL})"
    )
    print(
        f"gain error vs exact  mean {r['error_mean']:.2e}, p99 {r['error_p99']:.2e}, max "
        f"{r['error_max']:.2e}; {100 * r['exact_share']:.2f}% of gains within 1e-6 of exact"
    )
    if not args.no_memory:
        ours, bare = (measure_memory(argv, side) for side in ("ours", "bare"))
        print(
            f"memory (RSS growth)  GainIndex {ours / 2**20:.0f} MiB, bare hnswlib (vectors + "
            f"graph) {bare / 2**20:.0f} MiB, ratio {ours / bare:.3f}  (target <= {TARGET_MEMORY})"
        )


if __name__ == "__main__":
    main()
