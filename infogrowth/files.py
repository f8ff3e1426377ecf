"""Reading and writing sample tables: JSONL or Parquet, chosen by file extension."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def count_rows(path: str | Path) -> int:
    if file_format(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows as dicts. A JSONL line that is not a JSON object is yielded as ``{"_error": ...}``
    so the caller can reject it with a reason instead of stopping the whole run."""
    if file_format(path) == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield {"_error": f"line {lineno}: invalid JSON ({exc.msg})", "_line": lineno}
                continue
            if not isinstance(row, dict):
                yield {"_error": f"line {lineno}: not a JSON object", "_line": lineno}
                continue
            yield row


class RowWriter:
    """Streams rows to JSONL, or buffers them into one Parquet table on close."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = file_format(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._fh = open(self.path, "w", encoding="utf-8") if self.format == "jsonl" else None  # noqa: SIM115

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
        else:
            self._rows.append(row)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        else:
            pq.write_table(pa.Table.from_pylist(self._rows), self.path)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
