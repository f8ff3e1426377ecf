"""Shared life cycle of a local server process: port check, spawn, wait, pid file, stop."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

log = logging.getLogger("infra")

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class InfraError(RuntimeError):
    """A local server could not be installed, started or stopped; the message says why."""


class ToolMissing(InfraError):
    """A required external program (java, mvn, juicefs) is not installed."""


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something listens on host:port (or the port cannot be bound for another reason)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    # Nothing accepts connections; a bind also catches a socket bound but not yet listening.
    # SO_REUSEADDR mirrors what the servers do, so TIME_WAIT leftovers do not count as taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = HOST) -> int:
    """A port the kernel considers free right now (racy by nature, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent_process() -> None:
    """preexec_fn: ask the kernel to SIGKILL this child when its parent dies (even by -9)."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(1)
    if os.getppid() != parent:  # the parent already died before prctl took effect
        os._exit(1)


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or '' if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalService(ABC):
    """One server process whose files (config, data, logs, pid) all live in ``data_dir``."""

    name: str = "service"

    def __init__(self, data_dir: str | os.PathLike[str], port: int, die_with_parent: bool) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = int(port)
        self.die_with_parent = die_with_parent
        self.start_seconds: float | None = None  # last start(), format/install included
        self._proc: subprocess.Popen[bytes] | None = None

    # --- to implement -------------------------------------------------------------------
    @abstractmethod
    def _prepare(self) -> list[str]:
        """Install/format as needed and return the command line to run."""

    @abstractmethod
    def _ready(self) -> bool:
        """One quick readiness probe (a real client request)."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ports(self) -> list[int]:
        return [self.port]

    def _logs(self) -> list[Path]:
        """Log files whose tail explains an early exit, most useful last."""
        return [self.out_file]

    # --- files --------------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def out_file(self) -> Path:
        return self.data_dir / f"{self.name}.out"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def pid(self) -> int | None:
        """Pid of this data dir's server if it is running, else None (stale pid files ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid) or not self._owns(pid):
            return None
        return pid

    def _owns(self, pid: int) -> bool:
        """Guard against pid reuse: our servers always name the data dir on their command line."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return str(self.data_dir).encode() in cmdline

    def is_running(self) -> bool:
        return self.pid() is not None

    # --- life cycle ---------------------------------------------------------------------
    def start(self, wait_s: float = 60.0) -> None:
        """Start the server and block until a real client request succeeds."""
        if self.is_running():
            log.info("%s already running on %s (pid %s)", self.name, self.address, self.pid())
            return
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        cmd = self._prepare()
        self._spawn(cmd)
        self._wait_ready(wait_s)
        self.start_seconds = time.monotonic() - began
        log.info("%s up on %s in %.1f s", self.name, self.address, self.start_seconds)

    def _check_ports(self) -> None:
        for port in self._ports():
            if port_in_use(port):
                raise InfraError(
                    f"{self.name}: port {HOST}:{port} is already in use; stop whatever listens "
                    f"there (`python -m infra status`, `ss -ltnp`) or choose another port"
                )

    def _spawn(self, cmd: list[str]) -> None:
        preexec = die_with_parent_process if self.die_with_parent else None
        with self.out_file.open("ab") as out:
            # New session: a Ctrl-C in the terminal goes to pytest/the CLI, which then stops
            # the server cleanly, instead of killing it mid-write.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def _wait_ready(self, wait_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(f"{self.name} exited early (code {code}):\n{self._log_tail()}")
            if self._port_open() and self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise InfraError(f"{self.name} not ready after {wait_s:.0f} s:\n{self._log_tail()}")

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((HOST, self.port)) == 0

    def _log_tail(self) -> str:
        parts = [f"--- {p} ---\n{t}" for p in self._logs() if (t := tail(p))]
        return "\n".join(parts) or "(no log output)"

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``. Returns False if it was not running."""
        pid = self._proc.pid if self._proc and self._proc.poll() is None else self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout_s):
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s; killing", self.name, pid, timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10.0):
                raise InfraError(f"{self.name} (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, nothing flushed (fault tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 30.0)
        self._proc = None

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
