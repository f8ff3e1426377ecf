"""A worker on the real broker: its /metrics, its progress log, `infogrowth status`, and the
curator's changelog topic."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter

import pytest
from pipeline_helpers import (
    embedding_rows,
    metric_samples,
    run_settings,
    status_flags,
    write_jsonl,
)

from infogrowth.commands.cli import main
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.pipeline import (
    ensure_pipeline_topics,
    start_worker,
    stop_worker,
    wait_for_outcomes,
)
from infogrowth.io.kafka_io import topic_configs
from infra import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


def outcome_counters(samples: dict[tuple[str, tuple], float]) -> Counter:
    return Counter(
        {
            (dict(labels)["decision"], dict(labels)["reason"]): int(value)
            for (name, labels), value in samples.items()
            if name == "infogrowth_outcomes_total"
        }
    )


def status_screen(capsys, flags: list[str]) -> str:
    assert main(["status", "--interval", "0.2", *flags]) == 0
    return capsys.readouterr().out


def lag_of(screen: str, topic: str) -> int:
    match = re.search(rf"^\s+{re.escape(topic)}\s+0\s+\d+\s+\d+\s+(\d+)$", screen, re.M)
    assert match, f"no lag row for {topic} in:\n{screen}"
    return int(match.group(1))


def test_worker_metrics_count_the_outcomes_and_status_shows_no_lag_when_drained(
    kafka, s3, tmp_path, capsys
):
    port = free_port()
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", metrics_port=port, log_every=1
    )
    ensure_pipeline_topics(settings)
    rows = embedding_rows(60, seed=3)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log_path=str(log))
    url = f"http://127.0.0.1:{port}/metrics"
    flags = status_flags(settings, url)
    try:
        ingest_file(write_jsonl(tmp_path / "rows.jsonl", rows), settings, progress=False)
        outcomes = wait_for_outcomes(settings, {r["id"] for r in rows}, 240, worker)
        expected = Counter((r["decision"], r.get("reason") or "") for r in outcomes.values())
        deadline = time.monotonic() + 30
        while outcome_counters(samples := metric_samples(url)) != expected:
            assert time.monotonic() < deadline, (outcome_counters(samples), expected)
            time.sleep(0.5)
        while lag_of(screen := status_screen(capsys, flags), settings.topic_raw) > 0 or (
            lag_of(screen, settings.topic_scored) > 0
        ):
            assert time.monotonic() < deadline + 30, screen
            time.sleep(1)
    finally:
        stop_worker(worker, signal.SIGTERM)

    indexed = sum(1 for r in outcomes.values() if r.get("reason") in (None, "redundant"))
    assert samples[("infogrowth_index_size", ())] == indexed
    with_gain = sum(1 for r in outcomes.values() if r.get("gain") is not None)
    assert samples[("infogrowth_gain_count", ())] == with_gain
    assert samples[("infogrowth_batch_seconds_count", (("step", "select"),))] > 0
    assert samples[("infogrowth_batch_seconds_count", (("step", "score"),))] > 0
    assert re.search(r"total lag\s+0$", screen, re.M), screen
    assert f"index size {indexed}" in screen and f"outcomes {len(rows)}" in screen
    assert re.search(
        r"progress: \d+ batches, \d+ outcomes \(.*/s\), index \d+, lag ", log.read_text()
    )
    changelog = f"{settings.app_id}-curator-state-changelog"
    assert topic_configs(kafka, [changelog])[changelog]["cleanup.policy"] == "compact"


def test_a_step_is_timed_from_when_it_runs_not_from_when_it_was_queued() -> None:
    """Inference and captioner share the model's executor thread: a step queued behind
    another one's long step must not count that wait as its own time
    (infogrowth_batch_seconds)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from agents import metrics
    from agents.context import Context

    def long_step() -> None:
        time.sleep(0.4)

    def short_step() -> None:
        time.sleep(0.01)

    def observed(name: str) -> tuple[float, float]:
        hist = metrics.BATCH_SECONDS.labels(name)
        return hist._sum.get(), sum(b.get() for b in hist._buckets)

    async def both(ctx: SimpleNamespace) -> None:
        await asyncio.gather(Context.run(ctx, long_step), Context.run(ctx, short_step))

    before = observed("short_step")
    with ThreadPoolExecutor(max_workers=1) as pool:
        asyncio.run(both(SimpleNamespace(executor=pool)))
    after = observed("short_step")
    assert after[1] == before[1] + 1  # one observation
    assert after[0] - before[0] < 0.2  # its 10 ms, not the 400 ms it queued behind
    assert observed("long_step")[0] >= 0.4


def test_each_thread_reports_its_own_cpu_seconds() -> None:
    """infogrowth_thread_cpu_seconds_total{thread}: a thread that computes shows the CPU it
    used under its own name, one that sleeps shows next to none, so a busy worker's /metrics
    tells whether the event loop or the index thread is its bottleneck."""
    import threading

    from prometheus_client import generate_latest

    from agents import metrics

    def spin() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    def scraped() -> dict[str, float]:
        text = generate_latest(metrics.REGISTRY).decode()
        pattern = r'infogrowth_thread_cpu_seconds_total\{thread="([^"]+)"\} ([0-9.e+-]+)'
        return {m[1]: float(m[2]) for m in re.finditer(pattern, text)}

    release = threading.Event()
    busy = threading.Thread(target=lambda: (spin(), release.wait()), name="test-busy")
    idle = threading.Thread(target=release.wait, name="test-idle")
    busy.start()
    idle.start()
    try:
        deadline = time.monotonic() + 10
        while scraped().get("test-busy", 0.0) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = scraped()
    finally:
        release.set()
        busy.join()
        idle.join()
    assert seen["test-busy"] >= 0.25
    assert seen["test-idle"] < 0.1
    assert "MainThread" in seen
    assert "test-busy" not in scraped()  # a finished thread leaves the page
