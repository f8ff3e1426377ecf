"""The streaming pipeline on the real broker and S3: worker processes, kill -9, replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer
from pipeline_helpers import (
    embedding_rows,
    run_settings,
    topic_values,
    with_settings,
    write_jsonl,
)

from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.offline import curate_file
from infogrowth.commands.pipeline import (
    ensure_pipeline_topics,
    read_outcomes,
    settings_env,
    start_worker,
    stop_worker,
    wait_for_outcomes,
)
from infogrowth.commands.replay import replay
from infogrowth.io.avro import AvroSerde, decode_any
from infogrowth.io.runs import read_runs, run_ref
from infra._service import pid_alive

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


def _ids(path):
    import json

    return {json.loads(line)["id"] for line in path.read_text().splitlines()}


@pytest.mark.parametrize("in_a_process", [False, True], ids=["selection-here", "selection-process"])
def test_worker_killed_mid_stream_loses_and_duplicates_nothing_and_replay_matches(
    in_a_process, kafka, s3, tmp_path
):
    """``selection-process`` (``curator_process``): the gain and policy in a child process,
    two batches in flight; the same outcomes as offline, and replay rebuilds them."""
    # dup_distance 0.02: the exact re-crawls are duplicates, cluster neighbours redundant.
    settings = run_settings(
        kafka,
        s3,
        tmp_path,
        encoder="precomputed",
        policy="threshold",
        tau=0.08,
        dup_distance=0.02,
        curator_process=in_a_process,
    )
    ensure_pipeline_topics(settings)
    first = write_jsonl(tmp_path / "first.jsonl", embedding_rows(600)[:300])
    second = write_jsonl(tmp_path / "second.jsonl", embedding_rows(600)[300:])
    log = str(tmp_path / "worker.log")

    worker = start_worker(settings, log_path=log)
    try:
        ingest_file(first, settings, progress=False)
        wait_for_outcomes(settings, _ids(first), timeout_s=240, worker=worker)
        ingest_file(second, settings, progress=False)
        # Kill -9 while the second half is being processed (or, at worst, just after).
        deadline = time.monotonic() + 60
        while len(read_outcomes(settings)) <= 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_worker(worker, signal.SIGKILL)
        done_before_restart = len(read_outcomes(settings))
        worker = start_worker(settings, log_path=log)
        outcomes = wait_for_outcomes(
            settings, _ids(first) | _ids(second), timeout_s=300, worker=worker
        )
    finally:
        stop_worker(worker, signal.SIGTERM)

    assert done_before_restart < 600 or pytest.skip("the worker finished before it was killed")
    if in_a_process:  # the child's log lines reach the worker's log
        assert "[selection process]: exact gain search:" in Path(log).read_text(errors="replace")
    accepted = [decode_any(v)[1] for v in topic_values(settings, settings.topic_accepted)]
    ids = [r["id"] for r in accepted]
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert not twice, f"accepted twice: {twice} (of {len(ids)} accepted records)"
    assert set(ids) == {i for i, r in outcomes.items() if r["decision"] == "accepted"}
    reasons = Counter(r.get("reason") for r in outcomes.values())
    assert reasons["redundant"] > 0 and reasons["misaligned"] > 0 and reasons["bad_input"] == 1
    assert reasons["duplicate"] > 0  # the exact re-crawls

    # The same data curated offline gives the same decisions and gains.
    both = write_jsonl(tmp_path / "all.jsonl", embedding_rows(600))
    curate_file(both, tmp_path / "offline.jsonl", settings, progress=False)
    import json

    offline = {
        r["id"]: r for r in map(json.loads, (tmp_path / "offline.jsonl").read_text().splitlines())
    }
    for sample_id, r in outcomes.items():
        assert r["decision"] == offline[sample_id]["decision"], sample_id
        assert r.get("gain") == offline[sample_id]["gain"], sample_id
        assert r.get("reason") == offline[sample_id]["reason"], sample_id
        assert r.get("neighbour") == offline[sample_id]["neighbour"], sample_id
        assert r.get("neighbour_distance") == offline[sample_id]["neighbour_distance"], sample_id

    # Replaying `scored` twice rebuilds the accepted records byte for byte.
    streamed = topic_values(settings, settings.topic_accepted)
    first_replay = replay(settings, "r1", progress=False)
    second_replay = replay(settings, "r2", progress=False)
    r1 = topic_values(settings, first_replay.accepted_topic)
    r2 = topic_values(settings, second_replay.accepted_topic)
    assert r1 == r2
    assert sorted(r1) == sorted(streamed)
    assert first_replay.source == "scored" and not first_replay.pending
    # Encoding raw-samples again (one partition: the streaming order) gives them too.
    from_raw = replay(settings, "raw", progress=False, source="raw")
    assert topic_values(settings, from_raw.accepted_topic) == r1

    # Other settings give another dataset.
    strict = replay(with_settings(settings, tau=0.3), "strict", progress=False)
    assert len(topic_values(settings, strict.accepted_topic)) < len(r1)


def test_filters_decide_the_same_in_the_worker_and_offline(kafka, s3, tmp_path):
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", min_words=2, max_caption_repeats=2,
        alignment_top=0.6, dup_distance=0.02, seed=3,
    )  # fmt: skip
    ensure_pipeline_topics(settings)
    rows = embedding_rows(80, seed=3)
    for i, row in enumerate(rows):
        if i % 9 == 1:
            row["caption"] = "cat"  # one word
        elif i % 4 == 0:
            row["caption"] = "A photo."  # boilerplate
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    worker = start_worker(settings, log_path=str(tmp_path / "worker.log"))
    try:
        ingest_file(src, settings, progress=False)
        ids = {r["id"] for r in rows}
        streamed = wait_for_outcomes(settings, ids, timeout_s=240, worker=worker)
    finally:
        stop_worker(worker, signal.SIGTERM)
    curate_file(src, tmp_path / "offline.jsonl", settings, progress=False)
    import json

    offline = [json.loads(line) for line in (tmp_path / "offline.jsonl").read_text().splitlines()]
    for want in offline:
        got = streamed[want["id"]]
        assert (got["decision"], got.get("reason")) == (want["decision"], want["reason"]), got
    reasons = Counter(r["reason"] for r in offline)
    assert reasons["caption_length"] == len(range(1, 80, 9))
    assert reasons["caption_repeated"] > 0 and reasons["low_alignment"] > 0
    # The worker recorded its settings at start, and every outcome references them.
    assert {r.get("run") for r in streamed.values()} == {run_ref(settings)}
    recorded = read_runs(settings)[run_ref(settings)]
    assert recorded["origin"] == "worker" and recorded["app_id"] == settings.app_id
    assert json.loads(recorded["settings"]["alignment_top"]) == 0.6


def test_malformed_messages_go_to_dead_letter_with_their_bytes(kafka, s3, tmp_path):
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed")
    ensure_pipeline_topics(settings)
    good = embedding_rows(3, seed=5)
    write_jsonl(tmp_path / "good.jsonl", good)
    garbage = [b"not avro at all", b"\x00\x00\x00\x00\x01\x02", b"\x00\x00\x00\x03\xe7\x01"]
    # Valid Avro, but its packed embedding is 7 bytes (no float32 vector): it used to fail
    # the whole inference batch it came in.
    odd = {"id": "odd", "caption": "odd", "image_embedding": b"\x00" * 7, "text_embedding": None}
    garbage.append(AvroSerde("RawSample").encode(odd))
    producer = Producer({"bootstrap.servers": kafka})
    for i, value in enumerate(garbage):
        producer.produce(settings.topic_raw, key=f"bad{i}".encode(), value=value)
    # The same straight into `scored` (whoever writes there): the curator's dead letter.
    scored_odd = AvroSerde("ScoredSample").encode({"id": "odd2", "image_embedding": b"\x00" * 7})
    producer.produce(settings.topic_scored, key=b"odd2", value=scored_odd)
    producer.flush(10)
    worker = start_worker(settings, log_path=str(tmp_path / "worker.log"))
    try:
        ingest_file(tmp_path / "good.jsonl", settings, progress=False)
        wait_for_outcomes(settings, {r["id"] for r in good}, timeout_s=240, worker=worker)
        deadline = time.monotonic() + 30
        letters = []
        while len(letters) < len(garbage) + 1 and time.monotonic() < deadline:
            letters = [
                AvroSerde("DeadLetter").decode(v)
                for v in topic_values(settings, settings.topic_dead_letter)
            ]
            time.sleep(0.5)
    finally:
        stop_worker(worker, signal.SIGTERM)
    raw = [d for d in letters if d["topic"] == settings.topic_raw]
    assert [d["original"] for d in raw] == garbage
    assert all(d["reason"] and d["stage"] == "inference" for d in raw)
    assert "packed embedding of 7 bytes is not float32" in raw[-1]["reason"]
    (scored,) = [d for d in letters if d["topic"] == settings.topic_scored]
    assert (scored["original"], scored["stage"]) == (scored_odd, "curator")
    assert "packed embedding of 7 bytes is not float32" in scored["reason"]


def test_a_worker_dies_with_the_process_that_started_it(kafka, s3, tmp_path):
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed")
    script = (
        "import time\n"
        "from infogrowth.commands.pipeline import start_worker\n"
        "from infogrowth.settings import Settings\n"
        "print(start_worker(Settings.from_env()).pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, **settings_env(settings)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    worker_pid = int(parent.stdout.readline())
    assert pid_alive(worker_pid)
    parent.kill()  # SIGKILL: no chance to clean up
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while pid_alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(worker_pid), "the worker outlived its parent"


def test_a_sample_sent_twice_in_one_batch_is_curated_once(kafka, s3, tmp_path):
    """A crawler that sends each sample twice, back to back (so both copies share the
    curator's batch), gets one outcome per id, as if it had sent it once; the worker used
    to crash on the batch and, restarted, on it again."""
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed", policy="threshold")
    ensure_pipeline_topics(settings)
    unique = embedding_rows(40)
    rows = write_jsonl(tmp_path / "rows.jsonl", unique)
    twice = write_jsonl(tmp_path / "twice.jsonl", [row for row in unique for _ in (0, 1)])
    ingest_file(twice, settings, progress=False)
    worker = start_worker(settings, log_path=str(tmp_path / "worker.log"))
    try:
        outcomes = wait_for_outcomes(settings, _ids(rows), timeout_s=240, worker=worker)
        time.sleep(3)  # a second outcome for an id would be committed by now
        assert worker.poll() is None, "the worker crashed"
    finally:
        stop_worker(worker, signal.SIGTERM)

    records = [
        decode_any(v)[1]["id"]
        for topic in (settings.topic_accepted, settings.topic_rejected)
        for v in topic_values(settings, topic)
    ]
    counts = Counter(records)
    assert set(counts) == _ids(rows)
    # The curator answers each id once; the stateless inference stage rejects an unusable
    # row (here a NaN embedding) each time it comes, with the same verdict.
    repeated = {i for i, n in counts.items() if n > 1}
    assert repeated == {i for i, r in outcomes.items() if r.get("reason") == "bad_input"}
    assert all(counts[i] == 2 for i in repeated)
    curate_file(rows, tmp_path / "offline.jsonl", settings, progress=False)
    offline = {r["id"]: r for r in map(json.loads, (tmp_path / "offline.jsonl").open())}
    for sample_id, r in outcomes.items():
        assert (r["decision"], r.get("gain")) == (
            offline[sample_id]["decision"],
            offline[sample_id]["gain"],
        ), sample_id
