"""End-to-end throughput through Kafka, in one run on one broker, against two baselines.

1. **core**: `infogrowth curate` on a JSONL file (parse, validate, gain, select; no Kafka).
2. **bare Kafka**: a transactional read-process-write loop with confluent-kafka, two hops
   (`src → mid → out`, as raw-samples → scored → accepted), batches of ``--batch``, each
   batch's source offsets committed in its transaction, records of the pipeline's size and
   no processing: what Kafka transactions alone allow on this machine. Run before and
   after the pipelines; the ratios are to the mean of the two.
3. **pipeline**: RawSample records produced into `raw-samples` (encoded before the clock
   starts, as for the bare loop; `ingest`'s own rate is printed apart), one `infogrowth worker`
   (inference → curator agents, exactly-once), outcomes read back from
   `accepted`/`rejected` as they are committed. Afterwards the worker's /metrics say how
   many of those seconds the model step and the gain step took; the rest is Kafka, Faust,
   Avro and asyncio.
   Then the same with the stages in two worker processes (`--worker-roles inference,captioner`
   and `--worker-roles curator`): does one interpreter (one GIL) for both stages hold the
   pipeline back? Both with the default ``curator_process`` (the curator's gain and policy
   in a child process, the next batch selected while one is sent); each round then runs
   the two processes once more with it off (``--no-curator-process``), for what it gives.
   Then with the curator in ``--shards`` shards, one process each (centroids
   fitted on the first samples; README "Sharded curator"): an approximation of the
   unsharded curation, so the share of decisions that differ from it (both curated
   offline) is printed beside.
   With ``--repeat R``, R rounds of (bare loop, one worker, two processes), each pipeline's
   ratio taken to its own round's bare loop, and their spread: this VM's speed swings within
   the hour, so one run per configuration says little about a target.
4. **inference workers** (``--images``, 0 skips): the packaged encoder on real photos over
   4 partitions of `raw-samples`, with one worker process, then with two (a second process
   running only the inference agent).

Samples in 1-3 carry precomputed embeddings (no model runs). Workers are started and
warmed up first (Faust start-up, the first rebalance and model loading are not
throughput), and so are the clients of the bare loop and the feed's producer (see
``ready_producer``); each clock runs from the first produced record to the last committed
outcome.

Uses the local broker and S3 of `make up` (started if not running).

    .venv/bin/python bench/pipeline_bench.py --n 3000 --images 300
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from subprocess import Popen
from threading import Barrier

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from gain_bench import clustered
from PIL import Image, ImageEnhance
from shard_bench import compare

from infogrowth.commands.demo import _package_images, demo_settings
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.offline import curate_file, curate_outcomes, make_curator
from infogrowth.commands.pipeline import ensure_pipeline_topics, start_worker, stop_worker
from infogrowth.commands.shards import save
from infogrowth.core.shards import fit
from infogrowth.io.avro import AvroSerde
from infogrowth.io.cpu import child_pids, cpu_seconds
from infogrowth.io.files import read_rows
from infogrowth.io.kafka_io import ensure_topics, make_producer, read_topic
from infogrowth.io.messages import raw_record
from infogrowth.settings import Settings
from infra import free_port
from infra.__main__ import cmd_up, services

WARM = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="samples (default 10000)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimensions (default 512)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--clusters", type=int, default=500, help="clusters (default 500)")
    p.add_argument("--images", type=int, default=300, help="photos for 1 vs 2 inference workers")
    p.add_argument(
        "--shards", type=int, default=2, help="curator shards of the last run (0 skips; default 2)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of (bare loop, one worker, two processes), each pipeline's ratio taken to"
        " the bare loop of its round; more than 1 prints them all and their spread (default 1)",
    )
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


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


# --- 2. the bare transactional loop ---------------------------------------------------
PROBE = "bench-probe"  # where a new producer delivers once before a clock starts


def ready_producer(bootstrap: str) -> Producer:
    """A producer that has delivered a record. librdkafka's idempotent producer asks for its
    producer id ~0.5 s after it starts (its first try finds no broker connection yet):
    the first delivery of a new one took 0.505 s here, 0.002 s without idempotence. A
    crawler's producer is long-lived, so the feed's is made ready before the clock."""
    producer = make_producer(bootstrap)
    producer.produce(PROBE, b"ready")
    producer.flush(30)
    return producer


def bare_hop(bootstrap: str, src: str, dst: str, n: int, batch: int, ready: Barrier) -> None:
    """Moves ``n`` records from ``src`` to ``dst``, one transaction per batch. Its clients
    are set up, and its transactional id registered, before ``ready`` lets the clock start."""
    name = f"bare-{src}-{dst}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = make_producer(bootstrap, **{"transactional.id": name})
    producer.init_transactions()
    consumer.subscribe([src])
    ready.wait()
    moved = 0
    while moved < n:
        msgs = [m for m in consumer.consume(batch, timeout=0.5) if not m.error()]
        if not msgs:
            continue
        producer.begin_transaction()
        for msg in msgs:
            producer.produce(dst, key=msg.key(), value=msg.value())
        offsets = consumer.position(consumer.assignment())
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
        producer.commit_transaction()
        moved += len(msgs)
    consumer.close()


def encode_rows(rows: Path) -> list[tuple[bytes, bytes]]:
    """(key, RawSample value) of each row, encoded once, before any clock starts."""
    serde = AvroSerde("RawSample")
    records = [raw_record(json.loads(line)) for line in rows.open()]
    return [(r["id"].encode(), serde.encode(r)) for r in records]


def feed(producer: Producer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Produces pre-encoded records, as a crawler's producer would: the same feed for the
    bare loop and the pipelines (JSON parsing and Avro encoding are ``ingest``'s work, timed
    on their own)."""
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    producer.flush(60)


def bare_kafka(run: Settings, messages: list[tuple[bytes, bytes]], batch: int) -> float:
    """Seconds for the RawSample ``messages`` through two concurrent transactional hops."""
    n = len(messages)
    tag = uuid.uuid4().hex[:6]
    src, mid, out = (f"bare-{tag}.{t}" for t in ("src", "mid", "out"))
    ensure_topics(run.kafka_bootstrap, [src, mid, out])
    producer = ready_producer(run.kafka_bootstrap)
    ready = Barrier(3, timeout=120)  # a hop that fails to start breaks it: no endless wait
    hops = [
        threading.Thread(target=bare_hop, args=(run.kafka_bootstrap, a, b, n, batch, ready))
        for a, b in ((src, mid), (mid, out))
    ]
    for hop in hops:
        hop.start()
    ready.wait()
    started = time.perf_counter()
    feed(producer, src, messages)
    for hop in hops:
        hop.join()
    elapsed = time.perf_counter() - started
    assert sum(1 for _ in read_topic(run.kafka_bootstrap, out)) == n
    drop_topics(run.kafka_bootstrap, f"bare-{tag}.")
    return elapsed


# --- 3. the pipeline, with a profile from the worker's metrics ------------------------
ONE_PROCESS = ("inference,captioner,curator",)
TWO_PROCESSES = ("inference,captioner", "curator")  # each stage its own interpreter
BOOTSTRAP = 2_000  # samples the sharded run's centroids are fitted on


def pipeline(
    run: Settings,
    warm: Path,
    messages: list[tuple[bytes, bytes]],
    ids: set[str],
    timeout: float,
    roles: tuple[str, ...],
) -> dict:
    """One worker process per entry of ``roles`` (the agents it runs), on topics of their own."""
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    run = demo_settings(run, tag)
    ensure_pipeline_topics(run)
    workers = [replace(run, worker_roles=r, metrics_port=free_port()) for r in roles]
    logs = [Path(run.data_dir) / f"{run.app_id}-{i}.log" for i in range(len(roles))]
    procs = [start_worker(w, log_path=str(log)) for w, log in zip(workers, logs, strict=True)]
    watch = OutcomeWatch(run)
    try:
        warm_ids = {json.loads(line)["id"] for line in warm.open()}
        ingest_file(warm, run, progress=False)
        watch.until(warm_ids, timeout, procs)
        before, threads_before = step_seconds(workers), thread_seconds(workers)
        broker = services(run)[0].pid()
        producer = ready_producer(run.kafka_bootstrap)
        pids = {role_name(r, i): p.pid for i, (r, p) in enumerate(zip(roles, procs, strict=True))}
        cpu_before = cpu_use(pids, broker)
        started = time.perf_counter()
        feed(producer, run.topic_raw, messages)
        produced_s = time.perf_counter() - started
        steady = watch.until(ids, timeout, procs)
        elapsed = time.perf_counter() - started
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_use(pids, broker).items()}
        after, threads_after = step_seconds(workers), thread_seconds(workers)
    except RuntimeError:  # a worker exited: why
        for log in logs:
            errors = [line for line in log.read_text().splitlines() if "] [ERROR] " in line]
            print(f"--- {log}\n" + "\n".join(errors[:5]))
        raise
    finally:
        watch.consumer.close()
        for proc in procs:
            stop_worker(proc)
        drop_topics(run.kafka_bootstrap, tag)
    steps = {k: v - before.get(k, 0.0) for k, v in after.items()}
    threads = {
        name: {t: v - was.get(t, 0.0) for t, v in now.items()}
        for name, was, now in zip(pids, threads_before, threads_after, strict=True)
    }
    return {
        "threads": threads,
        "seconds": elapsed,
        "produced_s": produced_s,
        "steps": steps,
        "steady": steady,
        "cpu": cpu,
        "arrived": [t - started for t in watch.arrived],
    }


@dataclass
class Round:
    """One round of ``--repeat``: the bare loop, then both pipelines, on the same feed."""

    bare_s: float
    one: dict
    two: dict
    # two processes, the curator's selection on a thread of its own (--no-curator-process)
    in_thread: dict | None = None


TARGET = 2000  # samples/s end to end (issue 10), and a quarter of the bare loop
TARGET_SHARE = 0.25


def print_rounds(rounds: list[Round], n: int) -> None:
    """Every round's rates, and their spread: one run per configuration swings with this
    VM's speed (its bare loop ran 2.3k-6.3k records/s within hours)."""
    configs = [("one worker", "one"), ("two processes", "two")]
    if all(r.in_thread is not None for r in rounds):
        configs.append(("selection in-thread", "in_thread"))
    print(f"\n{len(rounds)} rounds, each pipeline to the bare loop of its round:")
    header = "  round  bare loop   one worker          two processes"
    print(header + ("      selection in-thread" if len(configs) > 2 else ""))
    for i, r in enumerate(rounds, 1):
        bare = n / r.bare_s
        rates = [n / getattr(r, key)["seconds"] for _, key in configs]
        cells = " ".join(f"{rate:7.0f}/s ({rate / bare:4.0%})" for rate in rates)
        print(f"  {i:5d} {bare:7.0f}/s {cells}")
    for name, key in configs:
        # (samples/s, its share of the round's bare loop): a share is a ratio of seconds
        runs = [
            (n / getattr(r, key)["seconds"], r.bare_s / getattr(r, key)["seconds"]) for r in rounds
        ]
        rates = sorted(rate for rate, _ in runs)
        met = sum(1 for rate in rates if rate >= TARGET)
        held = sum(1 for _, share in runs if share >= TARGET_SHARE)
        median = rates[len(rates) // 2]
        print(
            f"  {name}: min {rates[0]:.0f}, median {median:.0f}, max {rates[-1]:.0f} samples/s;"
            f" >= {TARGET}/s in {met} of {len(rates)} rounds, >= {TARGET_SHARE:.0%} of its"
            f" round's bare loop in {held} of {len(rates)}"
        )


def print_details(result: dict) -> None:
    """A pipeline run's full rate, where the machine's CPU went, and its fill and drain."""
    print(f"  full (10th to 90th percentile of the outcomes) {result['steady']:8.0f} samples/s")
    print_cpu(result["cpu"])
    print_threads(result["threads"])
    print_arrivals(result["arrived"])


def role_name(roles: str, i: int) -> str:
    """A worker's name in the CPU line: its agents, numbered when several run the same."""
    return "worker" if roles == ONE_PROCESS[0] else f"{roles.replace(',captioner', '')} {i}"


def print_cpu(cpu: dict[str, float]) -> None:
    total = cpu["busy"] + cpu["idle"]
    workers = {k[len("worker:") :]: v for k, v in cpu.items() if k.startswith("worker:")}
    other = cpu["busy"] - sum(workers.values()) - cpu["broker"] - cpu["bench"]
    each = ", ".join(f"{name} {s / total:.0%} ({s:.1f} s)" for name, s in workers.items())
    print(
        f"  CPU of the machine over that time ({total:.1f} core-s): {each},"
        f" broker {cpu['broker'] / total:.0%}, producer and"
        f" outcome watch {cpu['bench'] / total:.0%}, other {other / total:.0%},"
        f" idle {cpu['idle'] / total:.0%}"
    )


def print_threads(threads: dict[str, dict[str, float]]) -> None:
    """Where each worker's CPU went, by thread (MainThread: the event loop; the index
    thread: the curator's gain and policy; the model thread: the encoder)."""
    for worker, seconds in threads.items():
        busy = sorted(((s, t) for t, s in seconds.items() if s >= 0.05), reverse=True)
        each = ", ".join(f"{t} {s:.1f} s" for s, t in busy) or "none above 0.05 s"
        print(f"  {worker}, CPU by thread: {each}")


def print_arrivals(arrived: list[float]) -> None:
    """When the outcomes came: how long the pipeline took to fill and to drain."""
    at = [arrived[min(len(arrived) - 1, len(arrived) * q // 10)] for q in (0, 1, 5, 9)]
    print(
        "  outcomes committed (s after the first record): first {:.2f}, 10% {:.2f},"
        " half {:.2f}, 90% {:.2f}, last {:.2f}".format(*at, arrived[-1])
    )


def cpu_use(workers: dict[str, int], broker: int | None) -> dict[str, float]:
    """CPU seconds so far: the workers, the broker, this process (producer and outcome
    watch), and the whole machine's busy and idle time (Linux /proc)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    mine = os.times()
    children = {  # its selection process (and multiprocessing's resource tracker)
        f"worker:{name} selection": sum(_process_cpu(child) for child in kids)
        for name, pid in workers.items()
        if (kids := child_pids(pid))
    }
    return {
        **{f"worker:{name}": _process_cpu(pid) for name, pid in workers.items()},
        **children,
        "broker": _process_cpu(broker) if broker else 0.0,
        "bench": mine.user + mine.system,
        "busy": (sum(ticks[:8]) - idle) / tick,
        "idle": idle / tick,
    }


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    seconds = cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"no /proc entry for process {pid}")
    return seconds


class OutcomeWatch:
    """The committed outcomes' keys (sample ids), read as they come: the clock stops at the
    last expected one, not at the next poll of the topics."""

    def __init__(self, run: Settings) -> None:
        self.seen: set[str] = set()
        self.arrived: list[float] = []  # perf_counter() of each expected outcome, by until()
        self.consumer = Consumer(
            {
                "bootstrap.servers": run.kafka_bootstrap,
                "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        self.consumer.subscribe([run.topic_accepted, run.topic_rejected])

    def until(self, ids: set[str], timeout: float, workers: list[Popen]) -> float:
        """Waits for an outcome of each of ``ids``; returns the samples/s between the 10th
        and the 90th percentile of their arrival (the pipeline full, not filling or draining)."""
        deadline = time.monotonic() + timeout
        arrived: list[float] = []
        while not ids <= self.seen:
            for msg in self.consumer.consume(1000, timeout=0.05):
                key = None if msg.error() else msg.key().decode()
                if key is not None and key not in self.seen:
                    self.seen.add(key)
                    if key in ids:
                        arrived.append(time.perf_counter())
            if any(w.poll() is not None for w in workers):
                raise RuntimeError("a worker exited before the outcomes were in")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids - self.seen)} samples without an outcome")
        self.arrived = arrived
        first, last = len(arrived) // 10, len(arrived) * 9 // 10
        span = arrived[last - 1] - arrived[first] if last - 1 > first else 0.0
        return (last - 1 - first) / span if span > 0 else float("nan")


def worker_metric(worker: Settings, name: str, label: str) -> dict[str, float]:
    """A worker's metric ``name`` by the value of its ``label`` (its /metrics page)."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pattern = name + r"\{" + label + r'="([^"]+)"\} ([0-9.e+-]+)'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text)}


def step_seconds(workers: list[Settings]) -> dict[str, float]:
    """Seconds spent per executor step so far (infogrowth_batch_seconds_sum), all workers."""
    steps: dict[str, float] = {}
    for w in workers:
        for step, seconds in worker_metric(w, "infogrowth_batch_seconds_sum", "step").items():
            steps[step] = steps.get(step, 0.0) + seconds
    return steps


def thread_seconds(workers: list[Settings]) -> list[dict[str, float]]:
    """Each worker's CPU seconds so far by thread (infogrowth_thread_cpu_seconds_total)."""
    return [worker_metric(w, "infogrowth_thread_cpu_seconds_total", "thread") for w in workers]


# --- 4. the packaged encoder on one and on two inference workers ----------------------
def write_photos(out: Path, n: int, seed: int) -> Path:
    """``n`` distinct JPEGs: random crops and brightness of the packaged photos."""
    rng = np.random.default_rng(seed)
    photos = sorted(_package_images().values())
    (out / "img").mkdir(parents=True, exist_ok=True)
    with open(out / "photos.jsonl", "w") as fh:
        for i in range(n):
            path, caption = photos[i % len(photos)]
            img = Image.open(path).convert("RGB")
            w, h = img.size
            x, y = int(rng.integers(w // 8)), int(rng.integers(h // 8))
            img = img.crop((x, y, x + w * 7 // 8, y + h * 7 // 8)).resize((256, 256))
            img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            (out / "img" / f"{i}.jpg").write_bytes(buf.getvalue())
            fh.write(
                json.dumps({"id": f"p{seed}-{i}", "image": f"img/{i}.jpg", "caption": caption})
            )
            fh.write("\n")
    return out / "photos.jsonl"


def inference_workers(
    base: Settings, work: Path, images: int, workers: int, timeout: float
) -> float:
    tag = f"bench-enc{workers}-{uuid.uuid4().hex[:6]}"
    run = replace(
        demo_settings(base, tag),
        encoder="packaged",
        raw_partitions=4,
        metrics_port=0,
        data_dir=str(work / f"enc{workers}"),
    )
    ensure_pipeline_topics(run)
    procs: list[Popen] = [start_worker(run, log_path=str(work / f"enc{workers}-0.log"))]
    for i in range(1, workers):
        second = replace(run, worker_roles="inference")
        procs.append(start_worker(second, log_path=str(work / f"enc{workers}-{i}.log")))
    watch = OutcomeWatch(run)
    try:
        warm = write_photos(work / f"warm{workers}", 16, seed=100 + workers)
        ingest_file(warm, run, progress=False)
        watch.until({json.loads(line)["id"] for line in warm.open()}, timeout, procs)
        rows = write_photos(work / f"rows{workers}", images, seed=workers)
        ids = {json.loads(line)["id"] for line in rows.open()}
        started = time.perf_counter()
        ingest_file(rows, run, progress=False)
        watch.until(ids, timeout, procs)
        return time.perf_counter() - started
    finally:
        watch.consumer.close()
        for proc in procs:
            stop_worker(proc)
        drop_topics(run.kafka_bootstrap, tag)


def against_unsharded(rows: Path, unsharded: Settings, sharded: Settings) -> str:
    """How far the sharded curation is from the unsharded one, both offline, measured as
    bench/shard_bench.py does. Nearly every sample of this bench's data is kept, so its
    verdicts say little; the gains say how often a sample's nearest kept samples lay in
    another shard (shard_bench measures the approximation on data made for it)."""
    exact, by_shard = (
        curate_outcomes(read_rows(rows), make_curator(s), None, False) for s in (unsharded, sharded)
    )
    result = compare(exact, by_shard)
    return (
        f"against the unsharded curation (offline): {sum(result.flips.values())} of"
        f" {len(exact)} verdicts and {np.mean(result.gain_error >= 1e-6):.1%} of the gains differ"
    )


def drop_topics(bootstrap: str, tag: str) -> None:
    """Deletes the topics of one bench run (those whose name holds ``tag``): `raw-samples`
    and `scored` keep everything forever, and left behind a few runs of 45,000 samples had
    filled the dev VM's broker with 40 GB."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [name for name in admin.list_topics(timeout=30).topics if tag in name]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
        with contextlib.suppress(KafkaException):  # best effort: the numbers are printed
            future.result(timeout=30)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Settings.from_env(
        encoder="precomputed", batch_size=args.batch, take_within=0.2, policy="threshold"
    )
    cmd_up(base)
    ensure_topics(base.kafka_bootstrap, [PROBE])
    vectors = clustered(args.n + WARM, args.dim, args.clusters, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = replace(base, data_dir=str(work / "data"))  # topics: per pipeline run
        Path(run.data_dir).mkdir(parents=True)
        ids = [f"s{i:07d}" for i in range(args.n)]
        warm = write_rows(
            work / "warm.jsonl", [f"warm{i:03d}" for i in range(WARM)], vectors[:WARM], 1
        )
        rows = write_rows(work / "rows.jsonl", ids, vectors[WARM:], seed=2)

        core_s = timed(lambda: curate_file(rows, work / "offline.jsonl", run, progress=False))
        ingest_topic = f"bench-ingest-{uuid.uuid4().hex[:6]}"
        ingest_s = timed(lambda: ingest_file(rows, run, topic=ingest_topic, progress=False))
        drop_topics(run.kafka_bootstrap, ingest_topic)
        messages = encode_rows(rows)  # the feed of the bare loops and the pipelines
        bare_kafka(run, encode_rows(warm), args.batch)  # loads the transaction coordinator
        in_thread = replace(run, curator_process=False)
        rounds = [
            Round(
                bare_kafka(run, messages, args.batch),
                pipeline(run, warm, messages, set(ids), args.timeout, ONE_PROCESS),
                pipeline(run, warm, messages, set(ids), args.timeout, TWO_PROCESSES),
                pipeline(in_thread, warm, messages, set(ids), args.timeout, TWO_PROCESSES),
            )
            for _ in range(max(1, args.repeat))
        ]
        bare_s, streamed, split = rounds[0].bare_s, rounds[0].one, rounds[0].two
        sharded = None
        if args.shards > 1:
            bootstrap = vectors[WARM : WARM + BOOTSTRAP]
            centroids = save(fit(bootstrap, args.shards), str(work), run)
            by_shard = replace(run, shards=args.shards, centroids=centroids)
            roles = (TWO_PROCESSES[0],) + ("curator",) * args.shards
            sharded = pipeline(by_shard, warm, messages, set(ids), args.timeout, roles)
            sharded["differ"] = against_unsharded(rows, run, by_shard)
        # Again after the pipelines: this VM's speed swings within minutes (bare Kafka ran
        # 1.7k-4.8k records/s), so the ratios are taken to the mean of the two.
        bare_after_s = bare_kafka(run, messages, args.batch)
        encoded = {
            w: inference_workers(base, work, args.images, w, args.timeout)
            for w in ((1, 2) if args.images else ())
        }
        drop_topics(base.kafka_bootstrap, PROBE)

    n, stream_s = args.n, streamed["seconds"]
    bare_rates = (n / bare_s, n / bare_after_s)
    bare_s = n / (sum(bare_rates) / 2)
    print(f"\n{n} samples, {args.dim}-d precomputed embeddings, batch {args.batch}")
    print(f"core library (curate)        {n / core_s:8.0f} samples/s")
    print(f"ingest (JSONL -> raw-samples) {n / ingest_s:7.0f} rows/s  (the runs below are fed")
    print("  pre-encoded records, as the bare loop is: a crawler's producer, not this CLI)")
    print(
        f"bare Kafka, 2 tx hops        {n / bare_s:8.0f} records/s"
        f"  (mean of {bare_rates[0]:.0f} before and {bare_rates[1]:.0f} after the pipelines)"
    )
    print(
        f"pipeline (1 worker)          {n / stream_s:8.0f} samples/s"
        f"  = {bare_s / stream_s:.1%} of bare Kafka (producing took {streamed['produced_s']:.1f} s)"
    )
    print_details(streamed)
    print(f"  of its {stream_s:.1f} s, in the model/gain executor:")
    for step, seconds in sorted(streamed["steps"].items(), key=lambda kv: -kv[1]):
        print(f"    {step:<24} {seconds:7.1f} s  ({seconds / stream_s:.0%})")
    split_s = split["seconds"]
    print(
        f"pipeline (inference | curator) {n / split_s:6.0f} samples/s"
        f"  = {bare_s / split_s:.1%} of bare Kafka, {stream_s / split_s:.2f}x one worker"
    )
    print_details(split)
    in_thread_run = rounds[0].in_thread
    assert in_thread_run is not None
    print(
        f"pipeline (inference | curator, --no-curator-process) {n / in_thread_run['seconds']:6.0f}"
        f" samples/s  = {bare_s / in_thread_run['seconds']:.1%} of bare Kafka;"
        f" the selection process makes it {in_thread_run['seconds'] / split_s:.2f}x"
    )
    print_details(in_thread_run)
    if sharded is not None:
        print(
            f"pipeline (inference | {args.shards} curator shards) {n / sharded['seconds']:6.0f}"
            f" samples/s, {stream_s / sharded['seconds']:.2f}x one worker"
        )
        print(f"  {sharded['differ']}")
        print_details(sharded)
    if len(rounds) > 1:
        print_rounds(rounds, n)
    for workers, seconds in encoded.items():
        print(
            f"packaged encoder, {workers} inference worker(s), 4 raw partitions: "
            f"{args.images / seconds:6.1f} images/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
