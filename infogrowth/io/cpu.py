"""CPU seconds a process or one of its threads has used, and the processes it started, from
Linux's /proc."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_seconds(pid: int | str = "self", tid: int | None = None) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or of its thread
    ``tid`` (a native thread id); None where /proc has no such entry (another OS, a thread
    or process gone)."""
    path = Path(f"/proc/{pid}/stat") if tid is None else Path(f"/proc/{pid}/task/{tid}/stat")
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (from any of its threads), then theirs; [] where /proc
    has none (another OS, a process gone)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found + [grandchild for child in found for grandchild in child_pids(child)]
