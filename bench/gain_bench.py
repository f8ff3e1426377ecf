"""Throughput of GainIndex (gain + insert) against bare hnswlib doing the same work.

Both sides see the same seeded clustered vectors, in the same batches, with the same
M / ef_construction / ef / k and serial inserts (GainIndex inserts serially for
deterministic graphs). Per batch, bare hnswlib runs knn_query then add_items; GainIndex
additionally finds neighbours inside the batch exactly and keeps ids/labels. The two are
timed batch by batch, interleaved, so load changes on the machine hit both alike.

    .venv/bin/python bench/gain_bench.py --n 20000
"""

from __future__ import annotations

import argparse
import time

import hnswlib
import numpy as np
from tqdm import tqdm

from infogrowth.gain import GainIndex


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    p.add_argument("--dim", type=int, default=512, help="dimensions (default 512)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--m", type=int, default=48, help="HNSW M (default 48)")
    p.add_argument("--ef-construction", type=int, default=100, help="HNSW efC (default 100)")
    p.add_argument("--ef", type=int, default=32, help="HNSW query ef (default 32)")
    p.add_argument("--k", type=int, default=4, help="neighbours (default 4)")
    p.add_argument("--clusters", type=int, default=1000, help="clusters (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument(
        "--parallel-baseline",
        action="store_true",
        help="also time bare hnswlib with parallel (nondeterministic) inserts",
    )
    return p.parse_args(argv)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors: Gaussian clusters around random centres (seeded)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    x = centres[rng.integers(0, clusters, n)]
    x += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class Bare:
    """The minimal equivalent: query the earlier batches, then insert."""

    def __init__(self, args: argparse.Namespace, insert_threads: int) -> None:
        self.index = hnswlib.Index(space="cosine", dim=args.dim)
        self.index.init_index(max_elements=args.n, M=args.m, ef_construction=args.ef_construction)
        self.index.set_ef(args.ef)
        self.k = args.k
        self.insert_threads = insert_threads
        self.count = 0

    def step(self, x: np.ndarray) -> np.ndarray:
        gain = np.full(len(x), np.nan)
        if self.count:
            _, dist = self.index.knn_query(x, k=min(self.k, self.count))
            gain = dist.mean(axis=1)
        labels = np.arange(self.count, self.count + len(x))
        self.index.add_items(x, labels, num_threads=self.insert_threads)
        self.count += len(x)
        return gain


def run(args: argparse.Namespace) -> dict[str, float]:
    x = clustered(args.n, args.dim, args.clusters, args.seed)
    ids = [f"s{i}" for i in range(args.n)]
    ours = GainIndex(
        modalities=("x",), k=args.k, m=args.m, ef_construction=args.ef_construction, ef=args.ef
    )
    sides: dict[str, Bare] = {"bare": Bare(args, insert_threads=1)}
    if args.parallel_baseline:
        sides["bare_parallel"] = Bare(args, insert_threads=-1)
    seconds = dict.fromkeys(["ours", *sides], 0.0)
    lower = 0  # samples where the exact in-batch pass found a closer neighbour set
    batches = range(0, args.n, args.batch)
    for step, start in enumerate(tqdm(batches, unit="batch", desc="gain+insert")):
        xb, ib = x[start : start + args.batch], ids[start : start + args.batch]
        gains: dict[str, np.ndarray] = {}
        names = ["ours", *sides]
        for name in names if step % 2 == 0 else reversed(names):  # alternate who goes first
            t0 = time.perf_counter()
            if name == "ours":
                gains[name] = ours.gain_and_add(ib, {"x": xb}).gain
            else:
                gains[name] = sides[name].step(xb)
            seconds[name] += time.perf_counter() - t0
        ours_g, bare_g = (np.nan_to_num(gains[name], nan=9.0) for name in ("ours", "bare"))
        lower += int(np.sum(ours_g < bare_g - 1e-6))
    rates = {name: args.n / s for name, s in seconds.items()}
    rates["in_batch_closer_fraction"] = lower / args.n
    return rates


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"n={args.n} dim={args.dim} batch={args.batch} M={args.m} "
        f"efC={args.ef_construction} ef={args.ef} k={args.k}"
    )
    rates = run(args)
    print(f"GainIndex           {rates['ours']:9.0f} samples/s")
    print(f"bare hnswlib        {rates['bare']:9.0f} samples/s  (serial inserts)")
    if "bare_parallel" in rates:
        print(f"bare hnswlib        {rates['bare_parallel']:9.0f} samples/s  (parallel inserts)")
        print(f"ratio vs parallel   {rates['ours'] / rates['bare_parallel']:9.3f}")
    print(f"ratio GainIndex/bare {rates['ours'] / rates['bare']:8.3f}  (target >= 0.8)")
    print(
        f"samples whose gain the in-batch pass lowered: {rates['in_batch_closer_fraction']:.2%}"
        " (bare batching misses those neighbours)"
    )


if __name__ == "__main__":
    main()
