"""Fault injection for a worker started with this folder on PYTHONPATH (Python imports
``sitecustomize`` at start-up): INFOGROWTH_TEST_FAULT=<step>:<n> makes the n-th call of
that pipeline step and every later one raise, as a model gone from its device or a bug
would. Steps: ``score`` (the
inference agent's model step, run before its transaction's sends) and ``select`` (the
curator's gain and decisions, run inside its transaction). ``score-once:<n>``: only the
n-th model step raises (a passing fault). ``score-row:<id>``: every model step that holds
sample <id> raises (a row the model cannot take). ``restore-delay:<s>``: every restore of
a curated partition in the curator's selection process (``curator_process``) first sleeps
<s> seconds (a long changelog to read)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _fail_from(fn: Callable[..., Any], step: str, n: int, once: bool = False) -> Callable[..., Any]:
    calls = 0

    def step_that_fails(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n or (calls > n and not once):
            raise RuntimeError(f"injected failure of {step} (call {calls})")
        return fn(*args, **kwargs)

    return step_that_fails


def _fail_on_row(fn: Callable[..., Any], sample_id: str) -> Callable[..., Any]:
    def step_that_fails_on_the_row(curator: Any, items: list[Any]) -> Any:
        if any(item.sample.id == sample_id for item in items):
            raise RuntimeError(f"injected failure of the model on {sample_id}")
        return fn(curator, items)

    return step_that_fails_on_the_row


def _delayed(fn: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def restore_that_takes_long(*args: Any, **kwargs: Any) -> Any:
        import logging
        import time

        logging.getLogger(__name__).warning("injected delay of a restore: %.0f s", seconds)
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return restore_that_takes_long


def _install(spec: str) -> None:
    step, _, n = spec.partition(":")
    if step.startswith("score"):
        import agents.inference as inference

        if step == "score-row":
            inference.score = _fail_on_row(inference.score, n)
        elif step in ("score", "score-once"):
            inference.score = _fail_from(inference.score, "score", int(n), step == "score-once")
        else:
            raise ValueError(f"INFOGROWTH_TEST_FAULT: unknown step {step!r}")
    elif step == "select":
        from infogrowth.core.curate import Curator

        Curator.select = _fail_from(Curator.select, step, int(n))  # type: ignore[method-assign]
    elif step == "restore-delay":
        import infogrowth  # noqa: F401  (its thread settings before numpy loads)
        from agents import selection_state  # the selection process's restores call it here

        selection_state.restore_selection = _delayed(selection_state.restore_selection, float(n))
    else:
        raise ValueError(f"INFOGROWTH_TEST_FAULT: unknown step {step!r}")


if os.environ.get("INFOGROWTH_TEST_FAULT"):
    _install(os.environ["INFOGROWTH_TEST_FAULT"])
