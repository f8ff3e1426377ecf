"""Schema Registry mode against a stub of the registry's REST API (not a real registry):
POST /subjects/{subject}/versions and GET /schemas/ids/{id}, ids from 100 up."""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest
from pipeline_helpers import embedding_rows, run_settings, topic_values, write_jsonl

from infogrowth.commands.cli import main
from infogrowth.commands.ingest import ingest_file
from infogrowth.commands.pipeline import (
    ensure_pipeline_topics,
    start_worker,
    stop_worker,
    wait_for_outcomes,
)
from infogrowth.io.avro import (
    AvroSerde,
    MalformedMessage,
    decode_any,
    expanded,
    registry,
    schemas_dir,
)
from infogrowth.io.kafka_io import read_topic
from infogrowth.io.schema_registry import plain_schema, use_registry
from infra import free_port


class StubRegistry(ThreadingHTTPServer):
    """Schemas by id; the same schema text under a subject gets its id back (as a registry)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def register(self, subject: str, schema: str) -> int:
        found = [i for i, text in self.schemas.items() if json.loads(text) == json.loads(schema)]
        schema_id = found[0] if found else 100 + len(self.schemas)
        self.schemas[schema_id] = schema
        self.subjects.setdefault(subject, []).append(schema_id)
        return schema_id


class _Handler(BaseHTTPRequestHandler):
    server: StubRegistry

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append(f"POST {self.path}")
        parts = self.path.split("/")  # /subjects/{subject}/versions
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._reply(200, {"id": self.server.register(parts[2], body["schema"])})

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append(f"GET {self.path}")
        schema_id = int(self.path.rsplit("/", 1)[-1])  # /schemas/ids/{id}
        if schema_id not in self.server.schemas:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})
        else:
            self._reply(200, {"schema": self.server.schemas[schema_id]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[StubRegistry]:
    server = StubRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    use_registry("")  # back to the fixed ids for the other tests
    server.shutdown()


def _schema_id(data: bytes) -> int:
    return int(struct.unpack(">I", data[1:5])[0])


RECORD = {"id": "s-1", "image_embedding": [0.5, 1.0], "caption": "a cat"}


def test_records_carry_the_registrys_ids(stub: StubRegistry) -> None:
    use_registry(stub.url)
    data = AvroSerde("AcceptedSample").encode(RECORD)

    assert stub.subjects == {"infogrowth.AcceptedSample": [100]}
    assert _schema_id(data) == 100 != registry()["AcceptedSample"]
    assert json.loads(stub.schemas[100]) == plain_schema(expanded("AcceptedSample"))
    assert "__" not in stub.schemas[100]  # no fastavro bookkeeping sent to the registry
    fastavro.parse_schema(json.loads(stub.schemas[100]))  # a complete schema on its own
    assert AvroSerde("AcceptedSample").decode(data)["caption"] == "a cat"
    assert decode_any(data)[0] == "AcceptedSample"
    assert stub.requests == ["POST /subjects/infogrowth.AcceptedSample/versions"]  # cached


def test_an_older_version_from_the_registry_is_resolved(stub: StubRegistry) -> None:
    """A record written with an older schema, registered by another producer, reads as the
    current schema (new fields at their defaults)."""
    old = (schemas_dir() / "history" / "AcceptedSample@8.avsc").read_text()
    old_id = stub.register("infogrowth.AcceptedSample", old)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(json.loads(old)), {**RECORD})
    data = struct.pack(">bI", 0, old_id) + body.getvalue()
    use_registry(stub.url)

    record = AvroSerde("AcceptedSample").decode(data)

    assert record["caption"] == "a cat" and record["run"] is None
    assert f"GET /schemas/ids/{old_id}" in stub.requests
    assert "unknown schema id 999" in _malformed(struct.pack(">bI", 0, 999) + b"\x00")


def _malformed(data: bytes) -> str:
    with pytest.raises(MalformedMessage) as info:
        decode_any(data)
    return str(info.value)


def test_without_a_url_the_fixed_ids(stub: StubRegistry) -> None:
    use_registry(stub.url)
    use_registry("")
    assert _schema_id(AvroSerde("RawSample").encode({"id": "a"})) == registry()["RawSample"]
    assert stub.requests == []


@pytest.mark.kafka
def test_ingest_with_a_registry_and_an_unreachable_one(
    kafka: str,
    stub: StubRegistry,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("raw")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "x", "image": "s3://b/x.jpg", "caption": "c"}) + "\n")
    argv = ["ingest", str(src), "--topic", topic, "--quiet", "--kafka-bootstrap", kafka]

    assert main([*argv, "--schema-registry-url", stub.url]) == 0

    values = [m.value() for m in read_topic(kafka, topic, timeout_s=20)]
    assert [_schema_id(v) for v in values] == stub.subjects["infogrowth.RawSample"] == [100]
    assert AvroSerde("RawSample").decode(values[0])["id"] == "x"

    dead = f"http://127.0.0.1:{free_port()}"
    assert main([*argv, "--schema-registry-url", dead]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"infogrowth ingest: error: schema registry at {dead} is unreachable")


@pytest.mark.kafka
@pytest.mark.s3
def test_a_worker_writes_the_registrys_ids(
    kafka: str, s3: Any, stub: StubRegistry, tmp_path: Path
) -> None:
    settings = run_settings(
        kafka, s3, tmp_path, encoder="precomputed", schema_registry_url=stub.url
    )
    use_registry(stub.url)  # this process ingests and reads with the registry too
    ensure_pipeline_topics(settings)
    rows = embedding_rows(20)
    worker = start_worker(settings, log_path=str(tmp_path / "worker.log"))
    try:
        ingest_file(write_jsonl(tmp_path / "rows.jsonl", rows), settings, progress=False)
        outcomes = wait_for_outcomes(settings, {r["id"] for r in rows}, 240, worker)
    finally:
        stop_worker(worker)

    assert len(outcomes) == 20
    for topic, name in (
        (settings.topic_scored, "ScoredSample"),
        (settings.topic_accepted, "AcceptedSample"),
        (settings.topic_rejected, "RejectedSample"),
    ):
        ids = {_schema_id(v) for v in topic_values(settings, topic)}
        assert ids == set(stub.subjects[f"infogrowth.{name}"]) and min(ids) >= 100, name
