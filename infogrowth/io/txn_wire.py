"""Kafka's transaction wire formats that neither aiokafka nor librdkafka implement, on
aiokafka's codec: three requests that inspect and end transactions (KIP-664) and the records
of the coordinator's log, ``__transaction_state``.

The schemas are Kafka's ``clients/src/main/resources/common/message/*.json`` (requests, all
flexible) and ``transaction-coordinator/.../TransactionLogKey|Value.json`` (the log), at the
versions named; where a stored copy disagreed with the 4.3 broker, the broker won (noted).
``hanging.py`` uses them; nothing else should need them.
"""

from __future__ import annotations

import types
from io import BytesIO
from typing import Any

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    Boolean,
    CompactArray,
    CompactString,
    Int8,
    Int16,
    Int32,
    Int64,
    Schema,
    String,
    TaggedFields,
)

TAGS = ("tags", TaggedFields)
TOPIC_PARTITIONS = CompactArray(
    ("name", CompactString("utf-8")), ("partitions", CompactArray(Int32)), TAGS
)


def _request(
    key: int, name: str, request: Schema, response: Schema, version: int = 0
) -> type[Request]:
    """A one-version flexible request class whose ``build`` passes the fields in order."""
    answer = type(f"{name}Response_v{version}", (Response,), {
        "API_KEY": key, "API_VERSION": version, "SCHEMA": response,
    })  # fmt: skip
    struct = type(f"{name}Request_v{version}", (RequestStruct,), {
        "FLEXIBLE_VERSION": True, "API_KEY": key, "API_VERSION": version,
        "RESPONSE_TYPE": answer, "SCHEMA": request,
    })  # fmt: skip

    def __init__(self: Any, *fields: Any) -> None:
        self.fields = fields

    def build(self: Any, request_struct_class: type[RequestStruct]) -> RequestStruct:
        return request_struct_class(*self.fields, {})  # no tagged fields

    body = {"API_KEY": key, "__init__": __init__, "build": build}
    generic = Request[struct]  # type: ignore[valid-type]
    return types.new_class(f"{name}Request", (generic,), exec_body=lambda ns: ns.update(body))


# Producers with state on a partition; ``txn_start`` is -1 unless a transaction is open.
DescribeProducers = _request(
    61, "DescribeProducers",
    Schema(("topics", TOPIC_PARTITIONS), TAGS),
    Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition", Int32), ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("producers", CompactArray(
                    ("producer_id", Int64), ("producer_epoch", Int32), ("last_sequence", Int32),
                    ("last_timestamp", Int64), ("coordinator_epoch", Int32),
                    ("txn_start", Int64), TAGS,
                )),
                TAGS,
            )),
            TAGS,
        )),
        TAGS,
    ),
)  # fmt: skip

# A transactional id's state at its coordinator; ``partitions`` are those still without markers.
DescribeTransactions = _request(
    65, "DescribeTransactions",
    Schema(("transactional_ids", CompactArray(CompactString("utf-8"))), TAGS),
    Schema(
        ("throttle_time_ms", Int32),
        ("transactions", CompactArray(
            ("error_code", Int16), ("transactional_id", CompactString("utf-8")),
            ("state", CompactString("utf-8")), ("timeout_ms", Int32), ("start_time_ms", Int64),
            ("producer_id", Int64), ("producer_epoch", Int16),  # int16 on the wire (4.3)
            ("partitions", TOPIC_PARTITIONS), TAGS,
        )),
        TAGS,
    ),
)  # fmt: skip

# The COMMIT (True) or ABORT marker a coordinator writes to end a transaction on a partition
# (v1: Kafka 4 removed v0; v2 only adds the transaction version, 0 = the classic protocol).
WriteTxnMarkers = _request(
    27, "WriteTxnMarkers",
    Schema(
        ("markers", CompactArray(
            ("producer_id", Int64), ("producer_epoch", Int16), ("commit", Boolean),
            ("topics", TOPIC_PARTITIONS), ("coordinator_epoch", Int32), TAGS,
        )),
        TAGS,
    ),
    Schema(
        ("markers", CompactArray(
            ("producer_id", Int64),
            ("topics", CompactArray(
                ("name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition", Int32), ("error_code", Int16), TAGS)),
                TAGS,
            )),
            TAGS,
        )),
        TAGS,
    ),
    version=1,
)  # fmt: skip


# __transaction_state: key v0 = the transactional id; value v0 (classic) or v1 (flexible).
# Status codes of ``TransactionState`` whose records list the transaction's partitions, and
# what each decides: Ongoing nothing yet, PrepareCommit COMMIT, PrepareAbort ABORT.
LISTING = {1: None, 2: True, 3: False}


def _log_value(compact: bool) -> Schema:
    text, array = (CompactString("utf-8"), CompactArray) if compact else (String("utf-8"), Array)
    tags = (TAGS,) if compact else ()
    return Schema(
        ("producer_id", Int64), ("producer_epoch", Int16), ("timeout_ms", Int32), ("status", Int8),
        ("partitions", array(("topic", text), ("partition_ids", array(Int32)), *tags)),
        ("last_update_ms", Int64), ("start_ms", Int64), *tags,
    )  # fmt: skip


LOG_VALUES = {0: _log_value(compact=False), 1: _log_value(compact=True)}


def transaction_log_key(key: bytes) -> str:
    data = BytesIO(key)
    Int16.decode(data)  # version 0: the only one
    return String("utf-8").decode(data)


def transaction_log_value(value: bytes) -> dict[str, Any]:
    data = BytesIO(value)
    version = Int16.decode(data)
    schema = LOG_VALUES.get(version)
    if schema is None:
        raise ValueError(f"__transaction_state value version {version} is newer than this reader")
    entry = dict(zip(schema.names, schema.decode(data), strict=False))
    entry["partitions"] = [(p[0], p[1]) for p in entry["partitions"] or ()]  # (topic, ids)
    return entry
