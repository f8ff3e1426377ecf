"""The curator's selection state in a process of its own (``curator_process``).

In one worker process the curator's two halves take turns: the event loop (decoding,
Faust's and aiokafka's per-record paths, Avro) and ``Curator.select`` (the gain search and
the policy) share one interpreter lock, and ``select`` on a thread of its own only slows
down beside a busy event loop (docs/pipeline-throughput.md, seventh and seventeenth
sessions). Here a spawned child owns every curated partition's selection state (gain
index, image hashes, policy): it restores it (changelog, snapshot), selects each batch's
aligned samples in arrival order, and serialises the index for a snapshot, so that state
never crosses the pipe. The worker's event loop hands it a batch's `scored` records as
bytes (the child decodes them: cheaper than pickling the decoded samples) and goes on
sending the previous batch's outcomes meanwhile (agents/curator.py: two batches in flight).

Requests are answered in the order they were sent. A child that exits fails every request
waiting on it and every later one: the batch fails and the worker stops, and the next
worker restores from the committed changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from infogrowth.settings import Settings


class SelectionProcessExited(RuntimeError):
    """The child that held the curator's selection state is gone."""


class SelectionProcess:
    """The parent's end: ``call`` sends a request and returns a future of its answer."""

    def __init__(self, settings: Settings, log_level: int | None = None) -> None:
        """``log_level``: the child's (default: the worker's, its root logger's level)."""
        if log_level is None:
            log_level = logging.getLogger().getEffectiveLevel()
        context = mp.get_context("spawn")  # no fork of a process with threads and sockets
        self._conn, child = context.Pipe()
        self._proc = context.Process(
            target=_serve,
            args=(settings, child, log_level),
            name="infogrowth-selection",
            daemon=True,
        )
        self._proc.start()
        child.close()
        # A batch of 256 records is ~1 MB: the pipe takes 64 KB at a time and the child
        # reads between selections, so sends go through a thread, in the order of ``call``.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="infogrowth-selection-send")
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = deque()
        self._lock = threading.Lock()
        self._gone: BaseException | None = None
        threading.Thread(target=self._read, name="infogrowth-selection-read", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def call(self, op: str, *args: Any) -> asyncio.Future[Any]:
        """Sends ``op(*args)`` to the child (from the event loop's thread)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._gone is not None:
                answer.set_exception(self._gone)
                return answer
            self._waiting.append((loop, answer))
        self._writer.submit(self._send, (op, args))
        return answer

    def _send(self, request: tuple[str, tuple[Any, ...]]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the child is gone: the reader
            self._conn.send(request)  # fails what waits

    def _read(self) -> None:
        while True:
            try:
                reply = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._fail_all(exc)
                return
            with self._lock:
                loop, answer = self._waiting.popleft()
            loop.call_soon_threadsafe(_settle, answer, reply)

    def _fail_all(self, cause: BaseException) -> None:
        code = self._proc.exitcode if not self._proc.is_alive() else None
        error = SelectionProcessExited(
            f"the curator's selection process {self._proc.pid} exited (code {code}): {cause!r}"
        )
        with self._lock:
            self._gone = error
            waiting, self._waiting = list(self._waiting), deque()
        for loop, answer in waiting:
            loop.call_soon_threadsafe(_settle, answer, _Failed(error))


class _Failed:
    """An op that raised in the child: its exception travels back in this."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(answer: asyncio.Future[Any], reply: Any) -> None:
    if answer.done():  # cancelled: the batch waiting for it was cut short
        return
    if isinstance(reply, _Failed):
        answer.set_exception(reply.error)
    else:
        answer.set_result(reply)


def _serve(settings: Settings, conn: Any, log_level: int) -> None:
    """The child: runs requests one at a time until the parent closes its end."""
    # A process group of its own: a signal to the worker's group (a graceful stop's
    # SIGTERM, Ctrl-C) is the worker's to handle, and the worker still needs this process
    # until it has stopped; it goes when the worker's end of the pipe closes (EOF), also
    # when the worker is killed.
    os.setpgrp()
    # Its lines go where the worker's go (stderr is the worker's): a spawned process
    # inherits no logging set-up, and would drop its INFO lines (the scan's GEMM, an
    # HNSW build) and print bare warnings. At the worker's level (its --loglevel).
    logging.basicConfig(
        level=log_level,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] [selection process]: %(message)s",
    )
    import infogrowth  # noqa: F401  (BLAS thread settings before numpy loads)
    from agents.selection_state import SelectionState

    state = SelectionState(settings)
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = getattr(state, op)(*args)
        except Exception as exc:  # the parent's batch fails with it
            reply = _Failed(exc if _picklable(exc) else RuntimeError(repr(exc)))
        conn.send(reply)


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True
