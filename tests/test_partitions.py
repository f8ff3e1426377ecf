"""Inference on many partitions (issue 10): two inference worker processes share 4 partitions
of `raw-samples`, one curator process reads the single partition of `scored`. One inference
worker is killed with SIGKILL mid-stream; its partitions move to the other. Every sample
ends with exactly one committed outcome (read_committed), `scored` holds each record once,
and the decisions equal an offline run over the samples in the order of `scored`."""

from __future__ import annotations

import pytest
from chaos import (
    Supervised,
    assert_exactly_once_and_offline_equal,
    drain,
    scored_order,
    scored_records,
    wait_for_share,
)
from pipeline_helpers import (
    embedding_rows,
    run_settings,
    topic_values,
    with_settings,
    write_jsonl,
)

from infogrowth.ingest import ingest_file
from infogrowth.kafka_io import end_offsets
from infogrowth.pipeline import ensure_pipeline_topics, outcome_count
from infogrowth.replay import replay

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.chaos]

N = 1500


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
    source = write_jsonl(tmp_path / "samples.jsonl", rows)
    inference = with_settings(settings, worker_roles="inference")
    doomed = Supervised(inference, tmp_path / "inference-a.log")
    survivor = Supervised(inference, tmp_path / "inference-b.log")
    curating = with_settings(settings, worker_roles="captioner,curator")
    curator = Supervised(curating, tmp_path / "curator.log")
    runs = (doomed, survivor, curator)
    for run in runs:
        run.start()
    try:
        ingest_file(source, settings, progress=False)
        wait_for_share(settings, 0.1, N)
        doomed.kill()  # not restarted: the survivor must take its partitions over
        killed_at = outcome_count(settings)
        survivor_and_curator = drain(curator, {r["id"] for r in rows}, timeout_s=300)
        assert survivor.worker.poll() is None, "the surviving inference worker died"
    finally:
        for run in runs:
            run.stop()
    assert killed_at < N or pytest.skip("the stream finished before the kill")

    twice = {key: n for key, n in scored_records(settings).items() if n > 1}
    assert not twice, f"records in `scored` more than once: {list(twice.items())[:5]}"
    # The curator's order is the order of `scored`: offline, in that order, must agree.
    position = {sample_id: i for i, sample_id in enumerate(scored_order(settings))}
    in_scored_order = sorted(rows, key=lambda r: position.get(r["id"], -1))
    ordered = write_jsonl(tmp_path / "scored-order.jsonl", in_scored_order)
    assert_exactly_once_and_offline_equal(curator, survivor_and_curator, ordered, tmp_path)

    # Replay re-curates `scored` (no model) into the streamed accepted records.
    streamed = topic_values(settings, settings.topic_accepted)
    replayed = replay(settings, "p4", progress=False)
    assert sorted(topic_values(settings, replayed.accepted_topic)) == sorted(streamed)
    assert not replayed.pending
