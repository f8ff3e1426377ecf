"""Inference on many partitions (issue 10): two inference worker processes share 4 partitions
of `raw-samples`, one curator process reads the single partition of `scored`. The second
inference worker joins mid-stream, the first is then killed with SIGKILL and its partitions
move to the second. Every sample ends with exactly one committed outcome (read_committed),
and the decisions equal an offline run over the samples in the order of `scored`. The same
with two curator shards (two `scored` partitions) in two full workers, and with two full
workers killed in turn four times, or one of them paused past its session and resumed: no
record reaches `scored` or `recaptioned` twice."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chaos import (
    Supervised,
    assert_exactly_once_and_offline_equal,
    committed_state,
    drain,
    scored_copies,
    scored_order,
    wait_for_share,
)
from pipeline_helpers import (
    embedding_rows,
    run_settings,
    topic_values,
    trickle,
    with_settings,
    write_jsonl,
)

from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.pipeline import ensure_pipeline_topics, outcome_count
from infogrowth.commands.replay import replay
from infogrowth.commands.shards import fit_centroids, save
from infogrowth.core.shards import Centroids
from infogrowth.io.avro import decode_any
from infogrowth.io.kafka_io import end_offsets, read_topic
from infogrowth.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.chaos]

N = 2000


def scored_count(settings: Settings, isolation: str = "read_committed") -> int:
    """The end offsets of `scored`: committed ones, or with ``read_uncommitted`` every
    record written."""
    return sum(end_offsets(settings.kafka_bootstrap, settings.topic_scored, isolation).values())


def wait_for_scored(settings: Settings, n: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while scored_count(settings) < n:
        assert time.monotonic() < deadline, f"fewer than {n} records in `scored`"
        time.sleep(0.05)


def test_inference_worker_killed_on_four_partitions_loses_and_duplicates_nothing(
    kafka, s3, tmp_path
):
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", policy="threshold", tau=0.08,
        dup_distance=0.02, raw_partitions=4,
    )  # fmt: skip
    ensure_pipeline_topics(settings)
    assert len(end_offsets(kafka, settings.topic_raw)) == 4
    assert len(end_offsets(kafka, settings.topic_scored)) == 1
    rows = embedding_rows(N)
    inference = with_settings(settings, worker_roles="inference")
    doomed = Supervised(inference, tmp_path / "inference-a.log", len(rows))
    survivor = Supervised(inference, tmp_path / "inference-b.log", len(rows))
    curating = with_settings(settings, worker_roles="captioner,curator")
    curator = Supervised(curating, tmp_path / "curator.log", len(rows))
    feeder = threading.Thread(target=trickle, args=(settings, rows, tmp_path), daemon=True)
    runs = (doomed, survivor, curator)
    doomed.start()
    curator.start()
    try:
        feeder.start()  # a steady stream, so both the join and the kill land mid-stream
        wait_for_scored(settings, N // 10)
        survivor.start()  # joins: the doomed worker gives up partitions while it works
        wait_for_scored(settings, N * 4 // 10)
        doomed.kill()  # not restarted: its partitions move to the survivor
        killed_at = scored_count(settings)
        outcomes = drain(curator, {r["id"] for r in rows}, timeout_s=300)
        assert survivor.worker.poll() is None, "the surviving inference worker died"
    finally:
        for run in runs:
            run.stop()
    assert killed_at < N or pytest.skip("inference had finished before the kill")

    assert_nothing_twice_as_offline_and_replayed(settings, rows, curator, outcomes, tmp_path)


def assert_scored_once(settings: Settings, rows: list[dict]) -> None:
    """Every row but the NaN one is in `scored` (read_committed), none twice."""
    copies = scored_copies(settings)
    twice = sorted(key for key, values in copies.items() if len(values) > 1)
    assert not twice, f"in `scored` twice: {twice[:5]} ({len(twice)})"
    assert {key[0] for key in copies} == {r["id"] for r in rows} - {"s0007"}  # s0007: NaN


def assert_recaptioned_once(settings: Settings) -> None:
    recaptioned = [
        decode_any(v)[1]["id"] for v in topic_values(settings, settings.topic_recaptioned)
    ]
    assert recaptioned and len(set(recaptioned)) == len(recaptioned), "in `recaptioned` twice"


def assert_nothing_twice_as_offline_and_replayed(
    settings: Settings,
    rows: list[dict],
    curator: Supervised,
    outcomes: dict[str, list[dict]],
    tmp_path: Path,
) -> None:
    """No record reached `scored` twice, every sample has one outcome, equal to an offline
    run in the order of `scored`, and replay rebuilds the streamed accepted records."""
    # A rebalance commits first (see the joining test below), and a batch after a
    # transaction marker commits its offsets with its outputs (agents/atomic.py,
    # gaps_end_before_the_next_record).
    assert_scored_once(settings, rows)
    # The curator's order is the order of `scored`: offline, in that order, must agree.
    position = {sample_id: i for i, sample_id in enumerate(scored_order(settings))}
    in_scored_order = sorted(rows, key=lambda r: position.get(r["id"], -1))
    ordered = write_jsonl(tmp_path / "scored-order.jsonl", in_scored_order)
    assert_exactly_once_and_offline_equal(curator, outcomes, ordered, tmp_path)

    # Replay re-curates `scored` (no model) into the streamed accepted records.
    streamed = topic_values(settings, settings.topic_accepted)
    replayed = replay(settings, "p4", progress=False)
    assert sorted(topic_values(settings, replayed.accepted_topic)) == sorted(streamed)
    assert not replayed.pending


@pytest.mark.parametrize(
    ("killed", "snapshot_every"),
    [("first", 0), ("joiner", 0), ("joiner", 2)],
    ids=["first", "joiner", "joiner-with-snapshots"],
)
def test_two_curator_shards_with_a_worker_killed_lose_and_duplicate_nothing(
    killed, snapshot_every, kafka, s3, tmp_path
):
    """S=2 curator shards (centroids fitted on the input, stored in S3) and two full worker
    processes of one group: the second joins mid-stream and takes a shard from the first,
    then one of them is killed with SIGKILL and its shard's state moves to the survivor
    through the changelog partition. Killing the joiner sends its shard back to the first
    worker, which owned it before (a partition that leaves a worker and returns). Every
    sample ends with one committed outcome, and each shard's decisions equal the offline
    sharded curation (`curate --centroids`) of the same centroid file. With snapshots, the
    shards that move restore from the snapshot another worker wrote and its changelog tail."""
    rows = embedding_rows(N)
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", policy="threshold", tau=0.08,
        dup_distance=0.02, raw_partitions=2, shards=2, snapshot_every=snapshot_every,
    )  # fmt: skip
    settings, centroids = with_fitted_centroids(settings, rows, tmp_path)
    assert settings.centroids.startswith("s3://pipeline/c/centroids-")
    ensure_pipeline_topics(settings)
    assert len(end_offsets(kafka, settings.topic_scored)) == 2
    first = Supervised(settings, tmp_path / "worker-a.log", len(rows))
    joiner = Supervised(settings, tmp_path / "worker-b.log", len(rows))
    doomed, survivor = (first, joiner) if killed == "first" else (joiner, first)
    feeder = threading.Thread(target=trickle, args=(settings, rows, tmp_path), daemon=True)
    first.start()
    try:
        feeder.start()
        wait_for_scored(settings, N // 10)
        joiner.start()
        # It owns a shard now and has restored it: the restores it logs after ``mark``
        # below are then the killed worker's shard alone (waiting for the first "curator
        # state (shard" line, its "reading changelog" one, its own restore could still end
        # after the mark: CI, 2026-12-07, 0.3 s later, counted as the killed shard's).
        joiner.wait_for_log(" queued")  # "curator state (shard s): n indexed, m queued"
        wait_for_scored(settings, N * 4 // 10)
        mark, survivor_pid = survivor.log_path.stat().st_size, survivor.worker.pid
        doomed.kill()
        killed_at = outcome_count(settings)
        at_kill = committed_state(settings)  # what the survivor must take over
        outcomes = drain(survivor, {r["id"] for r in rows}, timeout_s=300)
    finally:
        for run in (first, joiner):
            run.stop()
    assert killed_at < N or pytest.skip("curation had finished before the kill")
    usable = [r for r in rows if r["id"] != "s0007"]  # s0007: NaN, never scored
    shard_of = {r["id"]: centroids.route(np.array(r["image_embedding"])) for r in usable}
    assert set(shard_of.values()) == {0, 1}
    for partition, ids in scored_ids_by_partition(settings).items():
        assert {shard_of[i] for i in ids} == {partition}, "a sample left its shard"
    # Offline in the order of `scored`: only the order within each shard matters.
    position = {sample_id: i for i, sample_id in enumerate(scored_order(settings))}
    in_scored_order = sorted(rows, key=lambda r: position.get(r["id"], -1))
    ordered = write_jsonl(tmp_path / "scored-order.jsonl", in_scored_order)
    assert_exactly_once_and_offline_equal(survivor, outcomes, ordered, tmp_path)
    # The survivor restored the killed worker's shard from its changelog partition.
    state_lines = r"curator state \(shard (\d)\): \d+ indexed, \d+ queued"
    restored = re.findall(state_lines, survivor.log_path.read_text())
    assert set(restored) == {"0", "1"}
    if killed == "joiner":  # the first worker restored the shard it got back a second time
        assert max(restored.count(shard) for shard in "01") >= 2, restored
    # What it restored of the killed worker's shard is exactly the state committed at the kill.
    if survivor.worker.pid == survivor_pid:  # (not restarted since)
        taken = survivor.restores_since(mark)
        assert taken, "the survivor logged no restore of the killed worker's shard"
        for shard, counts in taken:
            assert counts == at_kill.get(shard, (0, 0)), (shard, counts, at_kill)
    if snapshot_every:  # a shard that moved was restored from a snapshot and its tail
        logs = "".join(run.log_path.read_text() for run in (first, joiner))
        assert re.search(r"curator state \(shard \d\): changelog read from offset \d+", logs)
    # A partition kept across a rebalance with nothing to commit keeps its transaction
    # open: Faust's rebalance no longer tries to begin it again (a WARNING each time).
    for run in (first, joiner):
        assert "IN_TRANSACTION -> TransactionState.IN_TRANSACTION" not in run.log_path.read_text()
    # Centroids can also be fitted on `scored` itself (the stored embeddings).
    again = fit_centroids("scored", 300, settings)
    assert (again.shards, again.fitted_on) == (2, 300)


def scored_ids_by_partition(settings: Settings) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for message in read_topic(settings.kafka_bootstrap, settings.topic_scored, timeout_s=30):
        found.setdefault(message.partition(), set()).add(decode_any(message.value())[1]["id"])
    return found


def test_a_worker_joining_the_group_does_not_make_the_first_send_its_batches_twice(
    kafka, s3, tmp_path
):  # noqa: ANN001
    """A second worker joins while the first holds processed but uncommitted batches (its
    next commit is a minute away). The rebalance commits them before the partitions are
    given up; Faust used to leave that transaction open, seek back to the committed offset,
    process the batches again into the same transaction and commit both copies to `scored`."""
    settings = run_settings(kafka, s3, tmp_path, encoder="precomputed", commit_interval_s=60.0)
    ensure_pipeline_topics(settings)
    # Aligned captions only: a recaptioned sample would wait for the first worker's commit.
    rows = [r for i, r in enumerate(embedding_rows(68)) if i % 17 != 5]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    n = len(rows)
    assert n % settings.batch_size == 0
    # Full batches only (a batch short of full, caught up with its input, commits at once):
    # 64 rows in batches of 16, each waiting for its 16 rows.
    held = with_settings(settings, worker_roles="inference", take_within=10.0)
    first = Supervised(held, tmp_path / "inf.log", n)
    second = Supervised(
        with_settings(settings, worker_roles="captioner,curator", commit_interval_s=1.0),
        tmp_path / "cur.log",
        n,
    )
    first.start()
    try:
        ingest_file(source, settings, progress=False)
        deadline = time.monotonic() + 120
        while (written := scored_count(settings, "read_uncommitted")) < n - 1:
            # all but the NaN row, in the open transaction
            assert time.monotonic() < deadline, f"{written} scored records"
            time.sleep(0.2)
        assert scored_count(settings) == 0, "nothing committed yet"
        second.start()  # joins the group: a rebalance
        outcomes = drain(second, {r["id"] for r in rows}, timeout_s=50)  # before the 60 s commit
    finally:
        first.stop()
        second.stop()
    assert_scored_once(settings, rows)
    assert all(len(found) == 1 for found in outcomes.values())


def with_fitted_centroids(
    settings: Settings, rows: list[dict], tmp_path: Path
) -> tuple[Settings, Centroids]:
    """``settings`` with centroids for its shards, fitted on ``rows`` as `shards fit` does
    and stored in S3, and the centroids."""
    centroids = fit_centroids(str(write_jsonl(tmp_path / "input.jsonl", rows)), 500, settings)
    stored = save(centroids, "s3://pipeline/c", settings)
    return with_settings(settings, centroids=stored), centroids


@contextmanager
def two_full_workers(
    kafka: str, s3: Any, tmp_path: Path, n: int = N, seed: int = 0, **settings_: Any
) -> Iterator[tuple[Settings, list[dict], list[Supervised]]]:
    """Two full workers (inference, captioner and curator) over 4 partitions of
    `raw-samples`, running while ``n`` rows trickle in (100 every half second, or
    ``n // 200``: a longer run keeps the same duration per fault); stopped on the way out.
    ``settings_`` overrides the run's settings (``batch_size``...); with ``shards`` of 2 or
    more, the curator's shards route by centroids fitted on the rows, stored in S3."""
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", policy="threshold", tau=0.08,
        dup_distance=0.02, raw_partitions=4,
    )  # fmt: skip
    settings = with_settings(settings, **settings_)
    rows = embedding_rows(n, seed=seed)
    if settings.shards > 1:
        settings, _ = with_fitted_centroids(settings, rows, tmp_path)
    ensure_pipeline_topics(settings)
    full = with_settings(settings, worker_roles="inference,captioner,curator")
    workers = [Supervised(full, tmp_path / f"worker-{i}.log", len(rows)) for i in range(2)]
    chunk = max(100, n // 200)
    try:
        for worker in workers:
            worker.start()
        feed = threading.Thread(target=trickle, args=(settings, rows, tmp_path, chunk), daemon=True)
        feed.start()
        yield settings, rows, workers
    finally:
        for worker in workers:
            worker.stop()


def test_a_kill_loop_over_two_full_workers_writes_nothing_twice(kafka, s3, tmp_path):  # noqa: ANN001
    """Two full workers (inference, captioner and curator) over 4 partitions of
    `raw-samples`, killed in turn with SIGKILL at each further fifth of the outcomes and
    started again. Each stage after the first reads a topic written in transactions, so
    kills land after transaction markers: before `gaps_end_before_the_next_record`, a kill
    loop of 40,000 samples left 64 records in `recaptioned` twice and 127 in `scored`."""
    with two_full_workers(kafka, s3, tmp_path) as (settings, rows, workers):
        for i, share in enumerate((0.2, 0.4, 0.6, 0.8)):
            wait_for_share(settings, share, len(rows))
            workers[i % 2].kill()
            workers[i % 2].start()
        outcomes = drain(workers[0], {r["id"] for r in rows}, timeout_s=300)
    assert_recaptioned_once(settings)
    assert_nothing_twice_as_offline_and_replayed(settings, rows, workers[0], outcomes, tmp_path)


def test_a_worker_paused_past_its_session_writes_nothing_once_it_resumes(kafka, s3, tmp_path):  # noqa: ANN001
    """A zombie: one of two full workers stops (SIGSTOP: a VM stall, a long GC pause) with
    batches in flight, for longer than its session. The other takes its partitions over, and
    its transactional producers fence the stopped one's. Then the stopped worker resumes
    (SIGCONT) where it stopped, its transactions still open: none of what it then sends or
    commits may reach a reader. (In 4 of 4 runs it resumed with transactions open: its
    next sends and its commit failed with ProducerFenced, it committed nothing more and
    stopped, as after any failed batch.)"""
    with two_full_workers(kafka, s3, tmp_path) as (settings, rows, workers):
        paused = wait_for_share(settings, 0.25, len(rows))
        zombie = workers[0].worker
        assert zombie is not None
        os.killpg(zombie.pid, signal.SIGSTOP)
        try:  # the other worker goes on alone once the session (10 s) has expired
            wait_for_share(settings, min(0.9, paused / len(rows) + 0.3), len(rows))
        finally:
            os.killpg(zombie.pid, signal.SIGCONT)
        outcomes = drain(workers[1], {r["id"] for r in rows}, timeout_s=300)
    assert_recaptioned_once(settings)
    assert_nothing_twice_as_offline_and_replayed(settings, rows, workers[1], outcomes, tmp_path)
