"""Curator recovery: full replay of the table vs the newest snapshot plus the table's tail.

Builds the curator table of ``--n`` indexed samples (binary changelog values, as
agents/curator.py writes them, image and text vectors), a snapshot of the index after the
first ``n - tail`` of them, and times what a restarted curator does before its first batch:
decode the changelog values, then ``curator_state.restore`` with and without the snapshot.
No Kafka or S3: reading the changelog and fetching the snapshot come on top of both.
Also compares the gains of ``--queries`` later samples against the two restored indexes
(``GainIndex.from_bytes`` continues hnswlib's level generator, so they should be equal).

    .venv/bin/python bench/recovery_bench.py --n 100000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gain_bench import clustered

from agents import curator_state as state_codec
from infogrowth.core.gain import GainIndex
from infogrowth.core.sample import AcceptAll


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="indexed samples (default 100000)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimensions (default 512)")
    p.add_argument("--tail", type=int, default=1000, help="samples after the snapshot")
    p.add_argument("--queries", type=int, default=2000, help="later samples compared")
    return p.parse_args(argv)


def changelog(images: np.ndarray, texts: np.ndarray) -> dict[str, bytes]:
    return {
        f"s{i:07d}": state_codec.encode(
            state_codec.indexed(i, {"image": img, "text": txt}, None, 0.5)
        )
        for i, (img, txt) in enumerate(zip(images, texts, strict=True))
    }


def recover(values: dict[str, bytes], snapshot: bytes | None) -> tuple[GainIndex, float]:
    started = time.perf_counter()
    snap = None if snapshot is None else GainIndex.from_bytes(snapshot)
    covered = set(snap.ids) if snap is not None else set()  # as read_and_restore decodes
    entries = {k: state_codec.decode(v, vectors=k not in covered) for k, v in values.items()}
    restored = state_codec.restore(entries, GainIndex(), AcceptAll(), snap)
    restored.index.sync()  # the re-inserts run in the background: they count here
    return restored.index, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x = clustered(2 * (args.n + args.queries), args.dim, 500, seed=0)
    images, texts = x[: args.n + args.queries], x[args.n + args.queries :]
    values = changelog(images[: args.n], texts[: args.n])
    prefix = dict(list(values.items())[: args.n - args.tail])
    built, prefix_s = recover(prefix, None)
    blob = built.to_bytes()
    del built
    from_snapshot, snapshot_s = recover(values, blob)
    full, full_s = recover(values, None)
    assert from_snapshot.ids == full.ids
    later = {"image": images[args.n :], "text": texts[args.n :]}
    ids = [f"q{i}" for i in range(args.queries)]
    gains = [ix.gain_and_add(ids, later).gain for ix in (full, from_snapshot)]
    equal = np.mean((gains[0] == gains[1]) | (np.isnan(gains[0]) & np.isnan(gains[1])))
    size = f"snapshot {len(blob) / 1e6:.0f} MB"
    print(f"\n{args.n} indexed samples, {args.dim}-d image + text, {size}")
    print(f"full replay (decode + re-insert all)     {full_s:7.1f} s")
    print(f"snapshot + tail of {args.tail:<6d}                {snapshot_s:7.1f} s")
    print(f"(replaying the {args.n - args.tail} covered samples alone took {prefix_s:.1f} s)")
    print(f"later gains byte-identical: {equal:.4f} of {args.queries}")
    print(f"max abs difference {np.nanmax(np.abs(gains[0] - gains[1])):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
