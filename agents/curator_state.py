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

A snapshot (agents/snapshot.py) holds, beside the index, the whole table without vectors
(``pack_table``) and the ``Mark`` of the last changelog record it reflects; a restart reads
only the changelog from that record on (``read_entries`` with a base), after checking that
the record is there, committed, in the same topic.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Container, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from infogrowth.core.dedup import HashStore, usable_hashes
from infogrowth.core.gain import GainIndex
from infogrowth.core.order import OrderedGate
from infogrowth.core.sample import Policy
from infogrowth.io.hanging import settled_end
from infogrowth.io.kafka_io import read_topic, topic_id
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
    """What the running curator keeps of an entry: the gate needs the seq; a snapshot's
    table needs an indexed entry's gain and hash too (the policy and the hash store are
    replayed from them), not its vectors (the index has them) or a queued record (the
    gate has it)."""
    return {k: v for k, v in entry.items() if k not in ("vectors", "record", "label")}


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


@dataclass(frozen=True)
class Mark:
    """The last changelog record a state reflects: its topic's id, its offset and key."""

    topic_id: str
    offset: int
    key: bytes


def pack_table(entries: Iterable[tuple[str, Entry]], mark: Mark) -> bytes:
    """The table without vectors, as a snapshot keeps it: light entries, a queued entry's
    record (base64), and the mark of the changelog record it reflects."""
    table = {}
    for key, entry in entries:
        head = light(entry)
        if entry.get("record") is not None:
            head["record"] = base64.b64encode(entry["record"]).decode()
        table[key] = head
    where = {"topic_id": mark.topic_id, "offset": mark.offset, "key": mark.key.hex()}
    return json.dumps({"mark": where, "entries": table}).encode()  # json: a NaN gain stays NaN


def unpack_table(data: bytes) -> tuple[dict[str, Entry], Mark]:
    doc = _loads(data)
    where = doc["mark"]
    mark = Mark(where["topic_id"], int(where["offset"]), bytes.fromhex(where["key"]))
    entries = doc["entries"]
    for entry in entries.values():
        if entry["state"] == "queued":
            record = entry.get("record")
            entry["record"] = None if record is None else base64.b64decode(record)
    return entries, mark


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
    changelog_id: str = ""  # the changelog topic's id
    mark: Mark | None = None  # the last changelog record read (None: the partition is empty)
    read_from: int = 0  # the offset the changelog was read from (0: all of it)


def _loads(text: bytes | memoryview) -> Any:
    """JSON that ``encode`` wrote: orjson (a restore reads one header and one key per
    sample: 10^5 of each in ~0.3 s instead of ~1.5 s), json for what orjson refuses (a NaN
    gain, a lone surrogate in a label)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(bytes(text))


@dataclass
class ChangelogRead:
    entries: dict[str, Entry]
    topic_id: str
    mark: Mark | None  # the last record read (or the base's)
    start: int  # the offset reading began at


def read_entries(
    bootstrap: str,
    topic: str,
    partition: int,
    without_vectors: Container[str] = frozenset(),
    base: tuple[dict[str, Entry], Mark] | None = None,
) -> ChangelogRead | None:
    """The committed entries of one changelog partition: each key's last value, read up to
    the partition's end once no transaction is open on it (the previous owner's open
    transaction is aborted when this worker's producer for the partition starts). The keys
    in ``without_vectors`` keep no vectors (a snapshot's samples: 4 KB each at 2 x 512-d).

    ``base``: a snapshot's table and the mark of the record it reflects. Only the records
    from that one on are read, over the table; None when the partition does not hold that
    record as the first committed one from its offset (another topic of the same name, a
    transaction that aborted after the snapshot was taken, the record compacted away)."""
    tid = topic_id(bootstrap, topic)
    if base is not None and base[1].topic_id != tid:
        return None
    end = settled_end(bootstrap, topic, partition)
    entries, mark = (dict(base[0]), base[1]) if base is not None else ({}, None)
    start = mark.offset if mark is not None else 0
    expect = mark
    reading = read_topic(
        bootstrap, topic, partitions=[partition], ends={partition: end}, starts={partition: start}
    )
    with closing(reading):
        for msg in reading:
            if expect is not None:  # the base's own record: already in its table
                if msg.offset() != expect.offset or msg.key() != expect.key:
                    return None
                expect = None
                continue
            key, value = _loads(msg.key()), msg.value()
            if value:
                entries[key] = decode(value, vectors=key not in without_vectors)
            else:  # a tombstone
                entries.pop(key, None)
            mark = Mark(tid, msg.offset(), msg.key())
    if expect is not None:
        return None  # the base's record is not there
    return ChangelogRead(entries, tid, mark, start)


def read_and_restore(
    bootstrap: str,
    topic: str,
    partition: int,
    index: GainIndex,
    policy: Policy,
    snapshot: GainIndex | None = None,
    table: tuple[dict[str, Entry], Mark] | None = None,
) -> tuple[dict[str, Entry], Restored]:
    """``read_entries`` then ``restore``, holding vectors only for the samples a snapshot
    does not cover. With the snapshot's ``table``, only the changelog's tail is read; where
    the partition does not continue that table, all of it. If the snapshot does not cover
    the committed table after all (its batch aborted), the partition is read again with
    every vector, for a full replay."""
    covered = set(snapshot.ids) if snapshot is not None else set()
    read = None
    if table is not None:
        read = read_entries(bootstrap, topic, partition, covered, base=table)
    if read is None:
        read = read_entries(bootstrap, topic, partition, without_vectors=covered)
    assert read is not None  # without a base there is nothing to refuse
    if snapshot is not None and not _stands_in(snapshot, _indexed(read.entries), index):
        snapshot = None
        read = read_entries(bootstrap, topic, partition)
        assert read is not None
    restored = restore(read.entries, index, policy, snapshot)
    restored.changelog_id, restored.mark, restored.read_from = read.topic_id, read.mark, read.start
    return read.entries, restored


def _stands_in(snapshot: GainIndex, done: list[tuple[str, Entry]], index: GainIndex) -> bool:
    """The snapshot covers the table, and every indexed entry past it has its vectors (a
    snapshot's table has none: one that held more than its index would be unusable)."""
    return covers(snapshot, done, index) and all("vectors" in e for _, e in done[len(snapshot) :])


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
    the configured parameters (a snapshot of a batch whose transaction aborted does not).
    An empty one covers none: taken while the gate held every sample of the shard, its
    table still spares the read of the changelog before its mark."""
    ids = snapshot.ids
    return (
        snapshot.params == index.params
        and len(ids) <= len(done)
        and ids == [k for k, _ in done[: len(ids)]]
    )
