"""How far S sharded curators are from one: decisions and gains of S=4 against S=1.

One seeded clustered set of unit vectors (``--coarse`` groups, each with fine clusters of
points at varying spread, so gains and duplicates vary), curated twice with the core
library (no Kafka): once by one curator (S=1, exact), once by S curators routed by k-means
centroids fitted on the first ``--fit`` vectors (``infogrowth.core.shards``). Both see the
same batches in the same order; only the selection step runs (embeddings are given).

Single-modal mode with one label for every sample, so the index holds the image vectors
only (the multimodal index holds image and text and would only double the time). The
threshold policy with ``--tau`` and ``--dup-distance`` decides.

Printed: verdict (decision and reason) and accept/reject agreement, how many verdicts flip
(and which way), and the gain error |gain(S) - gain(1)| (mean, p99, max) over the samples
both runs give a gain.

    .venv/bin/python bench/shard_bench.py                # 100k x 512, S=4
    .venv/bin/python bench/shard_bench.py --n 20000 --shards 8
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from infogrowth.commands.offline import make_curator
from infogrowth.core.curate import Curator, Scored
from infogrowth.core.encode import Encoded
from infogrowth.core.shards import ShardedCurator, fit
from infogrowth.records import Outcome, Sample
from infogrowth.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    p.add_argument("--dim", type=int, default=512, help="dimensions (default 512)")
    p.add_argument("--shards", type=int, default=4, help="shards S compared to 1 (default 4)")
    p.add_argument("--coarse", type=int, default=40, help="coarse groups (default 40)")
    p.add_argument("--fine", type=int, default=2000, help="fine clusters (default 2000)")
    p.add_argument("--fit", type=int, default=10_000, help="bootstrap sample (default 10000)")
    p.add_argument("--tau", type=float, default=0.3, help="gain threshold (default 0.3)")
    p.add_argument("--dup-distance", type=float, default=0.1, help="default 0.1")
    p.add_argument("--k", type=int, default=4, help="neighbours (default 4)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="data and k-means seed (default 0)")
    return p.parse_args(argv)


def clustered(args: argparse.Namespace) -> np.ndarray:
    """Unit vectors: coarse groups, fine clusters inside them, points at a per-point spread
    (0.2-1.0 of the fine-cluster scale), in random order."""
    rng = np.random.default_rng(args.seed)
    coarse = rng.standard_normal((args.coarse, args.dim), dtype=np.float32)
    parents = rng.integers(0, args.coarse, args.fine)
    fine = coarse[parents] + 0.8 * rng.standard_normal((args.fine, args.dim), dtype=np.float32)
    x = fine[rng.integers(0, args.fine, args.n)]
    spread = rng.uniform(0.2, 1.0, (args.n, 1)).astype(np.float32)
    x += spread * rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def items_of(vectors: np.ndarray) -> list[Scored]:
    return [
        Scored(Sample(id=f"s{i}", label="x"), Encoded(image_emb=v, text_emb=None, alignment=None))
        for i, v in enumerate(vectors)
    ]


def select_all(curator: Curator, items: list[Scored], batch: int) -> tuple[list[Outcome], float]:
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    for start in range(0, len(items), batch):
        outcomes += curator.select(items[start : start + batch])
    return outcomes, time.perf_counter() - started


@dataclass
class Comparison:
    agree: float  # same verdict: decision and reason
    same_decision: float  # same accept/reject
    flips: Counter[str]
    gain_error: np.ndarray
    accepted: tuple[int, int]


def compare(exact: list[Outcome], sharded: list[Outcome]) -> Comparison:
    def verdict(o: Outcome) -> str:
        return o.reason or o.decision

    pairs = list(zip(exact, sharded, strict=True))
    flips = Counter(f"{verdict(a)} -> {verdict(b)}" for a, b in pairs if verdict(a) != verdict(b))
    errors = [abs(a.gain - b.gain) for a, b in pairs if a.gain is not None and b.gain is not None]
    differ = sum(a.decision != b.decision for a, b in pairs)
    return Comparison(
        agree=1 - sum(flips.values()) / len(pairs),
        same_decision=1 - differ / len(pairs),
        flips=flips,
        gain_error=np.array(errors),
        accepted=tuple(sum(o.decision == "accepted" for o in run) for run in (exact, sharded)),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(
        encoder="precomputed", mode="single", k=args.k, tau=args.tau,
        dup_distance=args.dup_distance, seed=args.seed, batch_size=args.batch,
    )  # fmt: skip
    vectors = clustered(args)
    started = time.perf_counter()
    centroids = fit(vectors[: args.fit], args.shards, args.seed)
    fit_s = time.perf_counter() - started
    items = items_of(vectors)
    routes = Counter(centroids.route(v) for v in vectors)
    exact, exact_s = select_all(make_curator(settings), items, args.batch)
    sharded, sharded_s = select_all(
        ShardedCurator(make_curator(settings), centroids), items_of(vectors), args.batch
    )
    result = compare(exact, sharded)
    err = result.gain_error
    sizes = ", ".join(str(routes[s]) for s in range(args.shards))
    print(
        f"{args.n} x {args.dim}, {args.coarse} coarse groups / {args.fine} fine clusters, "
        f"k={args.k}, tau={args.tau}, dup_distance={args.dup_distance}, batch {args.batch}"
    )
    print(
        f"centroids: k-means on the first {args.fit} vectors in {fit_s:.1f} s; shard sizes {sizes}"
    )
    print()
    print(f"| | S=1 | S={args.shards} |")
    print("|---|---|---|")
    print(f"| accepted | {result.accepted[0]} | {result.accepted[1]} |")
    print(f"| selection time (s) | {exact_s:.1f} | {sharded_s:.1f} |")
    print(f"| verdict agreement (decision and reason) | | {100 * result.agree:.2f}% |")
    print(f"| accept/reject agreement | | {100 * result.same_decision:.2f}% |")
    print(f"| verdicts flipped | | {sum(result.flips.values())} |")
    for flip, count in result.flips.most_common():
        print(f"| &nbsp; {flip} | | {count} |")
    print(
        f"| gain error mean / p99 / max | | {err.mean():.4f} / "
        f"{np.quantile(err, 0.99):.4f} / {err.max():.4f} |"
    )
    print(f"| gains equal (abs error < 1e-6) | | {100 * np.mean(err < 1e-6):.2f}% |")


if __name__ == "__main__":
    main()
