"""The bundled demo set end to end on the real broker and S3, with the packaged models."""

from __future__ import annotations

import json
import signal
from collections import Counter
from dataclasses import replace

import pytest
from pipeline_helpers import run_settings

from infogrowth.commands.demo import DEMO_DEFAULTS, build_demo_set
from infogrowth.commands.export import export_dataset
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.offline import curate_file
from infogrowth.commands.pipeline import (
    ensure_pipeline_topics,
    start_worker,
    stop_worker,
    wait_for_outcomes,
)
from infogrowth.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


def test_demo_set_streams_to_the_same_decisions_as_the_offline_curator(kafka, s3, tmp_path):
    settings = run_settings(kafka, s3, tmp_path, encoder="packaged", **DEMO_DEFAULTS)
    samples = build_demo_set(tmp_path / "demo")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    kinds = {r["id"]: r["kind"] for r in rows}
    ensure_pipeline_topics(settings)
    worker = start_worker(settings, log_path=str(tmp_path / "worker.log"))
    try:
        ingested = ingest_file(samples, settings, prefix="demo/", progress=False)
        assert ingested.produced == len(rows) and ingested.missing == 1
        streamed = wait_for_outcomes(settings, set(kinds), timeout_s=600, worker=worker)
    finally:
        stop_worker(worker, signal.SIGKILL)

    curate_file(samples, tmp_path / "offline.jsonl", settings, progress=False)
    lines = (tmp_path / "offline.jsonl").read_text().splitlines()
    offline = {r["id"]: r for r in map(json.loads, lines)}
    for sample_id, r in streamed.items():
        want = offline[sample_id]
        assert (r["decision"], r.get("reason")) == (want["decision"], want["reason"]), sample_id
        assert r.get("caption") == want["caption"], sample_id
        if want["alignment"] is not None:  # a misaligned sample keeps its first score
            assert r["alignment"] == pytest.approx(want["alignment"], abs=1e-4), sample_id
        if want["gain"] is None:
            assert r.get("gain") is None, sample_id
        else:  # CPU inference on other batches moves embeddings in the last float32 bits
            assert r["gain"] == pytest.approx(want["gain"], abs=1e-4), sample_id

    reasons = Counter(r.get("reason") for r in streamed.values())
    broken = {i for i, k in kinds.items() if k in ("undecodable image", "missing image",
                                                   "empty caption")}  # fmt: skip
    assert {i for i, r in streamed.items() if r.get("reason") == "bad_input"} == broken
    # Every deliberately wrong caption was caught; with no captioning model configured (the
    # default) it is rejected as misaligned, not rewritten by a caption that confirms itself.
    wrong = [i for i, k in kinds.items() if k == "wrong caption"]
    assert all(streamed[i].get("reason") == "misaligned" for i in wrong)
    # Nothing comes out with a caption it did not come in with (was: astronaut → "a photo of
    # a football helmet" and coins → "a photo of a bubble", both accepted).
    given = {r["id"]: r["caption"] for r in rows}
    for sample_id, r in streamed.items():
        assert (r.get("caption"), r.get("caption_source")) == (given[sample_id], "original")
    # Most of each photo's three versions collapse into one accepted sample.
    near = [i for i, k in kinds.items() if k == "near-duplicate"]
    collapsed = [i for i in near if streamed[i].get("reason") in ("duplicate", "redundant")]
    assert len(collapsed) >= len(near) // 2
    assert reasons["duplicate"] > 0
    accepted = [i for i, r in streamed.items() if r["decision"] == "accepted"]
    # No image is accepted twice, whatever caption came with it (ingest content-addresses).
    assert len({streamed[i]["image"] for i in accepted}) == len(accepted)
    assert 0 < len(accepted) < len(rows) // 2 + 10

    # Exported from a shell with the built-in δ and k: the manifest still records the run's.
    shell = replace(settings, delta=Settings().delta, k=Settings().k)
    exported = export_dataset(f"s3://{settings.s3_bucket}/datasets/demo", shell, progress=False)
    assert exported.count == len(accepted) and exported.duplicates == 0
    recorded = exported.manifest["settings"]
    assert (recorded["delta"], recorded["k"]) == (DEMO_DEFAULTS["delta"], DEMO_DEFAULTS["k"])
    assert exported.manifest["runs"][0]["image_dim"] == 1280  # the packaged encoder's
