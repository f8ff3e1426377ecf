"""Run settings travel with the data: the runs topic, `run` on outcomes, export, replay.

The crawl here is produced straight into raw-samples (no worker, so no `scored`): replays
re-encode it (`--from raw`)."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import embedding_rows, run_settings, topic_values, write_jsonl

from infogrowth.commands.cli import main
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.pipeline import ensure_pipeline_topics
from infogrowth.commands.replay import replay
from infogrowth.io.avro import decode_any
from infogrowth.io.kafka_io import ensure_topics, make_producer, read_topic, topic_configs
from infogrowth.io.runs import RUN_SETTINGS, read_runs, record_run, run_ref
from infogrowth.settings import SECRET_FIELDS, Settings

ROWS = 90


# --- without a broker ----------------------------------------------------------------------
def test_run_reference_covers_curation_settings_only() -> None:
    base = Settings(delta=0.25, k=1, budget=10)
    same = replace(base, kafka_bootstrap="elsewhere:9092", batch_size=7, topic_accepted="a2")
    assert run_ref(base) == run_ref(same)
    assert run_ref(replace(base, tau=0.1)) != run_ref(base)
    assert run_ref(replace(base, dup_distance=0.2)) != run_ref(base)
    assert run_ref(replace(base, app_id="other")).startswith("other@")
    assert not SECRET_FIELDS & set(RUN_SETTINGS)


def test_runs_recorded_before_the_exact_limit_setting_replay_with_the_old_limit() -> None:
    """Runs recorded before ``exact_limit`` existed searched 30,000 samples exactly: their
    settings layer gives that limit back, and such settings hash as they did then (the
    replay's run reference is the original's); the new default is recorded."""
    from infogrowth.io.runs import run_layer, run_values, settings_hash

    assert run_values(Settings())["exact_limit"] == 100_000
    old = Settings(exact_limit=30_000)
    assert "exact_limit" not in run_values(old)
    recorded = {name: json.dumps(value) for name, value in run_values(old).items()}
    record = {"run": run_ref(old), "settings": recorded}
    layer = run_layer(record)
    assert layer.values["exact_limit"] == 30_000
    replayed = replace(Settings(), **layer.values)
    assert replayed.exact_limit == 30_000
    assert settings_hash(run_values(replayed)) == settings_hash(run_values(old))


def test_captioner_url_is_recorded_without_credentials() -> None:
    from infogrowth.io.runs import run_values

    settings = Settings(captioner_url="http://user:pa55@vlm.local:8000/v1")
    assert run_values(settings)["captioner_url"] == "http://vlm.local:8000/v1"


# --- on the broker -------------------------------------------------------------------------
REPLAY_RAW = ("replay", "--from", "raw")


def _argv(settings: Settings) -> list[str]:
    """Where a command finds this test's topics (infrastructure only, no algorithm settings)."""
    names = ("kafka_bootstrap", "app_id", "topic_raw", "topic_accepted", "topic_rejected")
    names += ("s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket")
    return [arg for n in names for arg in ("--" + n.replace("_", "-"), str(getattr(settings, n)))]


def _records(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [decode_any(v)[1] for v in topic_values(settings, topic)]


@pytest.fixture
def crawled(kafka: str, s3: Any, tmp_path: Path) -> Settings:
    """A run's raw topic (samples with embeddings) under settings far from the defaults."""
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", delta=0.25, k=1, policy="budget", budget=25
    )
    ensure_pipeline_topics(settings)
    ingest_file(write_jsonl(tmp_path / "in.jsonl", embedding_rows(ROWS)), settings, progress=False)
    return settings


@pytest.mark.kafka
@pytest.mark.s3
def test_replay_takes_the_runs_settings_and_export_records_them(
    crawled: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = crawled
    record_run(settings, "worker")  # what `infogrowth worker` does at start
    configs = topic_configs(settings.kafka_bootstrap, [settings.topic_runs])
    assert configs[settings.topic_runs]["cleanup.policy"] == "compact"

    assert main([*REPLAY_RAW, "--version", "v1", "--quiet", *_argv(settings)]) == 0

    err = capsys.readouterr().err
    accepted_topic = f"{settings.topic_accepted}-v1"
    accepted = _records(settings, accepted_topic)
    rejected = _records(settings, f"{settings.topic_rejected}-v1")
    assert 0 < len(accepted) <= 25 and len(accepted) + len(rejected) == ROWS  # budget 25, not 1000
    assert {r["run"] for r in accepted + rejected} == {run_ref(settings)}
    assert f"settings of run {run_ref(settings)}" in err and "changed" not in err
    expected = replay(
        settings, "library", progress=False, source="raw"
    )  # the run's settings, explicitly
    assert topic_values(settings, accepted_topic) == topic_values(settings, expected.accepted_topic)

    # The printed export command, run from a shell with the built-in settings (δ=0.4, k=4).
    command = shlex.split(err.split("export it with:")[1].strip().splitlines()[0])
    assert command[:4] == ["infogrowth", "export", "--topic", accepted_topic]
    out = tmp_path / "v1"
    assert main([*command[1:], "--dest", str(out), "--quiet", *_argv(settings)[:2]]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"] == run_ref(settings) and manifest["app_id"] == settings.app_id
    recorded = manifest["settings"]
    assert (recorded["delta"], recorded["k"], recorded["budget"]) == (0.25, 1, 25)
    assert (recorded["policy"], recorded["encoder"]) == ("budget", "precomputed")
    assert manifest["runs"][0]["origin"] == "worker" and manifest["runs"][0]["samples"] == len(
        accepted
    )
    assert manifest["storage"]["s3_endpoint"] == settings.s3_endpoint
    assert {"id", "gain", "image_embedding", "run"} <= {c["name"] for c in manifest["columns"]}
    assert not manifest["problems"]
    assert settings.s3_secret_key not in (out / "manifest.json").read_text()

    # A flag still overrides the run's settings, and makes another run.
    override = [*REPLAY_RAW, "--version", "v2", "--quiet", "--budget", "10"]
    assert main([*override, *_argv(settings)]) == 0
    assert "changed: budget=10" in capsys.readouterr().err
    smaller = _records(settings, f"{settings.topic_accepted}-v2")
    assert 0 < len(smaller) <= 10
    other = run_ref(replace(settings, budget=10))
    assert {r["run"] for r in smaller} == {other}
    assert read_runs(settings)[other]["origin"] == "replay"
    assert read_runs(settings)[other]["replay_version"] == "v2"


def _copy(settings: Settings, source: str, dest: str, count: int) -> None:
    producer = make_producer(settings.kafka_bootstrap)
    for msg in list(read_topic(settings.kafka_bootstrap, source, timeout_s=30))[:count]:
        producer.produce(dest, key=msg.key(), value=msg.value())
    assert producer.flush(30) == 0


@pytest.mark.kafka
@pytest.mark.s3
def test_reused_version_is_refused_and_resume_finishes_it(
    crawled: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = replace(crawled, policy="threshold", tau=0.3)  # no worker run recorded
    full = replay(settings, "full", progress=False, source="raw")
    capsys.readouterr()

    assert main([*REPLAY_RAW, "--version", "full", "--quiet", *_argv(settings)]) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith("infogrowth replay: error: version 'full' exists already")
    assert "--resume" in err and "\n" not in err

    # An interrupted replay: its topics hold only the first outcomes.
    part = (f"{settings.topic_accepted}-part", f"{settings.topic_rejected}-part")
    ensure_topics(settings.kafka_bootstrap, part)
    _copy(settings, full.accepted_topic, part[0], 5)
    _copy(settings, full.rejected_topic, part[1], 20)

    # Resuming with other settings than the version's would mix two datasets.
    resume = [*REPLAY_RAW, "--version", "part", "--resume", "--quiet"]
    assert main([*resume, "--tau", "0.5", *_argv(settings)]) == 2
    assert "was built by run" in capsys.readouterr().err

    # No algorithm flags: the version's own run (tau 0.3), not the built-in tau 0.05.
    assert main([*resume, *_argv(settings)]) == 0

    err = capsys.readouterr().err
    assert "resumed: 25 outcomes were there already" in err
    for done, whole in zip(part, (full.accepted_topic, full.rejected_topic), strict=True):
        assert sorted(topic_values(settings, done)) == sorted(topic_values(settings, whole))
