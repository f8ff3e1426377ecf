"""One bad row never aborts a run: `curate` rejects it, `ingest` skips and counts it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from infogrowth.commands.cli import main
from infogrowth.io.avro import AvroSerde, SchemaError
from infogrowth.io.kafka_io import (
    MESSAGE_MAX_BYTES,
    RECORD_OVERHEAD,
    make_producer,
    produce_records,
    read_topic,
)
from infogrowth.io.messages import raw_record

HUGE_INT = b"1" + b"0" * 400  # 1e400 written as digits: no float can hold it


def _good(rid: str, dim: int = 4) -> bytes:
    vec = [1.0, 0.5, 0.25, 0.125, 0.0625][:dim]
    slot = int(rid[1:]) - 1 if rid[:1] == "g" else 0
    if slot > 0:  # g2, g3 ...: each its own direction, so none duplicates another
        vec = [(1.0 if i == slot % dim else 0.1) * (-1 if slot >= dim else 1) for i in range(dim)]
    row = {"id": rid, "caption": "c", "image_embedding": vec, "text_embedding": vec}
    return json.dumps(row).encode()


def _with_image_embedding(rid: str, embedding: bytes) -> bytes:
    return (
        b'{"id": "%s", "caption": "c", "image_embedding": %s, "text_embedding": [1, 1, 1, 1]}'
        % (rid.encode(), embedding)
    )


# Every kind of bad row the operator reported, between good rows, written byte for byte.
# (id, line, what curate's detail says; None: the line cannot be read, so no id.)
LINES: list[tuple[str | None, bytes, str | None]] = [
    ("g1", _good("g1"), None),
    ("dim5", _good("dim5", dim=5), "image_embedding has 5 dims, expected 4"),
    (
        "huge",
        _with_image_embedding("huge", b"[" + HUGE_INT + b", 0.1, 0.2, 0.3]"),
        "image_embedding holds a number too large for a float",
    ),
    (None, b'{"id": "utf8", "caption": "caf\xff"}', "line 4: invalid UTF-8 (byte 0xff at offset"),
    ("g2", _good("g2"), None),
    (None, b'{"id": "surrogate", "caption": "\\ud800"}', "line 6: invalid JSON (lone surrogate"),
    (None, b'{"id": "x", "caption": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "line 7: invalid "
     "JSON (nested too deeply)"),
    (
        None,
        _with_image_embedding("digits", b"[1" + b"0" * 5000 + b", 1, 1, 1]"),
        "line 8: invalid JSON (Exceeds the limit (4300 digits)",
    ),
    # With --batch-size 2 this row opens a batch: the 4 dims learnt from g1 still hold.
    ("dim3", _good("dim3", dim=3), "image_embedding has 3 dims, expected 4"),
    ("g3", _good("g3"), None),
    (
        "f32",
        _with_image_embedding("f32", b"[1e300, 1, 1, 1]"),
        "image_embedding is outside the float32 range (largest value 1e+300)",
    ),
    ("g4", _good("g4"), None),
]  # fmt: skip
GOOD = ["g1", "g2", "g3", "g4"]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# --- curate ------------------------------------------------------------------------------
def _read_output(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("out_name", ["out.jsonl", "out.parquet"])
def test_curate_rejects_each_bad_row_and_writes_every_other(
    tmp_path: Path, out_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "in.jsonl", [line for _, line, _ in LINES])
    out = tmp_path / out_name
    argv = ["curate", str(src), "--out", str(out), "--encoder", "precomputed"]
    argv += ["--policy", "all", "--batch-size", "2", "--quiet"]

    assert main(argv) == 0

    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" not in err
    assert f"{len(LINES)} samples" in err
    rows = _read_output(out)
    assert [r.get("id") for r in rows] == [rid for rid, _, _ in LINES]  # one per line, in order
    for row, (rid, _, detail) in zip(rows, LINES, strict=True):
        if detail is None:
            assert (row["id"], row["decision"], row["reason"]) == (rid, "accepted", None)
        else:
            assert (row["decision"], row["reason"]) == ("rejected", "bad_input"), row
            assert row["detail"].startswith(detail) and "\n" not in row["detail"]
    by_id = {r["id"]: r for r in rows if r.get("id")}
    assert by_id["dim5"]["image_embedding"] == [1.0, 0.5, 0.25, 0.125, 0.0625]  # input kept
    if out.suffix == ".parquet":  # Arrow cannot hold 1e400: null there, the column stays typed
        assert by_id["huge"]["image_embedding"] is None
        assert by_id["g1"]["image_embedding"] == [1.0, 0.5, 0.25, 0.125]


def test_parquet_output_keeps_columns_missing_from_the_first_row(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.jsonl", [b"{broken", b'{"id": "a", "caption": 5}', _good("b")])
    out = tmp_path / "out.parquet"

    assert main(["curate", str(src), "--out", str(out), "--encoder", "precomputed", "--quiet"]) == 0

    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == [None, "a", "b"]
    assert [r["caption"] for r in rows] == [None, "5", "c"]  # mixed types: kept as text
    assert rows[0]["detail"].startswith("line 1: invalid JSON")


def test_avro_encoding_failures_are_schema_errors() -> None:
    serde = AvroSerde("RawSample")
    with pytest.raises(SchemaError, match="RawSample: cannot encode .*too large"):
        serde.encode({"id": "a", "image_embedding": [10**400, 0.5]})
    with pytest.raises(SchemaError, match="RawSample: cannot encode .*surrogates"):
        serde.encode({"id": "a", "caption": "\ud800"})


# --- ingest ------------------------------------------------------------------------------
@pytest.mark.kafka
def test_ingest_skips_and_counts_each_bad_row(
    kafka: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("raw")
    big = json.dumps({"id": "big", "caption": "x" * MESSAGE_MAX_BYTES}).encode()
    src = _write(tmp_path / "in.jsonl", [line for _, line, _ in LINES] + [big, _good("g5")])
    argv = ["ingest", str(src), "--topic", topic, "--kafka-bootstrap", kafka, "--quiet"]

    assert main(argv) == 0

    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" not in err
    serde = AvroSerde("RawSample")
    big_size = len(serde.encode(raw_record(json.loads(big)))) + len(b"big") + RECORD_OVERHEAD
    # Rows that cannot be read or encoded, or are too large, are skipped; the others are
    # produced, including those curation will reject (a dimension is the pipeline's business).
    produced = ["g1", "dim5", "g2", "dim3", "g3", "f32", "g4", "g5"]
    assert f"produced {len(produced)} to {topic}" in err and "skipped 6" in err
    for problem in (
        "huge: RawSample: cannot encode (int too large to convert to float)",
        "line 4: invalid UTF-8 (byte 0xff at offset",
        "line 6: invalid JSON (lone surrogate",
        "line 7: invalid JSON (nested too deeply)",
        "line 8: invalid JSON (Exceeds the limit (4300 digits)",
        f"big: record is {big_size:,} bytes, over the 1,000,000-byte limit (message.max.bytes)",
    ):
        assert f"  {problem}" in err, problem
    assert [serde.decode(m.value())["id"] for m in read_topic(kafka, topic)] == produced


@pytest.mark.kafka
def test_records_up_to_the_size_limit_are_produced(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("size")
    serde = AvroSerde("RawSample")

    def record(size: int) -> dict[str, Any]:
        """A record whose key + value + overhead is ``size`` bytes."""
        base = {"id": f"s{size}", "caption": ""}
        framing = len(serde.encode(base)) + len(base["id"]) + RECORD_OVERHEAD + 2  # varint
        return {**base, "caption": "x" * (size - framing)}

    too_large: list[tuple[str, str]] = []
    records = [record(MESSAGE_MAX_BYTES), record(MESSAGE_MAX_BYTES + 1)]
    assert len(serde.encode(records[0])) + 8 + RECORD_OVERHEAD == MESSAGE_MAX_BYTES

    produced = produce_records(
        make_producer(kafka),
        topic,
        serde,
        records,
        on_invalid=lambda rec, exc: too_large.append((rec["id"], str(exc))),
    )

    assert produced == 1  # librdkafka takes the record at the limit: the limits agree
    assert too_large == [
        (f"s{MESSAGE_MAX_BYTES + 1}", "record is 1,000,001 bytes, over the 1,000,000-byte "
         "limit (message.max.bytes)")
    ]  # fmt: skip
    assert [m.key() for m in read_topic(kafka, topic)] == [f"s{MESSAGE_MAX_BYTES}".encode()]
