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
