"""Selection: online accept/reject policies and the paper's per-epoch samplers.

Policies decide once per arriving sample from its gain. Samplers pick, per training epoch,
which curated samples to train on, with probabilities from the normalised gains. All
randomness is derived from blake2b(seed, sample id, epoch), so reruns are byte-identical
and independent of the order or sharding in which samples are visited.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infogrowth.records import REASON_OVER_BUDGET, REASON_REDUNDANT
from infogrowth.settings import Settings

# Floor of the dynamic sampler's reverse phase (official code: p[p < 0.1] = 0.1).
REVERSE_FLOOR = 0.1
# Guard for static/dynamic sampling with a target and near-zero probabilities.
MAX_PASSES = 10_000


@dataclass(frozen=True)
class Decision:
    accepted: bool
    evicted: list[str] = field(default_factory=list)  # previously accepted ids now dropped
    reason: str | None = None  # None when accepted


class Policy(Protocol):
    def decide(self, sample_id: str, gain: float | None) -> Decision: ...


class AcceptAll:
    """Keep everything (gains are still computed and recorded)."""

    def decide(self, sample_id: str, gain: float | None) -> Decision:
        return Decision(True)


class ThresholdPolicy:
    """Accept when gain >= tau, or when there is no gain (None/nan: the first sample has no
    neighbour, so it is infinitely novel)."""

    def __init__(self, tau: float) -> None:
        self.tau = float(tau)

    def decide(self, sample_id: str, gain: float | None) -> Decision:
        if gain is None or math.isnan(gain) or gain >= self.tau:
            return Decision(True)
        return Decision(False, reason=REASON_REDUNDANT)


class BudgetPolicy:
    """Keep the ``budget`` highest gains seen so far (a min-heap of the kept samples).

    A newcomer better than the current worst kept sample replaces it (returned in
    ``evicted``); otherwise it is rejected as over_budget. A missing gain counts as +inf;
    equal gains are ordered by a hash of the id, so the outcome does not depend on luck.
    Deciding an id that is already kept again (a redelivery) accepts it without change.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.budget = int(budget)
        self._heap: list[tuple[float, int, str]] = []
        self._kept: set[str] = set()

    def decide(self, sample_id: str, gain: float | None) -> Decision:
        if sample_id in self._kept:
            return Decision(True)
        value = math.inf if gain is None or math.isnan(gain) else float(gain)
        entry = (value, _id_hash(sample_id), sample_id)
        if len(self._heap) < self.budget:
            heapq.heappush(self._heap, entry)
            self._kept.add(sample_id)
            return Decision(True)
        if not self._heap or entry <= self._heap[0]:
            return Decision(False, reason=REASON_OVER_BUDGET)
        evicted = heapq.heapreplace(self._heap, entry)[2]
        self._kept.discard(evicted)
        self._kept.add(sample_id)
        return Decision(True, evicted=[evicted])

    @property
    def kept(self) -> list[str]:
        """Ids currently kept, best gain first."""
        return [entry[2] for entry in sorted(self._heap, reverse=True)]

    def state(self) -> list[tuple[float, str]]:
        """(gain, id) of the kept samples, enough to restore the policy (checkpoints)."""
        return [(gain, sample_id) for gain, _, sample_id in sorted(self._heap)]

    @classmethod
    def from_state(cls, budget: int, state: Sequence[tuple[float, str]]) -> BudgetPolicy:
        policy = cls(budget)
        for gain, sample_id in state:
            policy.decide(sample_id, gain)
        return policy


def _id_hash(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest())


def make_policy(settings: Settings) -> Policy:
    if settings.policy == "threshold":
        return ThresholdPolicy(settings.tau)
    if settings.policy == "budget":
        return BudgetPolicy(settings.budget)
    if settings.policy == "all":
        return AcceptAll()
    raise ValueError(f"unknown policy {settings.policy!r}")


# --- per-epoch samplers (paper / official GainSampler, GainSamplerV2) ------------------------


def normalise_gains(
    gains: Sequence[float | None] | np.ndarray, percentile: float = 99
) -> np.ndarray:
    """gain / (its ``percentile``-th percentile), clipped to [0, 1], as the official code.

    A missing gain (None/nan: the first sample) is 1. If the percentile is 0 (all gains 0),
    positive gains become 1 and the rest 0.
    """
    g = np.array([np.nan if x is None else x for x in gains], dtype=np.float64)
    finite = g[np.isfinite(g)]
    upper = float(np.percentile(finite, percentile)) if finite.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = g / upper if upper > 0 else np.where(g > 0, 1.0, 0.0)
    p = np.where(np.isnan(g) | (g == np.inf), 1.0, p)
    return np.clip(p, 0.0, 1.0)


def unit_random(seed: int, sample_id: str, epoch: int, draw: int = 0) -> float:
    """A uniform number in [0, 1) fixed by (seed, id, epoch[, draw]); no global RNG."""
    key = f"{seed}\x1f{sample_id}\x1f{epoch}"
    if draw:
        key += f"\x1f{draw}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest) >> 11) / float(1 << 53)


def static_sample(
    ids: Sequence[str],
    gains: Sequence[float | None] | np.ndarray,
    epoch: int,
    seed: int,
    target: int | None = None,
) -> list[str]:
    """Keep each sample with probability = its normalised gain (GainSampler).

    Without ``target``: one pass. With it, passes repeat (pass index folded into the
    random key) until ``target`` ids are chosen; a sample may then appear more than once,
    as in the official code, and the last pass contributes a hash-chosen subset.
    """
    return _sample(ids, normalise_gains(gains), epoch, seed, target)


def dynamic_sample(
    ids: Sequence[str],
    gains: Sequence[float | None] | np.ndarray,
    epoch: int,
    seed: int,
    target: int | None = None,
) -> list[str]:
    """Alternate two phases by epoch parity (GainSamplerV2).

    * odd epochs, phase A: p = normalised gain (favour informative samples);
    * even epochs, phase B: p = max(1 - normalised gain, 0.1) (revisit the easy ones).

    Epochs are numbered as in the official code, which counts from 1: its first epoch
    (seed 1, odd) is phase A. Callers counting from 0 should pass ``epoch + 1``.
    """
    p = normalise_gains(gains)
    if epoch % 2 == 0:
        p = np.maximum(1.0 - p, REVERSE_FLOOR)
    return _sample(ids, p, epoch, seed, target)


def _sample(
    ids: Sequence[str], p: np.ndarray, epoch: int, seed: int, target: int | None
) -> list[str]:
    if len(ids) != len(p):
        raise ValueError(f"got {len(p)} gains for {len(ids)} ids")
    if target is None:
        return _one_pass(ids, p, epoch, seed, 0)
    chosen: list[str] = []
    draw = 0
    while len(chosen) < target and float(p.sum()) > 0:
        picked = _one_pass(ids, p, epoch, seed, draw)
        room = target - len(chosen)
        if len(picked) > room:  # last pass: an unbiased hash-ordered subset
            order = sorted(picked, key=lambda i: unit_random(seed, i, epoch, -1 - draw))
            keep = set(order[:room])
            picked = [i for i in picked if i in keep]
        chosen.extend(picked)
        draw += 1
        if draw >= MAX_PASSES and len(chosen) < target:
            raise ValueError(f"{MAX_PASSES} passes did not fill {target}: gains too small")
    return chosen


def _one_pass(ids: Sequence[str], p: np.ndarray, epoch: int, seed: int, draw: int) -> list[str]:
    return [
        sample_id
        for sample_id, prob in zip(ids, p.tolist(), strict=True)
        if unit_random(seed, sample_id, epoch, draw) < prob
    ]
