"""Avro schemas and the Confluent wire format (no broker needed)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from infogrowth.io.avro import (
    AvroSerde,
    MalformedMessage,
    SchemaError,
    decode_any,
    load_schema,
    registry,
    schemas_dir,
    stringify_extra,
)
from infogrowth.records import Outcome

EMB = [0.5, -0.25, 0.125, 1.0]  # exactly representable as float32, so round trips are exact

RAW: dict[str, Any] = {
    "id": "s-1",
    "source": "laion-sample",
    "url": "https://example.org/cat",
    "image": "s3://images/cat.jpg",
    "caption": "a cat on a sofa",
    "label": None,
    "image_embedding": None,
    "text_embedding": None,
    "crawl_time": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    "extra": {"width": "640", "nsfw": "false"},
}
SCORED: dict[str, Any] = {
    **RAW,
    "image_embedding": EMB,
    "text_embedding": EMB,
    "alignment": 0.31,
    "top_label": "tabby",
    "label_confidence": None,
    "relabelled": False,
    "attempt": 1,
    "original_caption": "IMG_0001.jpg",
    "original_alignment": 0.05,
    "caption_source": "recaptioned",
    "original_label": None,
    "image_hash": None,
}
RECORDS: dict[str, dict[str, Any]] = {
    "RawSample": RAW,
    "ScoredSample": SCORED,
    "RecaptionRequest": {"sample": SCORED, "alignment": 0.05, "reason": "alignment 0.05 < 0.4"},
    "AcceptedSample": {
        "id": "s-1",
        "image": "s3://images/cat.jpg",
        "caption": "a cat on a sofa",
        "caption_source": "recaptioned",
        "label": "tabby",
        "relabelled": False,
        "gain": 0.42,
        "label_gain": None,
        "alignment": 0.31,
        "original_alignment": 0.05,
        "decision": "accepted",
        "image_embedding": EMB,
        "text_embedding": EMB,
        "extra": {},
        "label_confidence": 0.25,
        "original_label": "tiger cat",
        "neighbour": None,
        "neighbour_distance": None,
        "run": "infogrowth@0123456789ab",
    },
    "RejectedSample": {
        "id": "s-2",
        "image": None,
        "caption": "",
        "reason": "bad_input",
        "detail": "no image reference",
        "caption_source": "original",
        "label": None,
        "gain": None,
        "label_gain": None,
        "alignment": None,
        "original_alignment": None,
        "decision": "rejected",
        "extra": {"k": "v"},
        "label_confidence": None,
        "original_label": None,
        "neighbour": "s-1",
        "neighbour_distance": 0.0,
        "run": None,
    },
    "DeadLetter": {
        "topic": "raw-samples",
        "partition": 0,
        "offset": 17,
        "reason": "wrong magic byte 0x7b, expected 0x00",
        "original": b'{"id": 1}',
        "key": None,
        "stage": "encode",
    },
    "RunSettings": {
        "run": "infogrowth@0123456789ab",
        "app_id": "infogrowth",
        "settings_hash": "0123456789ab",
        "settings": {"delta": "0.25", "k": "1", "policy": '"budget"'},
        "origin": "replay",
        "replay_version": "v2",
        "image_dim": 1280,
        "text_dim": 384,
        "topics": {"topic_raw": "raw-samples"},
        "created": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    },
}


def test_every_schema_has_a_unique_id_and_a_file() -> None:
    ids = registry()
    assert set(ids) == set(RECORDS)
    assert len(set(ids.values())) == len(ids)
    for name in ids:
        assert (schemas_dir() / f"{name}.avsc").is_file()
        assert json.loads((schemas_dir() / f"{name}.avsc").read_text())["namespace"] == "infogrowth"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip(name: str) -> None:
    serde = AvroSerde(name)
    assert serde.decode(serde.encode(RECORDS[name])) == RECORDS[name]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_wire_format_header(name: str) -> None:
    data = AvroSerde(name).encode(RECORDS[name])
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == registry()[name]
    assert decode_any(data) == (name, RECORDS[name])


def test_defaults_fill_optional_fields() -> None:
    serde = AvroSerde("RawSample")
    decoded = serde.decode(serde.encode({"id": "x"}))
    assert decoded["id"] == "x" and decoded["image"] is None and decoded["extra"] == {}
    rejected = AvroSerde("RejectedSample")
    assert rejected.decode(rejected.encode({"id": "x", "reason": "redundant"}))["decision"] == (
        "rejected"
    )


def test_numpy_values_and_outcome_fields_are_accepted() -> None:
    serde = AvroSerde("AcceptedSample")
    outcome = Outcome(id="a", decision="accepted", gain=0.5, alignment=0.75, caption="c")
    record = {
        **outcome.to_dict(),
        "image_embedding": np.asarray(EMB, dtype=np.float32),
        "alignment": np.float32(0.75),
    }
    decoded = serde.decode(serde.encode(record))
    assert decoded["image_embedding"] == EMB
    assert decoded["alignment"] == 0.75 and decoded["caption_source"] == "original"


def test_stringify_extra() -> None:
    assert stringify_extra({"a": "x", "b": 3, "c": [1, 2], "d": None}) == {
        "a": "x",
        "b": "3",
        "c": "[1, 2]",
        "d": "null",
    }


@pytest.mark.parametrize(
    ("name", "record", "field", "words"),
    [
        ("RawSample", {"caption": "no id"}, "id", "missing"),
        ("RawSample", {"id": 7}, "id", "int"),
        ("RawSample", {"id": "x", "image_embedding": [1.0, "a"]}, "image_embedding", "float"),
        ("RawSample", {"id": "x", "extra": {"w": 640}}, "extra", "string"),
        ("RejectedSample", {"id": "x", "reason": "boring"}, "reason", "misaligned"),
        ("AcceptedSample", {"id": "x", "decision": "rejected"}, "decision", "accepted"),
        ("RecaptionRequest", {"sample": {"id": 1}, "alignment": 0.1, "reason": "r"}, "id", "int"),
    ],
)
def test_schema_error_names_the_field(
    name: str, record: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(SchemaError) as info:
        AvroSerde(name).encode(record)
    assert field in str(info.value) and words in str(info.value)
    assert info.value.field is not None and info.value.field.endswith(field)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b'{"id": "x", "caption": "json, not avro"}', "magic byte"),
        (b"\x00\x00\x00\x03\xe7\x02x", "unknown schema id 999"),
        (b"\x00\x00\x00\x00\x04\x02x", "schema id 4 (AcceptedSample)"),
        (b"\x00\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x00\x00\x01\x40ab", "truncated"),
    ],
)
def test_malformed_message(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(reason)) as info:
        AvroSerde("RawSample").decode(data)
    assert "\n" not in str(info.value)


def test_trailing_garbage_is_malformed() -> None:
    serde = AvroSerde("RawSample")
    with pytest.raises(MalformedMessage, match="trailing"):
        serde.decode(serde.encode(RAW) + b"\x00\x01")


def test_random_garbage_never_escapes_as_another_error() -> None:
    rng = np.random.default_rng(0)
    serde = AvroSerde("ScoredSample")
    for _ in range(300):
        body = rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        with contextlib.suppress(MalformedMessage):  # anything else escapes and fails
            serde.decode(b"\x00" + struct.pack(">I", serde.schema_id) + body)


def test_schemas_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "registry.json").write_text(json.dumps({"Tiny": 42}))
    tiny = {"type": "record", "name": "Tiny", "namespace": "infogrowth", "fields": [
        {"name": "n", "type": "int"}]}  # fmt: skip
    (tmp_path / "Tiny.avsc").write_text(json.dumps(tiny))
    monkeypatch.setenv("INFOGROWTH_SCHEMAS_DIR", str(tmp_path))
    serde = AvroSerde("Tiny")
    assert serde.encode({"n": 1}) == b"\x00\x00\x00\x00\x2a\x02"
    assert load_schema("Tiny")["name"] == "infogrowth.Tiny"


# --- schema versions ---------------------------------------------------------------------
def test_every_current_schema_is_frozen_under_its_id():
    """A schema edited under an id already written would make old records unreadable: a
    change needs a new id in registry.json, then `freeze_history()`."""
    from fastavro.schema import to_parsing_canonical_form

    from infogrowth.io.avro import _history_file, expanded, schemas_dir

    for name, schema_id in registry().items():
        frozen = _history_file(schemas_dir(), name, schema_id)
        assert frozen.exists(), f"{name}@{schema_id} not frozen: run freeze_history()"
        written = fastavro.parse_schema(json.loads(frozen.read_text()))
        assert to_parsing_canonical_form(written) == to_parsing_canonical_form(
            fastavro.parse_schema(expanded(name))
        ), f"{name} changed under id {schema_id}: give it a new id in registry.json"


def test_records_of_an_older_schema_version_still_decode():
    from infogrowth.io.avro import HEADER, _writer

    old_id = 5  # RejectedSample before neighbour, label and filter fields were added
    assert registry()["RejectedSample"] != old_id
    record = {"id": "s1", "reason": "redundant", "detail": "gain 0.01 < tau=0.05"}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, _writer(old_id), record)
    data = HEADER.pack(0, old_id) + body.getvalue()
    decoded = AvroSerde("RejectedSample").decode(data)
    assert decoded["id"] == "s1" and decoded["reason"] == "redundant"
    assert decoded["neighbour"] is None and decoded["original_label"] is None
    assert decode_any(data) == ("RejectedSample", decoded)
    with pytest.raises(MalformedMessage, match="expected"):
        AvroSerde("AcceptedSample").decode(data)


def _written_with(schema_id: int, record: dict[str, Any]) -> bytes:
    from infogrowth.io.avro import HEADER, _writer

    body = io.BytesIO()
    fastavro.schemaless_writer(body, _writer(schema_id), record)
    return HEADER.pack(0, schema_id) + body.getvalue()


@pytest.mark.parametrize(
    ("name", "old_id"), [("ScoredSample", 7), ("AcceptedSample", 8), ("RawSample", 1)]
)
def test_embeddings_travel_packed_and_float_arrays_of_older_versions_still_decode(
    name: str, old_id: int
) -> None:
    from infogrowth.io.messages import sample_from_raw, scored_from_record
    from infogrowth.io.vectors import as_lists

    rng = np.random.default_rng(0)
    image, text = rng.standard_normal((2, 512)).astype(np.float32)
    base = {k: v for k, v in RECORDS[name].items() if k != "run"}  # fields of both versions
    old = _written_with(
        old_id, {**base, "image_embedding": image.tolist(), "text_embedding": text.tolist()}
    )
    new = AvroSerde(name).encode(
        {**base, "image_embedding": image.tobytes(), "text_embedding": text.tobytes()}
    )
    assert registry()[name] > old_id and abs(len(new) - len(old)) < 8  # both 4 bytes a float
    got = [AvroSerde(name).decode(data) for data in (old, new)]
    assert (
        isinstance(got[0]["image_embedding"], list) and got[1]["image_embedding"] == image.tobytes()
    )
    if name == "ScoredSample":
        vectors = [(s.encoded.image_emb, s.encoded.text_emb) for s in map(scored_from_record, got)]
    elif name == "RawSample":
        vectors = [(s.image_embedding, s.text_embedding) for s in map(sample_from_raw, got)]
    else:
        vectors = [
            (np.array(r["image_embedding"], "f4"), np.array(r["text_embedding"], "f4"))
            for r in map(as_lists, got)
        ]
    for img, txt in vectors:
        assert img.dtype == np.float32 and np.array_equal(img, image) and np.array_equal(txt, text)
