"""Local infrastructure for development and tests: a Kafka broker and an S3 gateway."""

from infra._service import (
    InfraError,
    ToolMissing,
    die_with_parent_process,
    free_port,
    port_in_use,
)
from infra.kafka import LocalKafka
from infra.s3 import LocalS3

__all__ = [
    "InfraError",
    "LocalKafka",
    "LocalS3",
    "ToolMissing",
    "die_with_parent_process",
    "free_port",
    "port_in_use",
]
