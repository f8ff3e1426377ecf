"""The curator's durable state, one changelog-backed table entry per sample id.

Entries (JSON dicts, vectors as base64 float32):
  queued   — in the ordered gate (``record`` = the ScoredSample bytes, or None while it
             waits for its recaption);
  indexed  — entered the gain index (its vectors, label and gain: enough to rebuild the index
             and the policy in the original order). Samples the budget policy evicted later
             stay ``indexed``: the rebuild inserts them and removes them again at the same
             point, so the graph is the very one of the uninterrupted run;
  rejected — finished without entering the index (misaligned, duplicate, or rejected by the
             policy, except under ``--policy all`` where every selected sample is indexed).
``seq`` is the arrival number, so a restart rebuilds everything in the original order.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infogrowth.gain import GainIndex
from infogrowth.order import OrderedGate
from infogrowth.sample import Policy


def _vec(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()


def _unvec(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float32)


Entry = dict[str, Any]


def queued(seq: int, record: bytes | None) -> Entry:
    body = None if record is None else base64.b64encode(record).decode()
    return {"state": "queued", "seq": seq, "record": body}


def indexed(
    seq: int, vectors: dict[str, np.ndarray], label: str | None, gain: float | None
) -> Entry:
    vecs = {m: _vec(v) for m, v in vectors.items()}
    return {"state": "indexed", "seq": seq, "label": label, "gain": gain, "vectors": vecs}


def rejected(seq: int) -> Entry:
    return {"state": "rejected", "seq": seq}


@dataclass
class Restored:
    """In-memory state rebuilt from the table after a restart."""

    index: GainIndex
    gate: OrderedGate[bytes] = field(default_factory=OrderedGate)
    finished: set[str] = field(default_factory=set)  # indexed or rejected ids
    next_seq: int = 0
    released: list[tuple[str, bytes]] = field(default_factory=list)  # ready at restore time


def restore(entries: dict[str, Entry], index: GainIndex, policy: Policy) -> Restored:
    """Replays the table in arrival order into a fresh index, policy and gate."""
    parsed = sorted(entries.items(), key=lambda kv: kv[1]["seq"])
    state = Restored(index=index)
    done = [(k, e) for k, e in parsed if e["state"] == "indexed"]
    if done:
        vectors = {
            m: np.stack([_unvec(e["vectors"][m]) for _, e in done]) for m in index.modalities
        }
        labels = [e["label"] for _, e in done]
        removals = {}  # the policy's memory (budget heap) and its evictions, replayed
        for key, entry in done:
            evicted = policy.decide(key, entry["gain"]).evicted
            if evicted:
                removals[key] = list(evicted)
        state.index = GainIndex.rebuild(
            [k for k, _ in done], vectors, labels, removals=removals, **index.params
        )
    for key, entry in parsed:
        if entry["state"] == "queued":
            record = entry["record"]
            ready = None if record is None else base64.b64decode(record)
            state.released += state.gate.push(key, ready)
        else:
            state.finished.add(key)
    state.next_seq = parsed[-1][1]["seq"] + 1 if parsed else 0
    return state
