"""Kafka client settings of the worker (agents/flow.py)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from agents import flow


def test_the_worker_consumer_long_polls_for_fetch_wait_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust builds its consumer with a 1.5 s long poll; the worker's is ``fetch_wait_s``."""
    original = AIOKafkaConsumerThread._create_worker_consumer
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", original)  # undone

    async def build() -> int:
        app = faust.App("flow-test", broker="kafka://127.0.0.1:1", web_enabled=False)
        flow.use_fetch_wait(0.05)
        thread = app.consumer._thread
        consumer = thread._create_worker_consumer(app.transport)  # not started: no broker
        return consumer._fetch_max_wait_ms

    assert asyncio.run(build()) == 50


@pytest.mark.parametrize("batch_size", [1, 32, 256])
def test_a_stream_buffer_that_faust_refills_covers_the_fetchers_one_second_sleep(
    batch_size: int,
) -> None:
    """Faust stops fetching a partition at its stream queue's high pressure and starts
    again at its drop size; while every partition is stopped its fetcher sleeps 1 s. The
    queue Faust builds from ``stream_buffer`` still holds a second at ~3,000 samples/s when
    fetching starts again (Faust's own 4 batches of 256 held ~0.2 s)."""

    async def queue() -> tuple[int, int]:
        app = faust.App(
            "flow-test",
            broker="kafka://127.0.0.1:1",
            web_enabled=False,
            stream_buffer_maxsize=flow.stream_buffer(batch_size),
        )
        channel_queue = app.topic("scored").clone_using_queue(app.channel().queue).queue
        return channel_queue.pressure_high_size, channel_queue.pressure_drop_size

    high, drop = asyncio.run(queue())
    assert drop >= 1.0 * 3_000
    assert high >= drop + 4 * batch_size


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flow.deliver_directly``, undone after the test."""
    monkeypatch.setattr(Consumer, "wait_first", Consumer.wait_first)
    flow.deliver_directly()


async def _consumer() -> Any:
    app = faust.App("flow-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    return app.consumer  # not started: no broker


def test_a_record_whose_delivery_need_not_wait_is_delivered_without_tasks(direct: None) -> None:
    """Faust races each record's delivery against ``suspend_flow`` in four tasks (33 us a
    record); a delivery that can run to its end at once now does, before wait_first
    returns, and the ``suspend_flow.wait()`` it was raced against is closed, not left."""
    delivered: list[int] = []

    async def deliver(n: int) -> int:
        delivered.append(n)
        return n * 2

    async def run() -> tuple[Any, int]:
        consumer = await _consumer()
        tasks = len(asyncio.all_tasks())
        raced = consumer.suspend_flow.wait()
        result = await consumer.wait_first(deliver(3), raced)
        assert len(asyncio.all_tasks()) == tasks
        assert inspect.getcoroutinestate(raced) == inspect.CORO_CLOSED  # not "never awaited"
        return result, delivered[0]

    result, seen = asyncio.run(run())
    assert (result.results, result.stopped, seen) == ([6], False, 3)


def test_a_delivery_that_waits_finishes_in_a_task_with_what_it_awaited(direct: None) -> None:

    async def run() -> list[Any]:
        consumer = await _consumer()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)  # full: the delivery waits for room

        async def deliver() -> str:
            await queue.put(1)
            await asyncio.sleep(0)  # a bare yield on its way
            return f"put, {queue.qsize()} queued"

        async def take_later() -> None:
            await asyncio.sleep(0.05)
            queue.get_nowait()

        taker = asyncio.ensure_future(take_later())
        result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        await taker
        return result.results

    assert asyncio.run(run()) == ["put, 1 queued"]


def test_a_delivery_that_waits_is_cut_short_by_a_rebalance_as_in_faust(direct: None) -> None:
    """A delivery stuck on a full stream buffer must not hold the consumer when its
    partitions are revoked: ``suspend_flow`` wins the race and the delivery is cancelled."""
    cancelled: list[bool] = []

    async def run() -> Any:
        consumer = await _consumer()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)

        async def deliver() -> None:
            try:
                await queue.put(1)  # never any room
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        async def revoke_later() -> None:
            await asyncio.sleep(0.05)
            consumer.suspend_flow.set()

        revoker = asyncio.ensure_future(revoke_later())
        result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        await revoker
        await asyncio.sleep(0)  # the cancelled delivery runs its except clause
        return result

    result = asyncio.run(run())
    assert result.results == [True] and cancelled == [True]  # Event.wait() returns True


def test_a_delivery_that_fails_at_once_raises_as_in_faust(direct: None) -> None:
    """Faust's race re-raises a failed delivery's error; so does the direct path, and the
    ``suspend_flow.wait()`` it was to be raced against is closed."""

    async def deliver() -> None:
        raise ValueError("undecodable")

    async def run() -> Any:
        consumer = await _consumer()
        raced = consumer.suspend_flow.wait()
        with pytest.raises(ValueError, match="undecodable"):
            await consumer.wait_first(deliver(), raced)
        return inspect.getcoroutinestate(raced)

    assert asyncio.run(run()) == inspect.CORO_CLOSED
