"""Crashes at any moment lose and duplicate nothing (issue 8): the worker killed with SIGKILL
early, mid-stream, near the end and again during recovery; the broker and the S3 gateway
killed and restarted mid-stream; batches failing with an error; graceful stops mid-stream.
Each run ends with exactly one committed outcome per sample, the decisions and gains of the
offline run, and restarted workers that restored exactly the committed curator state.
`-m "not chaos"` skips them (~10 minutes on 2 cores)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from chaos import (
    Supervised,
    assert_exactly_once_and_offline_equal,
    assert_restored_committed_state,
    drain,
    wait_for_share,
    wait_until_committed,
)
from conftest import S3Server
from model_fixtures import build_tiny_clip, jpeg_bytes, photos
from pipeline_helpers import (
    embedding_rows,
    run_settings,
    topic_values,
    trickle,
    with_settings,
    write_jsonl,
)

from agents import snapshot
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.pipeline import ensure_pipeline_topics, outcome_count
from infogrowth.commands.replay import replay
from infogrowth.commands.shards import fit_centroids, save
from infogrowth.io.cpu import child_pids
from infra import LocalKafka, LocalS3, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.chaos]

N = 2000
DRAIN_S = 300  # the bound within which every sample must have its outcome after the faults
SHARD_SNAPSHOT_LINE = re.compile(
    r"\[(\d+)\] \[INFO\] curator state \(shard (\d+)\): (\d+) indexed from a snapshot"
)


def kill_at(share: float):  # noqa: ANN201 - a Fault
    def fault(run: Supervised) -> None:
        wait_for_share(run.settings, share, N)
        run.kill()
        run.start()

    return fault


def kill_after_snapshots(*written: str):  # noqa: ANN201 - a Fault
    """Kills the worker once every text in ``written`` is in its log, then restarts it."""

    def fault(run: Supervised) -> None:
        for text in written:
            run.wait_for_log(text)
        run.kill()
        if outcome_count(run.settings) >= N:
            pytest.skip("the worker finished before it was killed")
        run.start()

    return fault


def kill_during_recovery(run: Supervised) -> None:
    wait_for_share(run.settings, 0.4, N)
    run.kill()
    run.start()
    run.wait_until_restoring()
    run.kill()
    run.start()


def restart_when_done(run: Supervised) -> None:
    """A worker restarted once everything is curated restores its state at once, with no
    batch to wait for (it used to restore at its first batch, so never)."""
    wait_for_share(run.settings, 1.0, N)
    wait_until_committed(run.settings, run.settings.topic_scored)
    run.kill()
    run.start(expect_restore=True)
    run.wait_until_restored()


def _curate_under(
    fault,
    settings,
    tmp_path: Path,
    rows: list[dict],
    tolerance: float = 0.0,
    worker_first: bool = True,
    trickled: bool = False,
) -> Supervised:  # noqa: ANN001
    """``trickled``: the rows arrive a chunk every half second instead of all at once, for
    faults that wait for something the worker does along the way (snapshots)."""
    ensure_pipeline_topics(settings)
    source = write_jsonl(tmp_path / "samples.jsonl", rows)
    run = Supervised(settings, tmp_path / "worker.log", len(rows))
    if worker_first:
        run.start()
    try:
        if trickled:
            feeder = threading.Thread(target=trickle, args=(settings, rows, tmp_path), daemon=True)
            feeder.start()
        else:
            ingest_file(source, settings, progress=False)  # while the worker already runs
        fault(run)
        outcomes = drain(run, {r["id"] for r in rows}, DRAIN_S)
    finally:
        run.stop()
    assert_exactly_once_and_offline_equal(run, outcomes, source, tmp_path, tolerance)
    assert_restored_committed_state(run)
    return run


@pytest.mark.parametrize(
    "fault",
    [kill_at(0.05), kill_at(0.5), kill_at(0.9), kill_during_recovery, restart_when_done],
    ids=["early", "mid-stream", "near-end", "again-during-recovery", "after-the-end"],
)
def test_worker_killed(fault, kafka, s3, tmp_path):  # noqa: ANN001
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed", tau=0.08)
    _curate_under(fault, settings, tmp_path, embedding_rows(N, dim=64))


@pytest.mark.parametrize("in_a_process", [False, True], ids=["selection-here", "selection-process"])
def test_worker_killed_recovers_from_a_snapshot_and_the_changelog_tail(
    in_a_process, kafka, s3, tmp_path
):  # noqa: ANN001
    """``selection-process``: the snapshot is taken by the child that holds the index, with
    every batch before it sent and committed and none after it selected."""
    settings = run_settings(
        kafka,
        s3,
        tmp_path,
        encoder="precomputed",
        tau=0.08,
        snapshot_every=3,
        curator_process=in_a_process,
    )
    fault = kill_after_snapshots("curator snapshot written")
    _curate_under(fault, settings, tmp_path, embedding_rows(N, dim=64), trickled=True)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    covered = [int(n) for n in re.findall(r"curator state: (\d+) indexed from a snapshot", log)]
    assert max(covered, default=0) > 0, "the restarted curator took nothing from a snapshot"
    tail = [int(n) for n in re.findall(r"curator state: changelog read from offset (\d+)", log)]
    assert max(tail, default=0) > 0, "the restarted curator read the whole changelog"


FAULTS = Path(__file__).parent / "faults"  # sitecustomize.py: INFOGROWTH_TEST_FAULT


def start_with_fault(run: Supervised, spec: str) -> None:
    """Starts the worker with ``INFOGROWTH_TEST_FAULT=spec``; its restarts run clean."""
    path = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    with mock.patch.dict(os.environ, PYTHONPATH=path, INFOGROWTH_TEST_FAULT=spec):
        run.start()


def fail_from(step: str, call: int):  # noqa: ANN201 - a Fault
    """The first worker's ``step`` raises from its ``call``-th run on: it must stop without
    committing that batch, and the next worker must read the batch again."""

    def fault(run: Supervised) -> None:
        start_with_fault(run, f"{step}:{call}")
        assert run.worker is not None
        try:
            code = run.worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker went on after its {step} step failed")
        assert code != 0
        run.wait_for_log(f"injected failure of {step}")
        run.start()

    return fault


@pytest.mark.parametrize(
    ("step", "in_a_process"),
    [("score", False), ("select", False), ("select", True)],
    ids=["score", "select", "select-in-the-selection-process"],
)
def test_a_failed_batch_is_read_again_not_lost(step, in_a_process, kafka, s3, tmp_path):  # noqa: ANN001
    """Faust acks every event of a batch its agent leaves, even by an error, and the next
    commit used to carry them: a failure of the model step lost its batch while the worker
    went on, one of the curator's gain step lost samples too. With ``curator_process`` the
    gain step raises in the child, and the batch waiting for its answer fails."""
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", tau=0.08, curator_process=in_a_process
    )
    rows = embedding_rows(N, dim=64)
    _curate_under(fail_from(step, 3), settings, tmp_path, rows, worker_first=False)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "a batch failed; committing nothing more, stopping the worker" in log


def test_the_selection_process_killed_stops_its_worker_and_the_next_restores(kafka, s3, tmp_path):  # noqa: ANN001
    """``curator_process``: the child that holds the gain index, hashes and policy killed
    with SIGKILL mid-stream. The batch waiting for it fails, its worker stops without
    committing it, and the next worker restores the committed state into a child of its
    own: one outcome per sample, the offline decisions and gains."""
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", tau=0.08, curator_process=True
    )

    def fault(run: Supervised) -> None:
        wait_for_share(run.settings, 0.3, N)
        assert run.worker is not None
        (child,) = _spawned(run.worker.pid)  # the selection process
        os.kill(child, signal.SIGKILL)
        assert run.worker.wait(timeout=120) != 0
        if outcome_count(run.settings) >= N:
            pytest.skip("the worker finished before its selection process was killed")
        run.start()

    _curate_under(fault, settings, tmp_path, embedding_rows(N, dim=64))
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert re.search(r"the curator's selection process \d+ exited", log)


def test_a_long_restore_in_the_selection_process_is_work_not_a_stall(kafka, s3, tmp_path):  # noqa: ANN001
    """``curator_process``: while the child restores a partition (here made to take 30 s),
    records wait in `scored` and no batch finishes. The stall watchdog (5 s here) must see
    a step in progress, as for a restore on the worker's own index thread, and not stop
    the worker."""
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", curator_process=True, stall_restart_s=5
    )
    outcomes, log = _one_worker_with_fault("restore-delay:30", settings, tmp_path)
    assert "injected delay of a restore: 30 s" in log
    assert "no batch finished for" not in log


def _spawned(pid: int) -> list[int]:
    """The processes ``pid`` started with multiprocessing's spawn (not its resource
    tracker)."""
    return [c for c in child_pids(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _one_worker_with_fault(spec: str, settings, tmp_path: Path, n: int = 400):  # noqa: ANN001, ANN202
    """All outcomes of a run by one worker started with ``spec``, and its log."""
    ensure_pipeline_topics(settings)
    rows = embedding_rows(n, dim=64)
    run = Supervised(settings, tmp_path / "worker.log", len(rows))
    start_with_fault(run, spec)
    try:
        ingest_file(write_jsonl(tmp_path / "rows.jsonl", rows), settings, progress=False)
        outcomes = drain(run, {r["id"] for r in rows}, DRAIN_S)
    finally:
        run.stop()
    assert run.starts == 1, "the worker stopped"
    assert {i: len(rs) for i, rs in outcomes.items() if len(rs) != 1} == {}
    return outcomes, (tmp_path / "worker.log").read_text(errors="replace")


def test_a_row_the_model_fails_on_alone_is_rejected_and_the_run_goes_on(kafka, s3, tmp_path):  # noqa: ANN001
    """Not a failed batch: the batch is scored again one row at a time, the row that fails
    alone is rejected as bad input, every other sample gets its outcome, no restart."""
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed", tau=0.08)
    poison = "s0100"
    outcomes, log = _one_worker_with_fault(f"score-row:{poison}", settings, tmp_path)
    (record,) = outcomes[poison]
    assert (record["decision"], record["reason"]) == ("rejected", "bad_input")
    assert f"injected failure of the model on {poison}" in record["detail"]
    assert f"the model step fails on sample '{poison}' alone" in log
    others = [rs[0] for i, rs in outcomes.items() if i != poison]
    assert not [r for r in others if "injected" in (r.get("detail") or "")]


def test_a_model_step_that_fails_once_is_retried_row_by_row(kafka, s3, tmp_path):  # noqa: ANN001
    """A passing fault (a device out of memory for one batch): no sample is rejected for it."""
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed", tau=0.08)
    outcomes, log = _one_worker_with_fault("score-once:3", settings, tmp_path)
    assert "the model step failed on 16 samples" in log
    assert not [i for i, rs in outcomes.items() if "injected" in (rs[0].get("detail") or "")]


def stop_gracefully_at(*shares: float):  # noqa: ANN201 - a Fault
    def fault(run: Supervised) -> None:
        for share in shares:
            wait_for_share(run.settings, share, N)
            run.stop()
            assert run.worker is not None and run.worker.returncode == 0
            run.start()
            # A SIGTERM before Faust handles signals ends the process at once (-15): the
            # next stop must find a running worker.
            run.wait_for_log(f"[{run.worker.pid}] [INFO] [^Worker]: Ready")

    return fault


def test_graceful_stops_mid_stream_commit_what_was_done(kafka, s3, tmp_path):  # noqa: ANN001
    """SIGTERM mid-stream, twice: each stop commits its last offsets without an error (its
    consumer's second commit came after the app had ended the transactions: aiokafka
    refused it with an ERROR at about one stop in three) and exits at once."""
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed", tau=0.08)
    _curate_under(stop_gracefully_at(0.3, 0.6), settings, tmp_path, embedding_rows(N, dim=64))
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Not in the middle of a transaction" not in log
    assert "] [ERROR] " not in log


@pytest.fixture
def own_broker(tmp_path: Path):  # noqa: ANN201
    broker = LocalKafka(tmp_path / "kafka", free_port(), free_port(), die_with_parent=True)
    broker.start(wait_s=120)
    yield broker
    broker.stop()


def test_broker_killed_and_restarted_mid_stream(own_broker, s3, tmp_path):  # noqa: ANN001
    def fault(run: Supervised) -> None:
        wait_for_share(run.settings, 0.4, N)
        own_broker.kill()
        time.sleep(3)
        own_broker.start(wait_s=120)

    settings = run_settings(own_broker.bootstrap, s3, tmp_path, encoder="precomputed", tau=0.08)
    _curate_under(fault, settings, tmp_path, embedding_rows(N, dim=64))


def test_broker_stalled_mid_stream(own_broker, s3, tmp_path):  # noqa: ANN001
    """The broker's process stops for 20 s mid-stream (SIGSTOP: a VM or disk stall) and
    goes on: its connections stay open, every request waits, and when it resumes the
    worker's session has expired (in 4 of 5 runs: "Heartbeat failed ... re-joining group"),
    so it rejoins with batches and a commit in flight. The feed retries while the broker
    does not answer, as a crawler would."""

    def fault(run: Supervised) -> None:
        wait_for_share(run.settings, 0.4, N)
        pid = own_broker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(20)
        finally:
            os.kill(pid, signal.SIGCONT)

    settings = run_settings(own_broker.bootstrap, s3, tmp_path, encoder="precomputed", tau=0.08)
    _curate_under(fault, settings, tmp_path, embedding_rows(N, dim=64), trickled=True)


def image_rows(tmp_path: Path, n: int) -> list[dict]:
    """Distinct crops of the bundled photos as JPEG files, captioned by their photo's name."""
    rng = np.random.default_rng(0)
    pictures = list(photos().items())
    rows = []
    for i in range(n):
        name, picture = pictures[i % len(pictures)]
        w, h = picture.size
        left, top = int(rng.integers(w // 4)), int(rng.integers(h // 4))
        crop = picture.crop((left, top, left + w // 2, top + h // 2)).resize((64, 64))
        path = tmp_path / "images" / f"{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(jpeg_bytes(crop))
        rows.append({"id": f"img{i:04d}", "image": str(path), "caption": f"a photo of {name}"})
    return rows


def test_object_store_killed_and_restarted_while_images_are_fetched(kafka, tmp_path):  # noqa: ANN001
    gateway = LocalS3(tmp_path / "s3", free_port(), "chaos-user", "chaos-secret")
    gateway.start(wait_s=60)
    server = S3Server(gateway.endpoint, gateway.access_key, gateway.secret_key)
    n = 400

    def fault(run: Supervised) -> None:
        gateway.kill()  # the images are in; the worker starts while the store is down
        run.start()
        run.wait_for_log("retrying the batch")  # past the S3 client's own retries
        time.sleep(5)
        gateway.start(wait_s=60)

    clip = build_tiny_clip(tmp_path / "clip")
    settings = run_settings(
        kafka, server, tmp_path, encoder="clip", clip_model=str(clip), delta=0.0, tau=0.02
    )
    try:
        # A model encoder moves embeddings in their last bits with batch composition.
        rows = image_rows(tmp_path, n)
        _curate_under(fault, settings, tmp_path, rows, tolerance=1e-4, worker_first=False)
    finally:
        gateway.stop()


def test_two_shards_recover_each_from_its_snapshot_and_replay_equals_the_stream(
    kafka, s3, tmp_path
):  # noqa: ANN001
    """S=2: each shard snapshots under its own prefix; after a kill -9, the restarted worker
    restores each shard from its snapshot plus its changelog partition's tail, to the
    committed state of that partition, and curates on as offline sharded curation does with
    the same centroid file (`assert_exactly_once_and_offline_equal` curates with them).
    Replay of `scored` then rebuilds the streamed accepted records, shard by shard."""
    rows = embedding_rows(N, dim=64)
    source = write_jsonl(tmp_path / "centroid-sample.jsonl", rows)
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", tau=0.08, snapshot_every=3, shards=2
    )
    centroids = fit_centroids(str(source), 500, settings)
    settings = with_settings(settings, centroids=save(centroids, "s3://pipeline/c", settings))
    where = snapshot.prefix(settings.app_id)
    fault = kill_after_snapshots(f"{where}shard-0/index-", f"{where}shard-1/index-")
    run = _curate_under(fault, settings, tmp_path, rows, trickled=True)
    restarted = set(run.expected_state)
    log = run.log_path.read_text(errors="replace")
    covered: dict[int, int] = {}
    for pid, shard, n in SHARD_SNAPSHOT_LINE.findall(log):
        if int(pid) in restarted:
            covered[int(shard)] = max(covered.get(int(shard), 0), int(n))
    assert covered.keys() == {0, 1} and min(covered.values()) > 0, (
        f"indexed from a snapshot after the restart, per shard: {covered}"
    )
    tails = set(re.findall(r"curator state \(shard (\d+)\): changelog read from offset", log))
    assert tails == {"0", "1"}, f"shards that read only their changelog's tail: {tails}"
    restored = run.restored_states()
    assert any(restored.get(pid, {}).keys() == {0, 1} for pid in restarted)  # both checked

    streamed = topic_values(settings, settings.topic_accepted)
    replayed = replay(settings, "s2", progress=False)
    assert sorted(topic_values(settings, replayed.accepted_topic)) == sorted(streamed)
    assert not replayed.pending
