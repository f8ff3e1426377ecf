"""The worker's Faust application as `infogrowth worker` builds it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
import agents.app
print(gc.get_freeze_count())
"""


def test_start_up_objects_are_kept_out_of_the_collector(tmp_path) -> None:
    """What start-up imported lives as long as the worker: frozen, so that a full collection
    does not walk it (a ~0.15 s stall of the curator each time, ~240,000 objects)."""
    env = {
        "INFOGROWTH_ENCODER": "precomputed",
        "INFOGROWTH_WORKER_ROLES": "curator",
        "INFOGROWTH_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    )
    # 0 without the freeze; ~93,000 for a curator whose scans run in its selection process
    # (no torch here), ~240,000 with torch loaded.
    assert int(out.stdout.split()[-1]) > 50_000, out.stdout
