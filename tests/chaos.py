"""A worker run under faults: a supervisor that restarts the worker (as systemd or Kubernetes
would), fault injection at a share of committed outcomes, and the checks every fault test
makes (exactly one outcome per sample, offline equality, restored state = committed state)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pipeline_helpers import topic_values

from agents import curator_state as state_codec
from infogrowth.commands.offline import curate_file
from infogrowth.commands.pipeline import outcome_count, start_worker, stop_worker
from infogrowth.io.avro import decode_any
from infogrowth.io.kafka_io import end_offsets, group_lag, read_topic
from infogrowth.settings import Settings

# "curator state: N indexed, M queued", sharded "curator state (shard P): ..." (one per shard)
STATE_LINE = re.compile(
    r"\[(\d+)\] \[INFO\] curator state(?: \(shard (\d+)\))?: (\d+) indexed, (\d+) queued"
)
Counts = tuple[int, int]  # (indexed, queued)


@dataclass
class Supervised:
    """The worker, restarted whenever it exits; remembers the state each start should restore."""

    settings: Settings
    log_path: Path
    total: int  # samples in the run
    worker: subprocess.Popen | None = None
    # pid -> changelog partition (shard; 0 unsharded) -> counts
    expected_state: dict[int, dict[int, Counts]] = field(default_factory=dict)
    starts: int = 0

    def start(self, expect_restore: bool = False) -> None:
        """The old worker is gone, so the committed changelog is what the new one must
        restore. A restart after the last outcome is checked only with ``expect_restore``
        (the caller waits for that restore; otherwise the run may stop before it)."""
        restarted = self.starts > 0 and (
            expect_restore or outcome_count(self.settings) < self.total
        )
        committed = committed_state(self.settings) if restarted else None
        self.worker = start_worker(self.settings, log_path=str(self.log_path))
        if committed is not None:
            self.expected_state[self.worker.pid] = committed
        self.starts += 1

    def kill(self) -> None:
        assert self.worker is not None
        stop_worker(self.worker, signal.SIGKILL)

    def keep_alive(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            self.start()

    def stop(self) -> None:
        if self.worker is not None:
            stop_worker(self.worker, signal.SIGTERM)

    def dump_stacks(self) -> None:
        """Has a stalled worker log its threads' and asyncio tasks' stacks (mode's SIGUSR1)."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGUSR1)
            time.sleep(5.0)

    def wait_for_log(self, text: str, timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log_path.read_text(errors="replace"):
            if time.monotonic() >= deadline:
                self.dump_stacks()  # where a stalled worker waits, at the end of its log
                raise AssertionError(f"{text!r} never appeared in {self.log_path}")
            time.sleep(poll_s)

    def wait_until_restoring(self, timeout_s: float = 60.0) -> None:
        """Returns once the current worker has started reading its changelog (polled
        often: the caller kills it during recovery, which lasts seconds)."""
        assert self.worker is not None
        marker = f"[{self.worker.pid}] [INFO] curator state: reading changelog partition"
        self.wait_for_log(marker, timeout_s, poll_s=0.05)

    def wait_until_restored(self, timeout_s: float = 60.0) -> None:
        """Returns once the current worker has logged what it restored."""
        deadline = time.monotonic() + timeout_s
        while not self.restores_since(0):
            if time.monotonic() >= deadline:
                self.dump_stacks()
                raise AssertionError(f"worker {self.worker.pid} never restored ({self.log_path})")
            time.sleep(0.2)

    def restores_since(self, start: int) -> list[tuple[int, Counts]]:
        """(shard, (indexed, queued)) of each restore the current worker logged after byte
        ``start`` of its log."""
        assert self.worker is not None
        with self.log_path.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        return [
            (int(m[2] or 0), (int(m[3]), int(m[4])))
            for m in STATE_LINE.finditer(text)
            if int(m[1]) == self.worker.pid
        ]

    def restored_states(self) -> dict[int, dict[int, Counts]]:
        """pid -> shard -> (indexed, queued) as each worker first logged it after recovery
        (shard 0 when unsharded)."""
        found: dict[int, dict[int, Counts]] = {}
        for m in STATE_LINE.finditer(self.log_path.read_text(errors="replace")):
            shard = int(m[2] or 0)
            found.setdefault(int(m[1]), {}).setdefault(shard, (int(m[3]), int(m[4])))
        return found


def committed_state(settings: Settings) -> dict[int, Counts]:
    """Changelog partition (one per shard) -> (indexed, queued) in the committed curator
    table: what a restart must restore."""
    latest: dict[int, dict[str, str]] = {}
    topic = f"{settings.app_id}-curator-state-changelog"
    for msg in read_topic(settings.kafka_bootstrap, topic, timeout_s=30):
        value = msg.value()
        state = state_codec.decode(value)["state"] if value else "gone"
        latest.setdefault(msg.partition(), {})[json.loads(msg.key())] = state
    counts = {p: Counter(states.values()) for p, states in latest.items()}
    return {p: (states["indexed"], states["queued"]) for p, states in counts.items()}


def wait_for_share(settings: Settings, share: float, total: int, timeout_s: float = 240) -> int:
    deadline = time.monotonic() + timeout_s
    while (done := outcome_count(settings)) < share * total:
        assert time.monotonic() < deadline, f"only {done} of {total} outcomes after {timeout_s}s"
        time.sleep(0.1)
    return done


def drain(run: Supervised, ids: set[str], timeout_s: float) -> dict[str, list[dict[str, Any]]]:
    """Keeps the worker alive until every id has an outcome; all committed outcome records
    per id (read_committed), so a test sees duplicates too."""
    deadline = time.monotonic() + timeout_s
    while True:
        run.keep_alive()
        if outcome_count(run.settings) >= len(ids):
            outcomes = outcome_records(run.settings)
            if ids <= outcomes.keys():
                return outcomes
        missing = len(ids) - min(len(ids), outcome_count(run.settings))
        if time.monotonic() >= deadline:
            run.dump_stacks()
            raise AssertionError(
                f"~{missing} samples without outcome after {timeout_s}s; where the worker "
                f"waits: the stacks at the end of {run.log_path}\n{offsets_table(run.settings)}"
            )
        time.sleep(1.0)


def offsets_table(settings: Settings) -> str:
    """Per pipeline partition: the worker group's committed offset, the last stable offset
    and the high watermark (an LSO stuck below it is an open transaction)."""
    topics = [
        settings.topic_raw, settings.topic_scored, settings.topic_recaption,
        settings.topic_recaptioned, f"{settings.app_id}-curator-state-changelog",
        settings.topic_accepted, settings.topic_rejected, settings.topic_dead_letter,
    ]  # fmt: skip
    lines = ["topic partition committed lso hw"]
    for topic in topics:
        lso = end_offsets(settings.kafka_bootstrap, topic)
        hw = end_offsets(settings.kafka_bootstrap, topic, isolation="read_uncommitted")
        done = committed_offsets(settings.kafka_bootstrap, settings.app_id, topic, list(lso))
        lines += [f"{topic} {p} {done.get(p)} {lso[p]} {hw.get(p)}" for p in sorted(lso)]
    return "\n".join(lines)


def wait_until_committed(settings: Settings, topic: str, timeout_s: float = 60.0) -> None:
    """Until the worker group has committed every record of ``topic``: nothing of it is
    left to deliver after a restart."""
    deadline = time.monotonic() + timeout_s
    while lags := [
        p for p in group_lag(settings.kafka_bootstrap, settings.app_id, [topic]) if p.lag
    ]:
        assert time.monotonic() < deadline, f"not committed after {timeout_s}s: {lags}"
        time.sleep(0.5)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def scored_order(settings: Settings) -> list[str]:
    """Sample ids in the order they first appear in `scored`: the curator's order."""
    order: dict[str, None] = {}
    for value in topic_values(settings, settings.topic_scored):
        order.setdefault(decode_any(value)[1]["id"], None)
    return list(order)


def scored_copies(settings: Settings) -> dict[tuple[str, int], list[bytes]]:
    """(id, attempt) -> the committed records of it in `scored` (read_committed)."""
    copies: dict[tuple[str, int], list[bytes]] = {}
    for value in topic_values(settings, settings.topic_scored):
        record = decode_any(value)[1]
        copies.setdefault((record["id"], record.get("attempt", 0)), []).append(value)
    return copies


def outcome_records(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for topic in (settings.topic_accepted, settings.topic_rejected):
        for value in topic_values(settings, topic):
            record = decode_any(value)[1]
            found.setdefault(record["id"], []).append(record)
    return found


def assert_exactly_once_and_offline_equal(
    run: Supervised,
    outcomes: dict[str, list[dict[str, Any]]],
    input_file: Path,
    tmp_path: Path,
    tolerance: float = 0.0,
) -> None:
    twice = {i: [r["decision"] for r in rs] for i, rs in outcomes.items() if len(rs) > 1}
    assert not twice, f"{len(twice)} samples with more than one outcome: {list(twice.items())[:3]}"
    offline_path = tmp_path / "offline.jsonl"
    curate_file(input_file, offline_path, run.settings, progress=False)
    offline = {r["id"]: r for r in map(json.loads, offline_path.read_text().splitlines())}
    assert outcomes.keys() == offline.keys()
    decisions = {i: (rs[0]["decision"], offline[i]["decision"]) for i, rs in outcomes.items()}
    differ = {i: d for i, d in decisions.items() if d[0] != d[1]}
    assert not differ, f"{len(differ)} decisions differ from offline: {list(differ.items())[:5]}"
    gains = {i: (rs[0].get("gain"), offline[i]["gain"]) for i, rs in outcomes.items()}
    off = {
        i: g
        for i, g in gains.items()
        if (g[0] is None) != (g[1] is None) or (g[0] is not None and abs(g[0] - g[1]) > tolerance)
    }
    sample = list(off.items())[:5]
    assert not off, f"{len(off)} gains differ from offline (streamed, offline): {sample}"


def assert_restored_committed_state(run: Supervised) -> None:
    """Every restarted worker that got as far as recovery rebuilt exactly the committed table."""
    if not run.expected_state:
        return  # the worker rode out the fault without a restart
    restored = run.restored_states()
    checked = {pid: restored[pid] for pid in run.expected_state if pid in restored}
    assert checked, f"no restarted worker logged its restored state ({run.log_path})"
    for pid, shards in checked.items():
        for shard, counts in shards.items():
            committed = run.expected_state[pid].get(shard, (0, 0))
            assert counts == committed, (
                f"worker {pid} restored shard {shard} (indexed, queued)={counts}, "
                f"committed {committed}"
            )


Fault = Callable[[Supervised], None]
