"""The local servers' life cycle: port checks, clean stop, early-exit errors, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra import InfraError, LocalKafka, LocalS3, ToolMissing, free_port, port_in_use
from infra._service import pid_alive

if TYPE_CHECKING:
    from conftest import S3Server

REPO = Path(__file__).resolve().parent.parent


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.kafka
def test_second_broker_on_taken_port_fails_clearly(kafka: str, tmp_path: Path) -> None:
    second = LocalKafka(tmp_path, _port(kafka), free_port())
    began = time.monotonic()
    with pytest.raises(InfraError, match=f"port 127.0.0.1:{_port(kafka)} is already in use"):
        second.start()
    assert time.monotonic() - began < 5  # checked before any JVM starts
    assert not second.pid_file.exists()


@pytest.mark.s3
def test_second_gateway_on_taken_port_fails_clearly(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="already in use"):
        LocalS3(tmp_path, _port(s3.endpoint)).start()


@pytest.mark.s3
def test_stop_frees_the_port_and_restart_keeps_data(tmp_path: Path) -> None:
    gateway = LocalS3(tmp_path, free_port(), die_with_parent=True)
    try:
        gateway.start()
        pid = gateway.pid()
        assert pid is not None and gateway.pid_file.exists()
        gateway.client().make_bucket("kept")
        assert gateway.stop() is True
        assert not port_in_use(gateway.port)
        assert not gateway.pid_file.exists() and not pid_alive(pid)
        assert gateway.stop() is False  # idempotent
        gateway.start()
        assert gateway.buckets() == ["kept"]
    finally:
        gateway.stop()


@pytest.mark.s3
def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """kill -9 of the process that started it (e.g. pytest) must not leave it running."""
    script = textwrap.dedent(f"""
        import sys, time
        from infra import LocalS3
        gw = LocalS3({str(tmp_path)!r}, {free_port()}, die_with_parent=True)
        gw.start()
        print(gw.pid(), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert pid_alive(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_dead(child), "gateway survived its parent's SIGKILL"


@pytest.mark.s3
def test_early_exit_reports_the_log(tmp_path: Path) -> None:
    (tmp_path / "meta.db").write_bytes(b"this is not a sqlite database")
    gateway = LocalS3(tmp_path, free_port())
    with pytest.raises(InfraError, match="exited early") as info:
        gateway.start(wait_s=30)
    assert "s3.out" in str(info.value)  # the tail of its log is part of the message
    assert not gateway.pid_file.exists()


def test_missing_java_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="`java` not found"):
        LocalKafka(tmp_path / "k", free_port(), lib_dir=tmp_path / "lib").install()


def test_short_credentials_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        LocalS3(tmp_path, 1, access_key="ab")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_help() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    for word in ("up", "down", "status", "INFOGROWTH_DATA_DIR", "kafka", "s3"):
        assert word in done.stdout


def test_cli_status_when_down(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port(), free_port())
    done = _cli("status", env=env)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"kafka {env['INFOGROWTH_KAFKA_BOOTSTRAP']} down",
        f"s3 {env['INFOGROWTH_S3_ENDPOINT']} down",
    ]


def _env(data_dir: Path, kafka_port: int, s3_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "INFOGROWTH_DATA_DIR": str(data_dir),
        "INFOGROWTH_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        "INFOGROWTH_S3_ENDPOINT": f"127.0.0.1:{s3_port}",
    }


@pytest.mark.kafka
@pytest.mark.s3
def test_cli_up_status_down(tmp_path: Path) -> None:
    kafka_port, s3_port = free_port(), free_port()
    while s3_port in (kafka_port, kafka_port + 1):  # the controller takes kafka_port + 1
        s3_port = free_port()
    env = _env(tmp_path, kafka_port, s3_port)
    try:
        up = _cli("up", env=env)
        assert up.returncode == 0, up.stderr
        assert "kafka" in up.stdout and "started" in up.stdout
        assert (tmp_path / "kafka" / "kafka.pid").exists() and (tmp_path / "s3" / "s3.pid").exists()
        again = _cli("up", env=env)
        assert again.returncode == 0 and again.stdout.count("already running") == 2
        status = _cli("status", env=env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.splitlines() == [
            f"kafka 127.0.0.1:{kafka_port} up, 0 topics",
            f"s3 127.0.0.1:{s3_port} up, buckets: (none)",
        ]
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0 and down.stdout.count(" stopped") == 2, down.stdout
    assert not port_in_use(kafka_port) and not port_in_use(kafka_port + 1)
    assert not port_in_use(s3_port)
