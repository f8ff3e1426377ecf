"""Policies and per-epoch samplers."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from infogrowth.core.sample import (
    AcceptAll,
    BudgetPolicy,
    ThresholdPolicy,
    dynamic_sample,
    make_policy,
    normalise_gains,
    static_sample,
    unit_random,
)
from infogrowth.records import REASON_OVER_BUDGET, REASON_REDUNDANT
from infogrowth.settings import Settings


def test_threshold_policy() -> None:
    policy = ThresholdPolicy(0.05)
    assert policy.decide("first", None).accepted
    assert policy.decide("first-nan", math.nan).accepted
    assert policy.decide("a", 0.05).accepted
    rejected = policy.decide("b", 0.049)
    assert not rejected.accepted and rejected.reason == REASON_REDUNDANT and rejected.evicted == []


def test_accept_all() -> None:
    assert AcceptAll().decide("a", 0.0).accepted
    assert AcceptAll().decide("b", None).reason is None


def test_budget_policy_keeps_best() -> None:
    policy = BudgetPolicy(3)
    stream = [("a", 0.5), ("b", None), ("c", 0.2), ("d", 0.1), ("e", 0.9), ("f", 0.3)]
    decisions = {sid: policy.decide(sid, gain) for sid, gain in stream}
    assert all(decisions[s].accepted and decisions[s].evicted == [] for s in "abc")
    assert not decisions["d"].accepted and decisions["d"].reason == REASON_OVER_BUDGET
    assert decisions["e"].accepted and decisions["e"].evicted == ["c"]
    assert not decisions["f"].accepted  # 0.3 < worst kept (a, 0.5)
    assert policy.kept == ["b", "e", "a"]  # best first; None counts as +inf
    restored = BudgetPolicy.from_state(3, policy.state())
    assert restored.kept == policy.kept


def test_budget_policy_eviction_order_and_ties() -> None:
    policy = BudgetPolicy(2)
    assert policy.decide("x", 0.4).accepted
    assert policy.decide("y", 0.6).accepted
    low = policy.decide("z", 0.3)
    assert not low.accepted and low.reason == REASON_OVER_BUDGET
    high = policy.decide("w", 0.5)
    assert high.accepted and high.evicted == ["x"]
    assert policy.kept == ["y", "w"]
    assert policy.decide("y", 0.0).accepted and policy.kept == ["y", "w"]  # redelivery
    # Ties: the outcome only depends on the ids, not on arrival order.
    kept = []
    for order in (["t1", "t2", "t3"], ["t3", "t1", "t2"], ["t2", "t3", "t1"]):
        tie = BudgetPolicy(1)
        for sid in order:
            tie.decide(sid, 0.5)
        kept.append(tie.kept)
    assert kept[0] == kept[1] == kept[2]
    assert not BudgetPolicy(0).decide("a", None).accepted


def test_make_policy() -> None:
    assert isinstance(make_policy(Settings(policy="threshold", tau=0.2)), ThresholdPolicy)
    assert make_policy(Settings(policy="threshold", tau=0.2)).tau == 0.2
    budget = make_policy(Settings(policy="budget", budget=7))
    assert isinstance(budget, BudgetPolicy) and budget.budget == 7
    assert isinstance(make_policy(Settings(policy="all")), AcceptAll)


def test_normalise_gains() -> None:
    gains = np.linspace(0.0, 1.0, 101)  # p99 = 0.99
    p = normalise_gains(gains)
    assert p[50] == pytest.approx(0.5 / 0.99) and p[-1] == 1.0 and p[0] == 0.0
    assert normalise_gains([None, 0.2, 0.4], percentile=100).tolist() == [1.0, 0.5, 1.0]
    assert normalise_gains([0.0, 0.0]).tolist() == [0.0, 0.0]
    assert np.all((p >= 0) & (p <= 1))


def test_unit_random_is_deterministic_and_uniform() -> None:
    assert unit_random(1, "a", 0) == unit_random(1, "a", 0)
    assert len({unit_random(1, "a", 0), unit_random(2, "a", 0), unit_random(1, "a", 1)}) == 3
    draws = np.array([unit_random(0, f"id{i}", 3) for i in range(20000)])
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01
    assert np.histogram(draws, bins=10, range=(0, 1))[0].min() > 1800


def test_static_sample_probabilities() -> None:
    n = 20000
    ids = [f"s{i}" for i in range(n)]
    gains = np.where(np.arange(n) < n // 2, 1.0, 0.25)  # p99 = 1 -> p = 1 or 0.25
    chosen = set(static_sample(ids, gains, epoch=0, seed=7))
    assert all(f"s{i}" in chosen for i in range(n // 2))  # gain 1 is always kept
    rate = sum(f"s{i}" in chosen for i in range(n // 2, n)) / (n // 2)
    assert abs(rate - 0.25) < 0.02
    assert static_sample(ids, gains, 0, 7) == static_sample(ids, gains, 0, 7)
    assert static_sample(ids, gains, 0, 7) != static_sample(ids, gains, 1, 7)


def test_static_sample_fills_target() -> None:
    ids = [f"s{i}" for i in range(1000)]
    gains = np.full(1000, 0.3)
    gains[-20:] = 1.0  # p99 = 1 -> p = 0.3 for most
    chosen = static_sample(ids, gains, epoch=2, seed=1, target=1000)
    assert len(chosen) == 1000
    assert max(Counter(chosen).values()) > 1  # several passes were needed
    assert chosen == static_sample(ids, gains, epoch=2, seed=1, target=1000)
    assert static_sample(ids, np.zeros(1000), 0, 1, target=10) == []


def test_dynamic_sample_phases() -> None:
    n = 20000
    ids = [f"s{i}" for i in range(n)]
    gains = np.ones(n)  # normalised gain 1 everywhere
    phase_a = dynamic_sample(ids, gains, epoch=1, seed=3)
    phase_b = dynamic_sample(ids, gains, epoch=2, seed=3)
    assert len(phase_a) == n  # odd: p = gain = 1
    assert abs(len(phase_b) / n - 0.1) < 0.01  # even: p = max(1 - 1, 0.1)
    low = dynamic_sample(ids, np.r_[np.zeros(n - 1), 1.0], epoch=4, seed=3)
    assert len(low) >= n - 1  # even: gain 0 -> p = 1
    assert dynamic_sample(ids, gains, 2, 3) == phase_b
