"""Curator recovery: full replay of the table vs the newest snapshot plus the table's tail.

Builds the curator table of ``--n`` indexed samples (binary changelog values, as
agents/curator.py writes them, image and text vectors), a snapshot of the index after the
first ``n - tail`` of them, and times what a restarted curator does before its first batch:
decode the changelog values, then ``curator_state.restore`` with and without the snapshot.
No Kafka or S3: reading the changelog and fetching the snapshot come on top of both.
Also compares the gains of ``--queries`` later samples against the two restored indexes
(``GainIndex.from_bytes`` continues hnswlib's level generator, so they should be equal).

With ``--kafka`` (the broker and S3 of `make up`, started if not running) it then writes
the table to a changelog topic, one transaction per 256 entries, and the snapshot (index and
table) to S3 as the curator does, and times what a restarted curator does from there: the
full replay, the snapshot with the whole changelog read (as before snapshots held the
table), and the snapshot with its table, reading only the changelog's tail. The snapshot
cases count fetching it from S3.

    .venv/bin/python bench/recovery_bench.py --n 100000 --kafka
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import numpy as np
from gain_bench import clustered
from pipeline_bench import drop_topics

from agents import curator_state as state_codec
from agents import snapshot
from infogrowth.core.gain import GainIndex
from infogrowth.core.sample import AcceptAll
from infogrowth.io.kafka_io import ensure_topics, make_producer, topic_id
from infogrowth.io.runs import COMPACTED
from infogrowth.io.store import ObjectStore
from infogrowth.settings import Settings
from infra.__main__ import cmd_up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="indexed samples (default 100000)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimensions (default 512)")
    p.add_argument("--tail", type=int, default=1000, help="samples after the snapshot")
    p.add_argument("--queries", type=int, default=2000, help="later samples compared")
    p.add_argument("--kafka", action="store_true", help="also restore from a real changelog")
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
    if args.kafka:
        from_kafka(values, blob, args.n - args.tail)
    return 0


def write_changelog(bootstrap: str, topic: str, values: dict[str, bytes]) -> dict[str, int]:
    """The values in transactions of 256, as the curator writes them; key -> offset."""
    producer = make_producer(bootstrap, **{"transactional.id": topic})
    producer.init_transactions(30)
    offsets: dict[str, int] = {}
    keys = list(values)
    for start in range(0, len(keys), 256):
        producer.begin_transaction()
        for key in keys[start : start + 256]:

            def sent(err: object, msg: object, key: str = key) -> None:
                offsets[key] = msg.offset()  # type: ignore[attr-defined]

            producer.produce(topic, values[key], json.dumps(key).encode(), 0, on_delivery=sent)
            producer.poll(0)
        producer.commit_transaction(60)
    return offsets


def from_kafka(values: dict[str, bytes], blob: bytes, covered: int) -> None:
    base = Settings.from_env()
    cmd_up(base)
    bootstrap, tag = base.kafka_bootstrap, f"bench-recovery-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [tag], partitions=1, config=COMPACTED)
    store, where = ObjectStore.from_settings(base), snapshot.prefix(tag)
    try:
        started = time.perf_counter()
        offsets = write_changelog(bootstrap, tag, values)
        took = time.perf_counter() - started
        print(f"\nchangelog of {len(values)} entries written in {took:.1f} s")
        keys = list(values)
        last = keys[covered - 1]
        mark = state_codec.Mark(topic_id(bootstrap, tag), offsets[last], json.dumps(last).encode())
        light = ((k, state_codec.decode(values[k], vectors=False)) for k in keys[:covered])
        table = state_codec.pack_table(light, mark)
        print(f"snapshot table {len(table) / 1e6:.1f} MB (index {len(blob) / 1e6:.0f} MB)")
        started = time.perf_counter()
        snapshot.write(store, where, blob, covered, covered, table)
        print(f"snapshot written to S3 in {time.perf_counter() - started:.1f} s")
        cases = [
            ("full replay", False, False),
            ("snapshot, whole changelog read", True, False),
            ("snapshot + table, changelog tail", True, True),
        ]
        for name, with_index, with_table in cases:
            started = time.perf_counter()
            found = snapshot.read(store, where) if with_index else None
            snap = found.index if found else None
            base_table = found.table if found and with_table else None
            _, restored = state_codec.read_and_restore(
                bootstrap, tag, 0, GainIndex(), AcceptAll(), snap, base_table
            )
            restored.index.sync()
            took = time.perf_counter() - started
            assert len(restored.index) == len(values) and restored.read_from == (
                offsets[last] if with_table else 0
            )
            print(f"{name:34s} {took:7.1f} s (changelog from offset {restored.read_from})")
    finally:
        drop_topics(bootstrap, tag)
        for key in store.list(where):
            store.delete(key)


if __name__ == "__main__":
    raise SystemExit(main())
