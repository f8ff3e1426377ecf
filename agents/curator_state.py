"""The curator's durable state, one entry per sample id in a compacted changelog topic
(one partition per `scored` partition), written in the transaction of the batch that made it.

Entries (dicts in memory; on the changelog ``encode``: a JSON header, then the binary
payload, vectors as packed float32):
  queued   — in the ordered gate (``record`` = the ScoredSample bytes, or None while it
             waits for its recaption);
  indexed  — entered the gain index (its vectors, label, gain and image hash: enough to
             rebuild the index, the hash store and the policy in the original order).
             Samples the budget policy evicted later stay ``indexed``: the rebuild inserts
             them and removes them again at the same point, so the graph is the very one of
             the uninterrupted run;
  rejected — finished without entering the index (misaligned, duplicate, or rejected by the
             policy, except under ``--policy all`` where every selected sample is indexed).
``seq`` is the arrival number, so a restart rebuilds everything in the original order.
Once the index holds the vectors, the curator keeps only ``light`` entries in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from infogrowth.core.dedup import HashStore, usable_hashes
from infogrowth.core.gain import GainIndex
from infogrowth.core.order import OrderedGate
from infogrowth.core.sample import Policy
from infogrowth.io.kafka_io import read_topic, settled_end
from infogrowth.io.vectors import WIRE, pack

Entry = dict[str, Any]
_HEAD = struct.Struct(">I")  # length of the JSON header


def queued(seq: int, record: bytes | None) -> Entry:
    return {"state": "queued", "seq": seq, "record": record}


def indexed(
    seq: int,
    vectors: dict[str, np.ndarray],
    label: str | None,
    gain: float | None,
    image_hash: bytes | None = None,
) -> Entry:
    entry = {"state": "indexed", "seq": seq, "label": label, "gain": gain, "vectors": vectors}
    if image_hash is not None:  # hex in the JSON header; entries without one stay as before
        entry["hash"] = image_hash.hex()
    return entry


def rejected(seq: int) -> Entry:
    return {"state": "rejected", "seq": seq}


def light(entry: Entry) -> Entry:
    """What the running curator keeps in its table: the gate needs the seq, nothing else."""
    return {"state": entry["state"], "seq": entry["seq"]}


def encode(entry: Entry) -> bytes:
    """The changelog value: header length, JSON header, then the vectors (float32, in the
    header's ``dims`` order) or the queued record's bytes."""
    head = {k: v for k, v in entry.items() if k not in ("vectors", "record")}
    payload = b""
    if entry.get("vectors"):
        head["dims"] = {m: len(v) for m, v in entry["vectors"].items()}
        payload = b"".join(pack(v) for v in entry["vectors"].values())  # type: ignore[misc]
    elif entry.get("record") is not None:
        head["record"] = True
        payload = entry["record"]
    header = json.dumps(head).encode()
    return _HEAD.pack(len(header)) + header + payload


def decode(value: bytes, vectors: bool = True) -> Entry:
    """An entry from its changelog value; ``vectors=False`` leaves an indexed entry's
    vectors out (a snapshot holds them)."""
    (size,) = _HEAD.unpack_from(value)
    start = _HEAD.size + size
    entry: Entry = _loads(memoryview(value)[_HEAD.size : start])
    payload = memoryview(value)[start:]
    if entry.pop("record", False):
        entry["record"] = bytes(payload)
    elif entry["state"] == "queued":
        entry["record"] = None
    dims = entry.pop("dims", None)
    if dims is not None and vectors:
        flat = np.frombuffer(payload, dtype=WIRE).astype(np.float32)
        ends = np.cumsum(list(dims.values()))
        entry["vectors"] = dict(zip(dims, np.split(flat, ends[:-1]), strict=True))
    return entry


@dataclass
class Restored:
    """In-memory state rebuilt from the table after a restart."""

    index: GainIndex
    gate: OrderedGate[bytes] = field(default_factory=OrderedGate)
    finished: set[str] = field(default_factory=set)  # indexed or rejected ids
    next_seq: int = 0
    released: list[tuple[str, bytes]] = field(default_factory=list)  # ready at restore time
    from_snapshot: int = 0  # indexed samples taken from a snapshot instead of re-inserted
    hashes: HashStore = field(default_factory=HashStore)  # of the indexed samples, evictions done


def _loads(text: bytes | memoryview) -> Any:
    """JSON that ``encode`` wrote: orjson (a restore reads one header and one key per
    sample: 10^5 of each in ~0.3 s instead of ~1.5 s), json for what orjson refuses (a NaN
    gain, a lone surrogate in a label)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(bytes(text))


def read_entries(
    bootstrap: str, topic: str, partition: int, without_vectors: Container[str] = frozenset()
) -> dict[str, Entry]:
    """The committed entries of one changelog partition: each key's last value, read up to
    the partition's end once no transaction is open on it (the previous owner's open
    transaction is aborted when this worker's producer for the partition starts). The keys
    in ``without_vectors`` keep no vectors (a snapshot's samples: 4 KB each at 2 x 512-d)."""
    end = settled_end(bootstrap, topic, partition)
    entries: dict[str, Entry] = {}
    for msg in read_topic(bootstrap, topic, partitions=[partition], ends={partition: end}):
        key, value = _loads(msg.key()), msg.value()
        if value:
            entries[key] = decode(value, vectors=key not in without_vectors)
        else:  # a tombstone
            entries.pop(key, None)
    return entries


def read_and_restore(
    bootstrap: str,
    topic: str,
    partition: int,
    index: GainIndex,
    policy: Policy,
    snapshot: GainIndex | None = None,
) -> tuple[dict[str, Entry], Restored]:
    """``read_entries`` then ``restore``, holding vectors only for the samples a snapshot
    does not cover; if it does not cover the committed table after all (its batch aborted),
    the partition is read again with every vector, for a full replay."""
    covered = set(snapshot.ids) if snapshot is not None else set()
    entries = read_entries(bootstrap, topic, partition, without_vectors=covered)
    if snapshot is not None and not covers(snapshot, _indexed(entries), index):
        snapshot = None
        entries = read_entries(bootstrap, topic, partition)
    return entries, restore(entries, index, policy, snapshot)


def _indexed(entries: dict[str, Entry]) -> list[tuple[str, Entry]]:
    """The indexed entries in arrival order."""
    done = [(k, e) for k, e in entries.items() if e["state"] == "indexed"]
    return sorted(done, key=lambda kv: kv[1]["seq"])


def restore(
    entries: dict[str, Entry], index: GainIndex, policy: Policy, snapshot: GainIndex | None = None
) -> Restored:
    """Replays the table in arrival order into a fresh index, policy and gate. A
    ``snapshot`` whose samples are the first indexed ones of the table stands in for them:
    only the samples indexed after it are inserted (the policy replays every gain)."""
    parsed = sorted(entries.items(), key=lambda kv: kv[1]["seq"])
    state = Restored(index=index)
    done = [(k, e) for k, e in parsed if e["state"] == "indexed"]  # as _indexed, sorted once
    removals = {}  # the policy's memory (budget heap) and its evictions, replayed
    for key, entry in done:
        evicted = policy.decide(key, entry["gain"]).evicted
        if evicted:
            removals[key] = list(evicted)
    start = len(snapshot) if snapshot is not None and covers(snapshot, done, index) else 0
    state.from_snapshot = start
    if start:
        state.index = snapshot  # type: ignore[assignment]
    elif done:
        state.index = GainIndex(**index.params)
    tail = done[start:]
    if tail:
        vectors = {m: np.stack([e["vectors"][m] for _, e in tail]) for m in index.modalities}
        labels = [e["label"] for _, e in tail]
        state.index.insert_stored([k for k, _ in tail], vectors, labels, removals=removals)
    state.hashes = restore_hashes(done, removals)
    for key, entry in parsed:
        if entry["state"] == "queued":
            state.released += state.gate.push(key, entry["record"])
        else:
            state.finished.add(key)
    state.next_seq = parsed[-1][1]["seq"] + 1 if parsed else 0
    return state


def restore_hashes(done: list[tuple[str, Entry]], removals: dict[str, list[str]]) -> HashStore:
    """The hash store of the indexed samples, rebuilt in arrival order with the evictions at
    the same points (snapshots hold the gain index only; the hashes are small)."""
    hashes = HashStore()
    for key, entry in done:
        stored = usable_hashes(bytes.fromhex(entry["hash"])) if entry.get("hash") else None
        if stored is not None:
            hashes.add(key, stored)
        hashes.remove(removals.get(key, ()))
    return hashes


def covers(snapshot: GainIndex, done: list[tuple[str, Entry]], index: GainIndex) -> bool:
    """The snapshot holds exactly the first indexed samples of the committed table, with
    the configured parameters (a snapshot of a batch whose transaction aborted does not)."""
    ids = snapshot.ids
    return (
        snapshot.params == index.params
        and 0 < len(ids) <= len(done)
        and ids == [k for k, _ in done[: len(ids)]]
    )
