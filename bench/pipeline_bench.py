"""End-to-end throughput through Kafka against the core library alone, on the same data.

Samples carry precomputed embeddings (no model runs), so both sides do the same work:
parse, validate, gain, select. The core side is `infogrowth curate` on a JSONL file. The
streaming side is the real pipeline: RawSample records produced into `raw-samples`, one
`infogrowth worker` (inference → curator agents, Kafka transactions on), outcomes read
back from `accepted`/`rejected`. The worker is started and warmed up first (Faust start-up
and the first rebalance take several seconds and are not throughput); the clock runs from
the first produced record to the last committed outcome.

Uses the local broker and S3 of `make up` (started if not running).

    .venv/bin/python bench/pipeline_bench.py --n 10000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from gain_bench import clustered

from infogrowth.demo import demo_settings
from infogrowth.ingest import ingest_file
from infogrowth.offline import curate_file
from infogrowth.pipeline import ensure_pipeline_topics, start_worker, stop_worker
from infogrowth.pipeline import wait_for_outcomes as wait
from infogrowth.settings import Settings
from infra.__main__ import cmd_up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="samples (default 10000)")
    p.add_argument("--dim", type=int, default=256, help="embedding dimensions (default 256)")
    p.add_argument("--batch", type=int, default=256, help="agent batch size (default 256)")
    p.add_argument("--clusters", type=int, default=500, help="clusters (default 500)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait (default 900)")
    return p.parse_args(argv)


def write_rows(path: Path, ids: list[str], images: np.ndarray, seed: int) -> Path:
    """Aligned pairs: the caption embedding is a noisy copy of the image embedding."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(images.shape, dtype=np.float32) / np.sqrt(images.shape[1])
    texts = images + 0.3 * noise  # cosine to the image ~0.96
    with open(path, "w") as fh:
        for sample_id, img, txt in zip(ids, images, texts, strict=True):
            row = {"id": sample_id, "caption": f"sample {sample_id}", "source": "bench"}
            row.update(image_embedding=img.tolist(), text_embedding=txt.tolist())
            fh.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Settings.from_env(
        encoder="precomputed", batch_size=args.batch, take_within=0.2, policy="threshold"
    )
    cmd_up(base)
    run = demo_settings(base, f"bench-{uuid.uuid4().hex[:6]}")
    vectors = clustered(args.n + 64, args.dim, args.clusters, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = replace(run, data_dir=str(work / "data"))
        warm_ids = [f"warm{i:03d}" for i in range(64)]
        ids = [f"s{i:07d}" for i in range(args.n)]
        warm = write_rows(work / "warm.jsonl", warm_ids, vectors[:64], seed=1)
        rows = write_rows(work / "rows.jsonl", ids, vectors[64:], seed=2)

        started = time.perf_counter()
        curate_file(rows, work / "offline.jsonl", run, progress=True)
        core_s = time.perf_counter() - started

        ensure_pipeline_topics(run)
        worker = start_worker(run, log_path=str(work / "worker.log"))
        try:
            ingest_file(warm, run, progress=False)
            wait(run, set(warm_ids), timeout_s=args.timeout, worker=worker)
            started = time.perf_counter()
            ingest_file(rows, run, progress=True)
            produced_s = time.perf_counter() - started
            wait(run, set(ids) | set(warm_ids), timeout_s=args.timeout, worker=worker)
            stream_s = time.perf_counter() - started
        finally:
            stop_worker(worker)

    core, stream = args.n / core_s, args.n / stream_s
    print(f"\n{args.n} samples, {args.dim}-d precomputed embeddings, agent batch {args.batch}")
    print(f"core library (curate)   {core:8.0f} samples/s")
    print(f"through Kafka (worker)  {stream:8.0f} samples/s  (producing took {produced_s:.1f} s)")
    print(f"ratio Kafka/core        {stream / core:8.3f}")
    print("(outcomes are polled every 2 s, so the Kafka figure is a slight underestimate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
