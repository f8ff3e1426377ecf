"""JSONL rows are read and written with orjson where it gives json's values, with json elsewhere."""

from __future__ import annotations

import datetime
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from infogrowth.io.files import RowWriter, jsonl_line, read_rows


def _bits(value: Any) -> Any:
    """``value`` with each float as its exact bits and each number's type kept (1 vs 1.0)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return [(key, _bits(item)) for key, item in value.items()]  # key order counts too
    if isinstance(value, list):
        return [_bits(item) for item in value]
    return (type(value).__name__, value)


EMBEDDING = np.random.default_rng(0).standard_normal(64).astype(np.float32).tolist()
# Lines orjson reads differently from json (or not at all) next to ones it reads alike.
LINES = [
    b'{"id": "plain", "caption": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00", "n": -0, "ok": true}',
    b'{"id": "floats", "e": [5e-324, 2.2250738585072011e-308, 0.1000000000000000055511151231]}',
    b'{"id": "int64", "a": 9223372036854775807, "b": 18446744073709551615, '
    b'"c": -9223372036854775808}',
    b'{"id": "beyond int64", "a": 18446744073709551616, "b": [1, -9223372036854775809]}',
    b'{"id": "non-finite", "e": [NaN, 1.0], "f": Infinity, "g": -1e400}',
    b'{"id": "big float", "e": [1e300, 0.5], "f": 9.3e18}',
    b'{"id": "dup", "id": "twice", "x": {"y": [[1.5, "z"], null]}}',
]


def test_rows_read_as_json_reads_them(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [*LINES, json.dumps({"id": "emb", "image_embedding": EMBEDDING}).encode()]
    src.write_bytes(b"\n".join(lines) + b"\n")

    rows = list(read_rows(src))

    expected = [json.loads(line) for line in lines]
    assert [_bits(row) for row in rows] == [_bits(row) for row in expected]
    assert rows[3]["a"] == 2**64 and isinstance(rows[3]["a"], int)  # orjson: a float
    assert math.isnan(rows[4]["e"][0])  # orjson rejects NaN


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"id": "s", "caption": "\\ud800"}', "invalid JSON (lone surrogate '\\ud800')"),
        (b'{"id": "u", "caption": "caf\xff"}', "invalid UTF-8 (byte 0xff at offset 27)"),
        (b'{"id": 1,}', "invalid JSON (Expecting property name enclosed in double quotes)"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"a": 1} {"b": 2}', "invalid JSON (Extra data)"),
    ],
)
def test_unreadable_lines_keep_json_messages(tmp_path: Path, line: bytes, reason: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": "first"}\n' + line + b"\n")

    rows = list(read_rows(src))

    assert rows[1] == {"_error": f"line 2: {reason}", "_line": 2}


def test_written_lines_hold_json_values(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in LINES]
    rows.append({"id": "emb", "image_embedding": EMBEDDING, "gain": 1e-05, "big": 1e16})
    dst = tmp_path / "out.jsonl"

    with RowWriter(dst) as writer:
        for row in rows:
            writer.write(row)

    text = dst.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == len(rows)
    written = [json.loads(line) for line in text.splitlines()]
    assert [_bits(row) for row in written] == [_bits(row) for row in rows]


def test_what_orjson_cannot_write_is_written_by_json() -> None:
    assert jsonl_line({"e": [float("nan"), 1.0]}) == b'{"e": [NaN, 1.0]}\n'  # orjson: null
    assert jsonl_line({"a": 2**70}) == b'{"a": 1180591620717411303424}\n'
    assert jsonl_line({1: "x"}) == b'{"1": "x"}\n'  # json turns the key into text
    assert jsonl_line({"a": 1.5, "b": "\u00e9\n"}) == '{"a":1.5,"b":"\u00e9\\n"}\n'.encode()
    with pytest.raises(TypeError):  # json cannot write a datetime; orjson would
        jsonl_line({"t": datetime.datetime(2026, 1, 1)})
    with pytest.raises(UnicodeEncodeError):  # as writing json.dumps' text in UTF-8 does
        jsonl_line({"s": "\ud800"})


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_update_changes_a_written_row_in_place(tmp_path: Path, name: str) -> None:
    dst = tmp_path / name
    rows = [{"id": f"r{i}", "decision": "accepted", "e": [0.5, i]} for i in range(3)]

    with RowWriter(dst) as writer:
        for row in rows:
            writer.write(dict(row))
        writer.update(1, {"decision": "rejected", "detail": "pushed out"})

    written = (
        pq.read_table(dst).to_pylist()
        if dst.suffix == ".parquet"
        else [json.loads(line) for line in dst.read_text().splitlines()]
    )
    changed = {"id": "r1", "decision": "rejected", "e": [0.5, 1], "detail": "pushed out"}
    if dst.suffix == ".parquet":  # one table: every row gets the new column
        rows = [{**row, "detail": None} for row in rows]
        changed["e"] = [0.5, 1.0]
    assert written == [rows[0], changed, rows[2]]
    assert not list(tmp_path.glob("*.partial"))


def test_an_error_leaves_the_previous_output(tmp_path: Path) -> None:
    dst = tmp_path / "out.jsonl"
    dst.write_text('{"id": "previous run"}\n')

    with pytest.raises(RuntimeError), RowWriter(dst) as writer:
        writer.write({"id": "new"})
        raise RuntimeError("the run failed")

    assert dst.read_text() == '{"id": "previous run"}\n'
    assert not list(tmp_path.glob("*.partial"))
