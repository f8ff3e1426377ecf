"""Embeddings on the wire: packed little-endian float32 bytes (schema versions from ids 11-14
on); records written before carry Avro float arrays, and readers accept both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

WIRE = np.dtype("<f4")
EMBEDDING_FIELDS = ("image_embedding", "text_embedding")
_F32_MAX = float(np.finfo(np.float32).max)


def pack(vector: np.ndarray | Sequence[float] | None) -> bytes | None:
    return None if vector is None else np.asarray(vector, dtype=WIRE).tobytes()


def unpack(value: bytes | Sequence[float] | None) -> np.ndarray | None:
    """A float32 vector from packed bytes or (an older record's) list of floats."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) % WIRE.itemsize:
            raise ValueError(f"packed embedding of {len(value)} bytes is not float32")
        return np.frombuffer(value, dtype=WIRE).astype(np.float32, copy=False)
    return np.asarray(value, dtype=np.float32)


def pack_if_exact(value: Any) -> Any:
    """A user's list of numbers packed when float32 holds it as Avro would; anything else
    is left as it is, so schema validation and the encoder reject it with the same reason
    as before (not numbers, beyond float32)."""
    if not isinstance(value, list | tuple) or not value:
        return value
    if not all(type(x) in (int, float) for x in value):
        return value
    try:
        vec = np.asarray(value, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return value
    if not np.abs(vec).max() <= _F32_MAX:  # also False with NaN: left to the encoder
        return value
    return vec.astype(WIRE).tobytes()


def as_lists(record: dict[str, Any]) -> dict[str, Any]:
    """A decoded record with its embeddings as lists of floats, whatever version wrote it
    (what consumers of `accepted` have always been given)."""
    for name in EMBEDDING_FIELDS:
        value = record.get(name)
        if isinstance(value, bytes):
            record[name] = unpack(value).tolist()  # type: ignore[union-attr]
    return record
