"""Kafka client settings that keep records flowing through one worker.

All three were found by timing each batch of the one-worker pipeline (12,000 × 512-d,
README):

* aiokafka sends a partition's records in one produce batch at a time and, when that batch
  is full, waits for the broker's answer before it starts the next. At Faust's default
  of 16 KB that is four 4 KB records (a scored sample, a changelog entry): the curator
  waited for a broker round trip every few records. ``producer_batch_bytes`` sets Faust's
  ``producer_max_batch_size``.
* aiokafka keeps one fetch request in flight per broker, and Faust hard-codes its
  long-poll wait at 1.5 s. When one of a worker's partitions has nothing new (`scored`
  waits for the inference stage's next commit), the fetch of the others waits behind it:
  both agents sat idle for ~1 s every few seconds. ``fetch_wait_s`` shortens that wait.
* Faust stops fetching a partition whose stream buffer is 80% full and starts again when
  it is down to 40%; while every partition of the worker is stopped, its fetcher sleeps a
  whole second. With Faust's buffer of 4 batches (1,024 events) the curator emptied
  its 40% in ~0.2 s and then waited: it took ~1,150 samples a second whatever its own
  speed (2,300/s alone). ``stream_buffer`` holds enough for that second.

And one that costs CPU: Faust hands each fetched record to its streams through
``wait_first(callback(message), suspend_flow)``, which makes four tasks a record so that a
rebalance can cut short a callback stuck on a full stream (33 us a record here, ~7% of the
curator's CPU). ``deliver_directly`` runs the callback first and races it as before only
if it has to wait.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode import Service
from mode.services import WaitResults

_faust_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def use_fetch_wait(seconds: float) -> None:
    """The worker's consumer long-polls the broker for at most ``seconds``."""

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = _faust_create_worker_consumer(self, transport)
        consumer._fetch_max_wait_ms = max(1, round(seconds * 1000))  # read by start()
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def stream_buffer(batch_size: int) -> int:
    """Events a stream may buffer (Faust's ``stream_buffer_maxsize``): 40% of it covers the
    fetcher's one-second sleep at ~3,000 samples/s. 32 batches, at least 8,192: up to ~36 MB
    of 512-d image-text records per stream, held only while a stage is behind."""
    return max(32 * batch_size, 8192)


def deliver_directly() -> None:
    """The consumer's ``wait_first``, which Faust calls once per fetched record in
    ``Consumer._drain_messages`` (with the stream's callback and ``suspend_flow.wait()``),
    runs a callback that does not have to wait to its end at once, without tasks. One that
    waits (a full stream buffer, a flow stopped for a rebalance) goes on as a task, raced
    against the others as Faust does; so does every call while the consumer is stopping
    or its flow is suspended."""
    Consumer.wait_first = _wait_first  # type: ignore[method-assign]


async def _wait_first(self: Consumer, *coros: Any, timeout: Any = None) -> WaitResults:
    first, others = coros[0], coros[1:]
    if timeout is None and asyncio.iscoroutine(first) and not _held_up(self):
        try:
            awaited = first.send(None)
        except StopIteration as done:
            _close(others)
            return WaitResults([first], [done.value], False)
        except BaseException:  # the delivery failed: Faust's race would raise it too
            _close(others)
            raise
        coros = (asyncio.ensure_future(_resume(first, awaited)), *others)
    return await Service.wait_first(self, *coros, timeout=timeout)


def _close(others: tuple[Any, ...]) -> None:
    """The coroutines a delivery was to be raced against, never started: closed, not left
    to warn that they were never awaited."""
    for other in others:
        if asyncio.iscoroutine(other):
            other.close()


def _held_up(consumer: Consumer) -> bool:
    """Stopping, crashed, or its flow suspended: any of the raced events may win."""
    flags = (consumer._stopped, consumer._crashed, consumer.suspend_flow)
    return any(flag.is_set() for flag in flags)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], awaited: Any) -> Generator[Any, Any, Any]:
    """Drives ``coro``, which was started by hand and is suspended on ``awaited`` (what it
    yielded), to its end inside a task: what ``await`` does, from its second step."""
    while True:
        try:
            sent = yield awaited
        except BaseException as exc:  # thrown into the task (a cancel): on to the coroutine
            try:
                awaited = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                awaited = coro.send(sent)
            except StopIteration as done:
                return done.value
