"""Running the streaming pipeline: its topics, a worker process, and its outcomes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from typing import Any

from infogrowth.commands.shards import shard_count
from infogrowth.io.avro import MalformedMessage, decode_any
from infogrowth.io.kafka_io import (
    UNLIMITED_RETENTION,
    end_offsets,
    ensure_topics,
    read_topic,
    set_topic_config,
)
from infogrowth.io.runs import COMPACTED, ensure_runs_topic
from infogrowth.settings import ENV_PREFIX, Settings


def topic_names(settings: Settings) -> list[str]:
    return [getattr(settings, f.name) for f in fields(Settings) if f.name.startswith("topic_")]


def source_topics(settings: Settings) -> list[str]:
    """The sources of truth for replay, kept forever: `raw-samples` (what came in) and
    `scored` (the embeddings, in the one order the curator admits them)."""
    return [settings.topic_raw, settings.topic_scored]


def retention_config(settings: Settings) -> dict[str, str]:
    """Retention of the derived topics: the broker's default unless ``retention_ms`` is set."""
    return {} if settings.retention_ms == 0 else {"retention.ms": str(settings.retention_ms)}


def curator_changelog(settings: Settings) -> str:
    """The curator's state: one compacted partition per shard (agents/curator_state.py)."""
    return f"{settings.app_id}-curator-state-changelog"


def transactional_topics(settings: Settings) -> list[str]:
    """Every topic the workers write in Kafka transactions, the offsets they commit included."""
    return [
        settings.topic_raw, settings.topic_scored, settings.topic_recaption,
        settings.topic_recaptioned, settings.topic_accepted, settings.topic_rejected,
        settings.topic_dead_letter, curator_changelog(settings), "__consumer_offsets",
    ]  # fmt: skip


def ensure_pipeline_topics(settings: Settings) -> None:
    """Creates the missing topics. `raw-samples` has ``raw_partitions`` partitions keyed by
    id: inference is stateless and its workers share them. `scored` has one: the curator is
    the single writer of the index and its order is the order of `scored` (see
    infogrowth/core/order.py). Both keep their records forever. `accepted` has
    ``accepted_partitions`` partitions keyed by id, so downstream readers can split it;
    `runs` is compacted (one record per run, infogrowth/io/runs.py); the rest have one.
    A sharded curator (``centroids``) has one `scored` partition per shard instead, and
    the curator's changelog one partition per `scored` partition."""
    bootstrap, sources = settings.kafka_bootstrap, source_topics(settings)
    ensure_topics(bootstrap, [settings.topic_raw], settings.raw_partitions, UNLIMITED_RETENTION)
    shards = shard_count(settings)
    ensure_topics(bootstrap, [settings.topic_scored], shards, config=UNLIMITED_RETENTION)
    check_partitions(settings.kafka_bootstrap, settings.topic_scored, shards)
    ensure_topics(bootstrap, [curator_changelog(settings)], shards, config=COMPACTED)
    set_topic_config(bootstrap, sources, UNLIMITED_RETENTION)  # also on topics made before
    retention = retention_config(settings)
    ensure_topics(bootstrap, [settings.topic_accepted], settings.accepted_partitions, retention)
    ensure_runs_topic(settings)
    done = (*sources, settings.topic_accepted, settings.topic_runs)
    others = [n for n in topic_names(settings) if n not in done]
    ensure_topics(bootstrap, others, partitions=1, config=retention)


def check_partitions(bootstrap: str, topic: str, shards: int) -> None:
    """A sample's shard is its `scored` partition: the counts must agree."""
    found = len(end_offsets(bootstrap, topic))
    if found != shards:
        raise ValueError(
            f"topic {topic} has {found} partitions but the curator has {shards} shard(s): "
            "use a new topic (or app id) for another sharding"
        )


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as INFOGROWTH_* variables, for a worker in another process."""
    env = {}
    for f in fields(Settings):
        if f.name != "extra":
            env[ENV_PREFIX + f.name.upper()] = str(getattr(settings, f.name))
    return env


def start_worker(settings: Settings, log_path: str | None = None, **popen: Any) -> subprocess.Popen:
    """`infogrowth worker` in a child process: its own session, so it can be killed whole,
    and killed by the kernel if this process dies (a demo or test run stopped with -9)."""
    from infra import die_with_parent_process

    env = {**os.environ, **settings_env(settings), "HF_HUB_OFFLINE": "1"}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    cmd = [sys.executable, "-m", "infogrowth.commands.cli", "worker"]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent_process,
        **popen,
    )


def stop_worker(worker: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Signals the worker's process group; one still alive after ``grace_s`` gets SIGKILL."""
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, sig)
    try:
        worker.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=grace_s)


def read_outcomes(settings: Settings) -> dict[str, dict[str, Any]]:
    """Last committed outcome per sample id, from `accepted` and `rejected`."""
    outcomes: dict[str, dict[str, Any]] = {}
    for topic in (settings.topic_accepted, settings.topic_rejected):
        for msg in read_topic(settings.kafka_bootstrap, topic, timeout_s=30):
            try:
                _, record = decode_any(msg.value())
            except MalformedMessage:
                continue
            if record.get("reason") == "over_budget" and record["id"] in outcomes:
                outcomes[record["id"]].update(decision="rejected", reason="over_budget")
            else:
                outcomes[record["id"]] = record
    return outcomes


def wait_for_outcomes(
    settings: Settings,
    expected: set[str],
    timeout_s: float = 600.0,
    worker: subprocess.Popen | None = None,
) -> dict[str, dict[str, Any]]:
    """Polls the output topics until every expected id has an outcome."""
    deadline = time.monotonic() + timeout_s
    outcomes: dict[str, dict[str, Any]] = {}
    while True:
        # Each sample ends in one committed record: count them (cheap) before reading all.
        if outcome_count(settings) >= len(expected):
            outcomes = read_outcomes(settings)
            if expected <= outcomes.keys():
                return outcomes
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode} before finishing")
        if time.monotonic() > deadline:
            missing = sorted(expected - outcomes.keys())
            raise TimeoutError(
                f"{len(missing)} samples without an outcome after {timeout_s:.0f} s: {missing[:5]}"
            )
        time.sleep(2.0)


def outcome_count(settings: Settings) -> int:
    """Committed records in `accepted` + `rejected` (last stable offsets)."""
    topics = settings.topic_accepted, settings.topic_rejected
    return sum(sum(end_offsets(settings.kafka_bootstrap, t).values()) for t in topics)


def raw_count(settings: Settings) -> int:
    return sum(end_offsets(settings.kafka_bootstrap, settings.topic_raw).values())
