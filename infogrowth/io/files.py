"""Reading and writing sample tables: JSONL or Parquet, chosen by file extension."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = (".jsonl", ".ndjson", ".json", ".parquet", ".pq")


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ValueError(f"{path}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}")


_READ_BUFFER = 1 << 20  # a line holds whole embeddings: tens of KB, more than the default 8 KB


def count_rows(path: str | Path) -> int:
    if file_format(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb", buffering=_READ_BUFFER) as fh:
        return sum(1 for line in fh if not line.isspace())


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows as dicts. A JSONL line that cannot be read as a JSON object is yielded as
    ``{"_error": "line N: why", "_line": N}`` so the caller can reject it with a reason
    instead of stopping the whole run."""
    if file_format(path) == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    # Binary, so that one invalid UTF-8 byte spoils its own line only.
    with open(path, "rb", buffering=_READ_BUFFER) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.isspace():  # not line.strip(), which copies the line
                continue
            try:
                row = _parse_line(line)
            except ValueError as exc:
                row = {"_error": f"line {lineno}: {exc}", "_line": lineno}
            yield row


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_line(line: bytes) -> dict[str, Any]:
    """One JSONL line as a JSON object; ValueError with a one-line reason otherwise.
    orjson reads a line ~3x faster than json; a line it rejects, or whose values might differ
    from json's, is read again by json, so values and error messages are json's."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _parse_line_stdlib(line)
    if isinstance(row, dict) and _orjson_exact(row):
        return row
    return _parse_line_stdlib(line)


# orjson reads an integer beyond 64 bits as a float, and writes NaN and +-inf as null. Rows
# whose floats are all finite and below this magnitude read and write exactly as with json.
_ORJSON_FLOAT_LIMIT = 2.0**63


def _orjson_exact(value: Any) -> bool:
    """Every float in ``value`` is finite and below 2**63 in magnitude (always true when
    ``value`` holds none), so orjson reads and writes it as json does."""
    if isinstance(value, float):
        return abs(value) < _ORJSON_FLOAT_LIMIT  # False for NaN
    if isinstance(value, list | tuple):
        try:  # one C call for a list of numbers (an embedding); NaN or inf makes it non-finite
            return math.hypot(*value) < _ORJSON_FLOAT_LIMIT
        except (TypeError, ValueError, OverflowError):  # not all numbers, or a huge integer
            return all(_orjson_exact(item) for item in value)
    if isinstance(value, dict):
        for item in value.values():  # a loop, not all(...): this runs twice a row
            if not (isinstance(item, _NO_FLOATS) or _orjson_exact(item)):
                return False
    return True


_NO_FLOATS = (str, int, type(None))  # the common fields, checked without a call


def _parse_line_stdlib(line: bytes) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = line[exc.start]
        raise ValueError(f"invalid UTF-8 (byte {byte:#04x} at offset {exc.start})") from None
    try:
        row = json.loads(text)
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer over Python's 4300 digits
        raise ValueError(f"invalid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    # json accepts an escaped lone surrogate ("\\ud800"): no valid text holds one, and it
    # fails later when the row is written out, so it is rejected here. Checked only on lines
    # that contain such an escape.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"invalid JSON (lone surrogate {exc.object[exc.start]!r})") from None
    return row


class RowWriter:
    """Streams rows to JSONL, or buffers them into one Parquet table on close. JSONL goes to
    ``<path>.partial`` first and becomes ``path`` on a clean close (an error leaves ``path``
    as it was); ``update`` changes rows already written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = file_format(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._updates: dict[int, dict[str, Any]] = {}
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._partial, "wb") if self.format == "jsonl" else None  # noqa: SIM115

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(jsonl_line(row))
        else:
            self._rows.append(row)

    def update(self, position: int, fields: dict[str, Any]) -> None:
        """Set ``fields`` in the row written at ``position`` (0-based): its other fields and
        the order of all stay (a JSONL row is rewritten on close)."""
        if self._fh is not None:
            self._updates.setdefault(position, {}).update(fields)
        else:
            self._rows[position].update(fields)

    def close(self) -> None:
        if self._fh is None:
            pq.write_table(_table(self._rows), self.path)
            return
        self._fh.close()
        if not self._updates:
            self._partial.replace(self.path)
            return
        with open(self._partial, "rb") as src, open(self.path, "wb") as dst:
            for position, line in enumerate(src):
                fields = self._updates.get(position)
                if fields is not None:
                    line = jsonl_line(_parse_line(line) | fields)
                dst.write(line)
        self._partial.unlink()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self._fh is not None:
            self._fh.close()
            self._partial.unlink(missing_ok=True)


# What orjson writes and json cannot (datetimes, dataclasses, subclasses of str, int, dict,
# list) goes to json, which raises as before.
_ORJSON_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def jsonl_line(row: dict[str, Any]) -> bytes:
    """``row`` as one UTF-8 JSONL line, the values json.dumps writes (compact, as orjson writes
    them, ~10x faster); json.dumps' own text for what orjson cannot write the same way: NaN,
    infinities, integers beyond 64 bits, types json knows and orjson does not."""
    if _orjson_exact(row):
        try:
            return orjson.dumps(row, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Columns from every row's keys (not only the first row's), in order of appearance."""
    names = dict.fromkeys(name for row in rows for name in row)
    return pa.table({name: _column([row.get(name) for row in rows]) for name in names})


def _column(values: list[Any]) -> pa.Array:
    """One typed column; a value Arrow cannot hold (an integer beyond int64 in a rejected row's
    embedding) becomes null, and a column whose values mix types (a caption that is a number
    in one row) is kept as text instead of failing the whole file."""
    try:
        return pa.array(values)
    except _ARROW_ERRORS:
        pass
    try:
        return pa.array([v if _fits_arrow(v) else None for v in values])
    except _ARROW_ERRORS:
        return pa.array([v if v is None or isinstance(v, str) else _json(v) for v in values])


_ARROW_ERRORS = (pa.ArrowException, OverflowError)


def _fits_arrow(value: Any) -> bool:
    try:
        pa.array([value])
    except _ARROW_ERRORS:
        return False
    return True


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
