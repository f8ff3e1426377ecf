"""Curator index snapshots in the object store, so a restart re-inserts only the tail.

Every ``snapshot_every`` batches the curator writes ``GainIndex.to_bytes()`` (graph, ids,
labels, removed samples) under a new key, then a small pointer object naming it. A kill
during the first write leaves the pointer on the previous snapshot; an S3 PUT of the pointer
replaces it whole or not at all. The snapshot covers the first ``len(index)`` indexed
samples in arrival order; gains and the policy's memory are replayed from the table (cheap,
no vectors), and ``curator_state.covers`` checks the snapshot against the committed table,
so one taken after a batch whose transaction then aborted is ignored (full replay).
"""

from __future__ import annotations

import json
import logging

from infogrowth.core.gain import GainIndex
from infogrowth.io.store import ObjectStore, StoreUnavailable

log = logging.getLogger("infogrowth.curator")
POINTER = "latest.json"
KEEP = 2  # snapshots kept: the newest and the one before it


def prefix(app_id: str) -> str:
    return f"snapshots/{app_id}/curator/"


def write(store: ObjectStore, where: str, index: GainIndex, seq: int) -> str:
    """Writes the snapshot, then the pointer; returns the snapshot's key."""
    key = f"{where}index-{seq:012d}.bin"
    store.ensure_bucket()
    store.put_bytes(key, index.to_bytes())
    pointer = {"key": key, "seq": seq, "indexed": len(index)}
    store.put_bytes(where + POINTER, json.dumps(pointer).encode(), "application/json")
    for old in [k for k in store.list(where) if k.endswith(".bin")][:-KEEP]:
        store.delete(old)
    return key


def read(store: ObjectStore, where: str) -> GainIndex | None:
    """The newest snapshot, or None when there is none or it cannot be read."""
    try:
        pointer = json.loads(store.get_bytes(where + POINTER))
        return GainIndex.from_bytes(store.get_bytes(pointer["key"]))
    except FileNotFoundError:
        return None
    except (StoreUnavailable, ValueError, KeyError) as exc:
        log.warning("curator snapshot unreadable (%s): full replay", exc)
        return None
