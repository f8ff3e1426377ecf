"""Fault injection for a worker started with this folder on PYTHONPATH (Python imports
``sitecustomize`` at start-up): INFOGROWTH_TEST_FAULT=<step>:<n> makes the n-th call of
that pipeline step raise, as a model out of memory or a bug would. Steps: ``score`` (the
inference agent's model step, run before its transaction's sends) and ``select`` (the
curator's gain and decisions, run inside its transaction)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _fail_at(fn: Callable[..., Any], step: str, n: int) -> Callable[..., Any]:
    calls = 0

    def step_that_fails_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            raise RuntimeError(f"injected failure of {step} (call {n})")
        return fn(*args, **kwargs)

    return step_that_fails_once


def _install(spec: str) -> None:
    step, _, n = spec.partition(":")
    if step == "score":
        import agents.inference as inference

        inference.score = _fail_at(inference.score, step, int(n))
    elif step == "select":
        from infogrowth.core.curate import Curator

        Curator.select = _fail_at(Curator.select, step, int(n))  # type: ignore[method-assign]
    else:
        raise ValueError(f"INFOGROWTH_TEST_FAULT: unknown step {step!r}")


if os.environ.get("INFOGROWTH_TEST_FAULT"):
    _install(os.environ["INFOGROWTH_TEST_FAULT"])
