"""Kafka client settings of the worker (agents/flow.py)."""

from __future__ import annotations

import asyncio

import faust
import pytest
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
