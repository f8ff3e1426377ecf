"""Bounded soak: N samples through one worker while its memory and its consumer lag are
sampled every few seconds; prints RSS growth per 10k samples and checks the lag drains.

Samples carry precomputed embeddings (clustered, like gain_bench), produced in chunks so
the worker runs under a steady stream rather than one burst. The worker's RSS is read from
/proc (the process and its children); lag = records in `raw-samples` minus the offset the
worker's consumer group has committed there. The baseline is the worker's RSS after a
warm-up batch, so start-up (Faust, models off) is not counted as growth.

Uses the local broker and S3 of `make up` (started if not running).

    .venv/bin/python bench/soak_bench.py --n 50000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from gain_bench import clustered
from pipeline_bench import drop_topics, write_rows

from infogrowth.commands.demo import demo_settings
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.pipeline import (
    ensure_pipeline_topics,
    outcome_count,
    raw_count,
    start_worker,
    stop_worker,
)
from infogrowth.commands.pipeline import wait_for_outcomes as wait
from infogrowth.io.cpu import child_pids
from infogrowth.settings import Settings
from infra.__main__ import cmd_up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="samples (default 50000)")
    p.add_argument("--dim", type=int, default=256, help="embedding dimensions (default 256)")
    p.add_argument("--chunk", type=int, default=5_000, help="samples produced at a time")
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait (default 1800)")
    return p.parse_args(argv)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children."""
    total = 0
    for proc in [pid, *child_pids(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def group_lag(settings: Settings) -> int:
    """Records of `raw-samples` the worker's consumer group has not committed yet."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id}
    )
    try:
        committed = consumer.committed([TopicPartition(settings.topic_raw, 0)], timeout=10)
        done = max(committed[0].offset, 0)
    finally:
        consumer.close()
    return raw_count(settings) - done


class Sampler(threading.Thread):
    """(seconds, outcomes, rss, lag) every ``every`` seconds until stopped."""

    def __init__(self, settings: Settings, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.pid, self.every = settings, pid, every
        self.rows: list[tuple[float, int, int, int]] = []
        self.stopped = threading.Event()
        self.began = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()

    def sample(self) -> None:
        row = (
            time.monotonic() - self.began,
            outcome_count(self.settings),
            rss_bytes(self.pid),
            group_lag(self.settings),
        )
        self.rows.append(row)
        print(
            f"  {row[0]:6.0f} s  {row[1]:7d} outcomes  rss {row[2] / 2**20:7.1f} MiB  lag {row[3]}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Settings.from_env(encoder="precomputed", batch_size=256, take_within=0.2)
    cmd_up(base)
    tag = f"soak-{uuid.uuid4().hex[:6]}"
    run = demo_settings(base, tag)
    vectors = clustered(args.n + 64, args.dim, max(args.n // 100, 10), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = replace(run, data_dir=str(work / "data"))
        warm_ids = [f"warm{i:03d}" for i in range(64)]
        warm = write_rows(work / "warm.jsonl", warm_ids, vectors[:64], seed=1)
        ensure_pipeline_topics(run)
        worker = start_worker(run, log_path=str(work / "worker.log"))
        try:
            ingest_file(warm, run, progress=False)
            wait(run, set(warm_ids), timeout_s=args.timeout, worker=worker)
            sampler = Sampler(run, worker.pid, args.every)
            sampler.sample()  # the baseline, after warm-up
            sampler.start()
            ids = list(warm_ids)
            for start in range(0, args.n, args.chunk):
                chunk = [f"s{i:07d}" for i in range(start, min(start + args.chunk, args.n))]
                rows = vectors[64 + start : 64 + start + len(chunk)]
                ingest_file(write_rows(work / "chunk.jsonl", chunk, rows, seed=start), run,
                            progress=False)  # fmt: skip
                ids += chunk
            wait(run, set(ids), timeout_s=args.timeout, worker=worker)
            time.sleep(args.every)  # one more sample after the last commit
            sampler.stopped.set()
            sampler.join()
            sampler.sample()
        finally:
            stop_worker(worker)
            drop_topics(run.kafka_bootstrap, tag)

    report(sampler.rows, args)
    return 0 if sampler.rows[-1][3] == 0 else 1


def report(rows: list[tuple[float, int, int, int]], args: argparse.Namespace) -> None:
    (t0, n0, rss0, _), (t1, n1, rss1, lag1) = rows[0], rows[-1]
    done = max(n1 - n0, 1)
    peak = max(r[2] for r in rows)
    print(f"\n{done} samples, {args.dim}-d precomputed embeddings, {t1 - t0:.0f} s")
    print(f"worker RSS after warm-up   {rss0 / 2**20:8.1f} MiB")
    print(f"worker RSS at the end      {rss1 / 2**20:8.1f} MiB  (peak {peak / 2**20:.1f} MiB)")
    print(f"RSS growth per 10k samples {(rss1 - rss0) / done * 1e4 / 2**20:8.1f} MiB")
    print(f"consumer lag at the end    {lag1:8d}  ({'drained' if lag1 == 0 else 'NOT drained'})")
    per_sample = (rss1 - rss0) / done
    vector_bytes = 2 * args.dim * 4  # image + text, float32
    print(f"growth per sample / raw vector bytes  {per_sample / vector_bytes:6.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
