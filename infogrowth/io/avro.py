"""Avro records in the Confluent wire format, with schema ids fixed in schemas/registry.json.

Frame: magic byte 0, 4-byte big-endian schema id, schemaless Avro binary. No registry server
is needed: every schema has a fixed id, so any Confluent-aware consumer can still read us.

Schemas evolve: a changed schema gets a new id in registry.json, and every version ever
written stays in schemas/history/<Name>@<id>.avsc (self-contained). A reader resolves a
record written with an older id to the current schema (new fields take their defaults), so
topics written by older versions still replay. ``freeze_history()`` writes the files of new
ids; tests/test_avro.py fails when a schema changes under an id already used.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
from fastavro.validation import ValidationError, validate

NAMESPACE = "infogrowth"
MAGIC = 0
HEADER = struct.Struct(">bI")  # magic byte + schema id
SCHEMAS_ENV = "INFOGROWTH_SCHEMAS_DIR"


class SchemaError(ValueError):
    """A record does not match its schema; ``field`` names the first offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MalformedMessage(ValueError):
    """Bytes that are not a valid framed Avro message of the expected schema."""


# --- schema files ----------------------------------------------------------------------
def schemas_dir() -> Path:
    """INFOGROWTH_SCHEMAS_DIR, else schemas/ at the repository root (editable install)."""
    configured = os.environ.get(SCHEMAS_ENV)
    if configured:
        return Path(configured)
    return _BUNDLED


_BUNDLED = Path(__file__).resolve().parents[2] / "schemas"


@cache
def _registry(directory: Path) -> dict[str, int]:
    path = directory / "registry.json"
    try:
        ids = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found (set {SCHEMAS_ENV})") from None
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"{path}: schema ids must be unique")
    return {str(k): int(v) for k, v in ids.items()}


def registry() -> dict[str, int]:
    """Schema name -> fixed schema id."""
    return dict(_registry(schemas_dir()))


def load_schema(name: str) -> dict[str, Any]:
    """The parsed (fastavro) schema ``name``, with schemas it references loaded first."""
    return _load(schemas_dir(), name)


@cache
def _load(directory: Path, name: str) -> dict[str, Any]:
    # The top-level result of parse_schema carries the named types it refers to; the entry
    # left in ``named`` does not, so keep the former.
    return _parse_into(directory, name, {}, set())


def _parse_into(
    directory: Path, name: str, named: dict[str, Any], seen: set[str]
) -> dict[str, Any]:
    if name in seen:
        raise ValueError(f"schema {name!r} refers to itself through other schema files")
    seen.add(name)
    path = directory / f"{name}.avsc"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no schema {name!r}: {path} not found") from None
    # A type written as "infogrowth.Other" refers to schemas/Other.avsc: parse that first.
    for dep in sorted(_references(raw)):
        if f"{NAMESPACE}.{dep}" not in named and (directory / f"{dep}.avsc").exists():
            _parse_into(directory, dep, named, seen)
    return fastavro.parse_schema(raw, named_schemas=named)


def _references(node: Any) -> set[str]:
    prefix = NAMESPACE + "."
    if isinstance(node, str):
        return {node[len(prefix) :]} if node.startswith(prefix) else set()
    if isinstance(node, list):
        return set().union(*(_references(x) for x in node)) if node else set()
    if isinstance(node, dict):
        return set().union(*(_references(v) for k, v in node.items() if k in _TYPE_KEYS))
    return set()


_TYPE_KEYS = ("type", "items", "values", "fields")


# --- records -----------------------------------------------------------------------------
_PLAIN_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """numpy arrays/scalars and dataclasses -> plain Python values fastavro accepts."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:  # the common case first: every record goes through here
        return value
    if kind is dict:
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Fast path: embeddings are long lists of floats.
        if all(type(v) is float for v in value):
            return list(value)
        return [plain(v) for v in value]
    return value


def stringify_extra(extra: Mapping[str, Any]) -> dict[str, str]:
    """The ``extra`` map holds strings: keep strings, JSON-encode everything else."""
    return {str(k): v if isinstance(v, str) else json.dumps(plain(v)) for k, v in extra.items()}


# --- Schema Registry mode (infogrowth/io/schema_registry.py) --------------------------------
_SCHEMA_REGISTRY: Any = None  # a SchemaRegistry: its ids replace the fixed ones


def set_schema_registry(client: Any) -> None:
    global _SCHEMA_REGISTRY
    _SCHEMA_REGISTRY = client


def current_id(name: str) -> int:
    """The id records of the current schema ``name`` are written with."""
    if _SCHEMA_REGISTRY is not None:
        return int(_SCHEMA_REGISTRY.register(name))
    return registry()[name]


class AvroSerde:
    """Encode/decode one schema's records in the Confluent wire format."""

    def __init__(self, schema_name: str) -> None:
        ids = registry()
        if schema_name not in ids:
            raise KeyError(f"schema {schema_name!r} has no id in registry.json ({sorted(ids)})")
        self.name = schema_name
        self.schema_id = current_id(schema_name)
        self.schema = load_schema(schema_name)
        self._header = HEADER.pack(MAGIC, self.schema_id)

    def __repr__(self) -> str:
        return f"AvroSerde({self.name!r}, id={self.schema_id})"

    def encode(self, record: Mapping[str, Any] | Any) -> bytes:
        """Validate strictly, then frame. Raises SchemaError (naming the field when the
        schema check finds it)."""
        datum = plain(record)
        if not isinstance(datum, Mapping):
            raise SchemaError(f"{self.name}: expected a mapping, got {type(record).__name__}")
        # The boolean check is the fast path: with raise_errors=True fastavro builds (and
        # formats, embeddings included) an error for every union branch it tries.
        if not validate(datum, self.schema, raise_errors=False):
            try:
                validate(datum, self.schema, raise_errors=True)
            except ValidationError as exc:
                raise _schema_error(self.name, exc, datum) from None
        out = io.BytesIO()
        out.write(self._header)
        try:
            fastavro.schemaless_writer(out, self.schema, datum)
        except (ValueError, OverflowError) as exc:  # past validation: a lone surrogate in a
            # string (UnicodeEncodeError), an integer too large for a float or long
            raise SchemaError(f"{self.name}: cannot encode ({_one_line(exc)})") from None
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Parse a framed message (any version of this schema). Raises MalformedMessage
        with a one-line reason."""
        schema_id = check_header(data)
        if schema_id == self.schema_id:
            return _read_body(data, self.schema, self.name)
        other = _name_of(schema_id)
        if other != self.name:
            what = f"schema id {schema_id} ({other})" if other else f"unknown schema id {schema_id}"
            raise MalformedMessage(f"{what}, expected {self.schema_id} ({self.name})")
        return _read_body(data, self.schema, self.name, _writer(schema_id))


def check_header(data: bytes) -> int:
    """The schema id of a framed message, after checking length and magic byte."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) < HEADER.size:
        raise MalformedMessage(f"too short: {len(data)} bytes, a framed message has at least 5")
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessage(f"wrong magic byte {magic & 0xFF:#04x}, expected 0x00")
    return int(schema_id)


def decode_any(data: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a message of any schema in registry.json; returns (schema name, record)."""
    schema_id = check_header(data)
    name = _name_of(schema_id)
    if name is None:
        raise MalformedMessage(f"unknown schema id {schema_id}")
    current = current_id(name) == schema_id
    writer = None if current else _writer(schema_id)
    return name, _read_body(data, load_schema(name), name, writer)


def _name_of(schema_id: int) -> str | None:
    if _SCHEMA_REGISTRY is not None:
        return _SCHEMA_REGISTRY.name_of(schema_id)  # type: ignore[no-any-return]
    return _names(schemas_dir()).get(schema_id)


@cache
def _names(directory: Path) -> dict[int, str]:
    names = {i: name for i, (name, _) in _history(directory).items()}
    names.update({i: n for n, i in _registry(directory).items()})
    return names


# --- versions --------------------------------------------------------------------------
def _history_file(directory: Path, name: str, schema_id: int) -> Path:
    return directory / "history" / f"{name}@{schema_id}.avsc"


@cache
def _history(directory: Path) -> dict[int, tuple[str, dict[str, Any]]]:
    """id -> (name, self-contained schema) of every version in schemas/history."""
    found = {}
    for path in sorted((directory / "history").glob("*@*.avsc")):
        name, _, schema_id = path.stem.rpartition("@")
        found[int(schema_id)] = (name, json.loads(path.read_text()))
    return found


def _writer(schema_id: int) -> dict[str, Any]:
    if _SCHEMA_REGISTRY is not None:
        return _SCHEMA_REGISTRY.writer(schema_id)  # type: ignore[no-any-return]
    return _parsed_writer(schemas_dir(), schema_id)


@cache
def _parsed_writer(directory: Path, schema_id: int) -> dict[str, Any]:
    if schema_id not in _history(directory):
        raise MalformedMessage(f"schema id {schema_id} has no file in {directory / 'history'}")
    return fastavro.parse_schema(_history(directory)[schema_id][1])


def expanded(name: str) -> dict[str, Any]:
    """The current schema ``name`` with every named type it uses written out inline."""
    return fastavro.schema.expand_schema(load_schema(name))  # type: ignore[no-any-return]


def freeze_history() -> list[Path]:
    """Writes schemas/history/<Name>@<id>.avsc for current ids that have none yet."""
    directory = schemas_dir()
    written = []
    for name, schema_id in registry().items():
        path = _history_file(directory, name, schema_id)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(expanded(name), indent=1) + "\n")
            written.append(path)
    return written


def _read_body(
    data: bytes, schema: dict[str, Any], name: str, writer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``writer``: the schema an older version wrote with, resolved to ``schema``."""
    body = io.BytesIO(bytes(data[HEADER.size :]))
    try:
        if writer is None:
            record = fastavro.schemaless_reader(body, schema)
        else:
            record = fastavro.schemaless_reader(body, writer, schema)
    except (EOFError, StopIteration):
        raise MalformedMessage(f"truncated avro body for {name}") from None
    except Exception as exc:  # fastavro raises assorted errors on corrupt input
        raise MalformedMessage(f"corrupt avro body for {name}: {_one_line(exc)}") from None
    left = len(body.getbuffer()) - body.tell()
    if left:
        raise MalformedMessage(f"{left} trailing bytes after the {name} record")
    return record  # type: ignore[return-value]


# --- error messages ----------------------------------------------------------------------
def _schema_error(name: str, exc: ValidationError, datum: Mapping[str, Any]) -> SchemaError:
    """All offending fields on one line: "RawSample: field 'id' is missing, expected string"."""
    by_field: dict[str, tuple[Any, list[str]]] = {}
    for err in exc.errors:
        field = _field_path(name, getattr(err, "field", "") or "")
        value, expected = by_field.get(field, (getattr(err, "datum", None), []))
        expected.append(_type_name(getattr(err, "schema", "?")))
        by_field[field] = (value, expected)
    parts = [
        f"field {field!r} {_got(field, value, datum)}, expected {' | '.join(dict.fromkeys(exp))}"
        for field, (value, exp) in by_field.items()
    ]
    first = next(iter(by_field), None)
    return SchemaError(f"{name}: " + "; ".join(parts), field=first)


def _field_path(name: str, field: str) -> str:
    """'infogrowth.RawSample.id' -> 'id'; nested records keep their type: 'ScoredSample.id'."""
    field = field.removeprefix(f"{NAMESPACE}.{name}.")
    return field.removeprefix(f"{NAMESPACE}.")


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema.removeprefix(NAMESPACE + ".")
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "enum":
            return "one of " + "/".join(schema.get("symbols", []))
        if kind == "array":
            return f"array<{_type_name(schema.get('items'))}>"
        if kind == "map":
            return f"map<{_type_name(schema.get('values'))}>"
        if "logicalType" in schema:
            return str(schema["logicalType"])
        return _type_name(schema.get("name", kind))
    if isinstance(schema, list):
        return " | ".join(_type_name(s) for s in schema)
    return str(schema)


def _got(field: str, value: Any, record: Mapping[str, Any]) -> str:
    if "." not in field and field not in record:
        return "is missing"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"is {text} ({type(value).__name__})" if value is not None else "is None"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
