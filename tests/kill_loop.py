"""A kill-and-stall loop, longer than the fault tests: two full workers (inference,
captioner, curator) over 4 partitions of `raw-samples`, the samples trickling in, and every
3-8 s one worker SIGKILLed and started again, or stopped (SIGSTOP) for 11-16 s, past its
10 s session, and resumed. Then the checks of the fault tests: no record twice in `scored`
or `recaptioned`, one committed outcome per sample, the decisions and gains of
`infogrowth curate` on the samples in the order of `scored`, and replay rebuilding the
accepted records. Uses the broker and S3 of `make up`; not part of the test run (minutes).

    .venv/bin/python tests/kill_loop.py --samples 40000 --seed 6

It found two bugs the fault tests had not: a batch after a transaction marker committed
with the offsets before it (agents/atomic.py, 2026-12-07), and a gate release of more than
1,024 samples decided with the wrong samples' outcomes (core/gain.py, 2026-12-07).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import Supervised, drain  # noqa: E402
from conftest import S3Server  # noqa: E402
from test_partitions import (  # noqa: E402
    assert_nothing_twice_as_offline_and_replayed,
    assert_recaptioned_once,
    two_full_workers,
)

from infogrowth.commands.pipeline import outcome_count  # noqa: E402
from infogrowth.settings import Settings  # noqa: E402
from infra.__main__ import cmd_up  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=40_000, help="samples (default 40000)")
    p.add_argument("--seed", type=int, default=6, help="faults and data (default 6)")
    p.add_argument("--minutes", type=float, default=15, help="faults stop after (default 15)")
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="curator snapshots to S3 every B batches (default 0: none), so kills also land"
        " during uploads and restarts restore from a snapshot and the changelog after it",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="curator shards (default 1); 2 or more route `scored` by centroids fitted on the"
        " samples, and the checks compare each shard with the offline sharded curation",
    )
    return p.parse_args()


def fault(workers: list[Supervised], rng: random.Random) -> str:
    """One worker killed and started again, or stopped past its session and resumed."""
    worker = workers[rng.randrange(len(workers))]
    if rng.random() < 0.5:
        worker.kill()
        worker.start()
        return "kill"
    assert worker.worker is not None
    pid = worker.worker.pid
    os.killpg(pid, signal.SIGSTOP)
    try:
        time.sleep(rng.uniform(11, 16))
    finally:
        os.killpg(pid, signal.SIGCONT)
    return "stall"


def main() -> None:
    args = parse_args()
    local = Settings()
    cmd_up(local)  # the broker and S3 of `make up`, started if not running
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"kill-loop-{args.seed}-"))
    s3 = S3Server(local.s3_endpoint, local.s3_access_key, local.s3_secret_key)
    snapshots = f", a snapshot every {args.snapshot_every} batches" if args.snapshot_every else ""
    shards = f", {args.shards} curator shards" if args.shards > 1 else ""
    print(f"{args.samples} samples, seed {args.seed}{snapshots}{shards}, logs in {tmp}", flush=True)
    started = time.monotonic()
    faults: dict[str, int] = {"kill": 0, "stall": 0}
    with two_full_workers(
        local.kafka_bootstrap,
        s3,
        tmp,
        n=args.samples,
        seed=args.seed,
        batch_size=64,
        snapshot_every=args.snapshot_every,
        shards=args.shards,
    ) as (settings, rows, workers):
        while outcome_count(settings) < len(rows):
            if time.monotonic() - started > args.minutes * 60:
                break
            time.sleep(rng.uniform(3, 8))
            for worker in workers:
                worker.keep_alive()
            faults[fault(workers, rng)] += 1
            elapsed = time.monotonic() - started
            print(f"{elapsed:6.1f} s  {faults}  {outcome_count(settings)} outcomes", flush=True)
        outcomes = drain(workers[0], {r["id"] for r in rows}, timeout_s=300)
    logs = [w.log_path.read_text() for w in workers]
    fenced = sum(text.count("ProducerFenced: There") for text in logs)
    print(f"all outcomes after {time.monotonic() - started:.0f} s; {faults}; fenced {fenced}")
    if args.snapshot_every:
        found = [re.findall(r"(\d+) indexed from a snapshot", text) for text in logs]
        loaded = [int(n) for each in found for n in each if int(n) > 0]
        print(f"restores: {sum(map(len, found))}, {len(loaded)} from a snapshot ({loaded})")
    assert_recaptioned_once(settings)
    assert_nothing_twice_as_offline_and_replayed(settings, rows, workers[0], outcomes, tmp)
    print(
        "passed: no record twice in `scored` or `recaptioned`, one outcome per sample, equal"
        " to offline in the order of `scored`, and replay rebuilds the accepted records"
    )


if __name__ == "__main__":
    main()
