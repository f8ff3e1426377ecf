"""Curator index snapshots in the object store, so a restart re-inserts only the tail.

Every ``snapshot_every`` batches the curator writes ``GainIndex.to_bytes()`` (graph, ids,
labels, removed samples) and its table without vectors (ids, states, seqs, gains, hashes,
the gate's records, and the mark of the last changelog record they reflect:
``curator_state.pack_table``) under new keys, then a small pointer object naming them. A
kill during those writes leaves the pointer on the previous snapshot; an S3 PUT of the
pointer replaces it whole or not at all. A restart reads the changelog only from the mark
on; the policy's memory and the hash store are replayed from the table's gains and hashes
(cheap, no vectors). The mark's record must be the first committed one at its offset of
the same topic, and ``curator_state.covers`` checks the index against the table, so a
snapshot taken after a batch whose transaction then aborted is ignored (full replay).

The index is serialised on the curator's model thread (where it changes) and uploaded on a
thread of its own, one upload per shard at a time, never awaited by a batch: a slow or
hanging object store delays snapshots, never curation (the minio client may wait minutes:
60 s read timeout, 2 retries).
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agents.curator_state import Entry, Mark, unpack_table
from infogrowth.core.gain import GainIndex
from infogrowth.io.store import ObjectStore, StoreUnavailable

log = logging.getLogger("infogrowth.curator")
POINTER = "latest.json"
KEEP = 2  # snapshots kept: the newest and the one before it


def prefix(app_id: str) -> str:
    return f"snapshots/{app_id}/curator/"


@dataclass
class Snapshot:
    index: GainIndex
    table: tuple[dict[str, Entry], Mark] | None = None  # None: the changelog is read whole


def write(
    store: ObjectStore, where: str, data: bytes, seq: int, indexed: int, table: bytes | None = None
) -> str:
    """Writes the snapshot (``GainIndex.to_bytes()`` of ``indexed`` samples, and the
    ``pack_table`` bytes), then the pointer; returns the index's key."""
    key = f"{where}index-{seq:012d}.bin"
    store.ensure_bucket()
    store.put_bytes(key, data)
    pointer: dict[str, object] = {"key": key, "seq": seq, "indexed": indexed}
    if table is not None:
        pointer["table"] = f"{where}index-{seq:012d}.table"
        store.put_bytes(str(pointer["table"]), table, "application/json")
    store.put_bytes(where + POINTER, json.dumps(pointer).encode(), "application/json")
    for suffix in (".bin", ".table"):
        for old in [k for k in store.list(where) if k.endswith(suffix)][:-KEEP]:
            store.delete(old)
    return key


def read(store: ObjectStore, where: str) -> Snapshot | None:
    """The newest snapshot, or None when there is none or it cannot be read (its table
    alone unreadable: the index without it)."""
    try:
        pointer = json.loads(store.get_bytes(where + POINTER))
        found = Snapshot(GainIndex.from_bytes(store.get_bytes(pointer["key"])))
    except FileNotFoundError:
        return None
    except (StoreUnavailable, ValueError, KeyError) as exc:
        log.warning("curator snapshot unreadable (%s): full replay", exc)
        return None
    if "table" in pointer:  # snapshots written before 2026-12-06 have none
        try:
            found.table = unpack_table(store.get_bytes(pointer["table"]))
        except (FileNotFoundError, StoreUnavailable, ValueError, KeyError, TypeError) as exc:
            log.warning("curator snapshot table unreadable (%s): reading the whole changelog", exc)
    return found


_UPLOADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="infogrowth-snapshot")


class Uploader:
    """The snapshot uploads of one shard: in the background, one at a time."""

    def __init__(self, store: ObjectStore, where: str) -> None:
        self.store = store
        self.where = where
        self.running: asyncio.Future[str] | None = None

    def busy(self) -> bool:
        return self.running is not None and not self.running.done()

    def start(self, data: bytes, seq: int, indexed: int, table: bytes | None = None) -> bool:
        """Starts uploading; False (nothing started) while the previous upload runs."""
        if self.busy():
            return False
        loop = asyncio.get_running_loop()
        args = (self.store, self.where, data, seq, indexed, table)
        self.running = loop.run_in_executor(_UPLOADS, write, *args)
        self.running.add_done_callback(lambda done: _report(done, seq, indexed))
        return True


def _report(done: asyncio.Future[str], seq: int, indexed: int) -> None:
    exc = done.exception()
    if exc is not None:  # an optimisation: S3 trouble must not stop the curator
        log.warning("curator snapshot not written (%s)", exc)
    else:
        log.info(
            "curator snapshot written: %d indexed, up to seq %d (%s)", indexed, seq, done.result()
        )
