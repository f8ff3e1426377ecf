"""`kill -USR1 <worker pid>` logs where a stalled worker waits.

mode's Worker answers SIGUSR1 with every thread's stack and each asyncio task's outermost
frame, which stops at the first ``async for``: an agent waiting inside its stream or a
commit shows as one line of Faust. This replaces that with each task's whole await chain
(coroutines, async generators, the future at the end), innermost frame last, and the
chains of suspended async generators.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from types import AsyncGeneratorType, FrameType
from typing import Any

import mode.worker

log = logging.getLogger("infogrowth.agents")
# Parts of the worker that describe their own state in a dump (the curator's gates).
REPORTERS: list[Callable[[], str]] = []


def _frames(awaitable: Any) -> Iterator[FrameType | str]:
    """The frames of a suspended coroutine chain, then what its innermost await waits on."""
    seen = 0
    while awaitable is not None and seen < 100:
        seen += 1
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        frame = frame or getattr(awaitable, "gi_frame", None)
        if frame is None:
            yield repr(awaitable)[:300]
            return
        yield frame
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "ag_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
        )


def task_chains() -> str:
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"TASK {task.get_name()}")
        lines += [_line(item) for item in _frames(task.get_coro())]
    return "\n".join(lines)


def generator_chains() -> str:
    """Suspended async generators, whose chains an ``async for`` hides from the task
    (``async_generator_asend`` keeps no reference to its generator)."""
    lines = []
    for obj in gc.get_objects():
        if isinstance(obj, AsyncGeneratorType) and obj.ag_await is not None:
            lines.append(f"ASYNC GENERATOR {obj.__qualname__}")
            lines += [_line(item) for item in _frames(obj)]
    return "\n".join(lines)


def _line(item: FrameType | str) -> str:
    if isinstance(item, str):
        return f"    waits on {item}"
    return f"  {item.f_code.co_filename}:{item.f_lineno} {item.f_code.co_name}"


def partition_states(app: Any) -> str:
    """Per assigned partition: aiokafka's fetch state (position, paused, last LSO and high
    watermark seen) and Faust's read offset and pause: why records are not fetched."""
    try:
        faust_consumer = app.consumer
        states = faust_consumer._thread._ensure_consumer()._subscription.subscription
        states = states.assignment._tp_state
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not fail
        return f"partition states unavailable ({exc!r})"
    paused = faust_consumer._paused_partitions
    lines = []
    for tp, st in sorted(states.items()):
        lines.append(
            f"{tp.topic}[{tp.partition}] {st!r} paused={st.paused} lso={st.lso} "
            f"highwater={st.highwater} faust_read_offset={faust_consumer._read_offset.get(tp)} "
            f"faust_paused={tp in paused}"
        )
    return "\n".join(lines)


def reports() -> str:
    return "\n".join(_report(reporter) for reporter in REPORTERS)


def _report(reporter: Callable[[], str]) -> str:
    try:
        return reporter()
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not fail
        return f"{reporter!r} failed ({exc!r})"


def thread_stacks() -> str:
    return "\n".join(
        f"THREAD {tid}\n{''.join(traceback.format_stack(frame))}"
        for tid, frame in sys._current_frames().items()
    )


async def _dump(self: mode.worker.Worker) -> None:
    app = getattr(self, "app", None)
    states = partition_states(app) if app is not None else ""
    dump = "\n".join((thread_stacks(), task_chains(), generator_chains(), states, reports()))
    log.warning("SIGUSR1: threads, asyncio tasks and async generators\n%s", dump)


def install() -> None:
    mode.worker.Worker._cry = _dump  # type: ignore[method-assign]
