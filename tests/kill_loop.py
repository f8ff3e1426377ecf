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
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import (  # noqa: E402
    Supervised,
    assert_exactly_once_and_offline_equal,
    drain,
    scored_order,
)
from conftest import S3Server  # noqa: E402
from pipeline_helpers import (  # noqa: E402
    embedding_rows,
    run_settings,
    topic_values,
    trickle,
    with_settings,
    write_jsonl,
)
from test_partitions import assert_recaptioned_once, assert_scored_once  # noqa: E402

from infogrowth.commands.pipeline import ensure_pipeline_topics, outcome_count  # noqa: E402
from infogrowth.commands.replay import replay  # noqa: E402
from infogrowth.settings import Settings  # noqa: E402
from infra.__main__ import cmd_up  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=40_000, help="samples (default 40000)")
    p.add_argument("--seed", type=int, default=6, help="faults and data (default 6)")
    p.add_argument("--minutes", type=float, default=15, help="faults stop after (default 15)")
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
    settings = run_settings(
        local.kafka_bootstrap, s3, tmp, encoder="precomputed", policy="threshold", tau=0.08,
        dup_distance=0.02, raw_partitions=4,
    )  # fmt: skip
    settings = with_settings(settings, batch_size=64)
    ensure_pipeline_topics(settings)
    rows = embedding_rows(args.samples, seed=args.seed)
    full = with_settings(settings, worker_roles="inference,captioner,curator")
    workers = [Supervised(full, tmp / f"worker-{i}.log", len(rows)) for i in range(2)]
    print(f"{args.samples} samples, seed {args.seed}, logs in {tmp}", flush=True)
    started = time.monotonic()
    faults: dict[str, int] = {"kill": 0, "stall": 0}
    try:
        for worker in workers:
            worker.start()
        feed = threading.Thread(target=trickle, args=(settings, rows, tmp, 200), daemon=True)
        feed.start()
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
    finally:
        for worker in workers:
            worker.stop()
    fenced = sum(w.log_path.read_text().count("ProducerFenced: There") for w in workers)
    print(f"all outcomes after {time.monotonic() - started:.0f} s; {faults}; fenced {fenced}")
    assert_recaptioned_once(settings)
    assert_scored_once(settings, rows)
    print("no record twice in `scored` or `recaptioned`")
    position = {sample_id: i for i, sample_id in enumerate(scored_order(settings))}
    ordered = sorted(rows, key=lambda r: position.get(r["id"], -1))
    in_order = write_jsonl(tmp / "scored-order.jsonl", ordered)
    assert_exactly_once_and_offline_equal(workers[0], outcomes, in_order, tmp)
    print("one outcome per sample, equal to offline in the order of `scored`")
    streamed = topic_values(settings, settings.topic_accepted)
    replayed = replay(settings, "loop", progress=False)
    assert sorted(topic_values(settings, replayed.accepted_topic)) == sorted(streamed)
    print("replay rebuilds the accepted records")


if __name__ == "__main__":
    main()
