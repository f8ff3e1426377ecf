"""Avro records on the topics ↔ the core's dataclasses (Sample, Scored, Outcome)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from infogrowth.core.curate import Scored
from infogrowth.core.dedup import usable_hashes
from infogrowth.core.encode import Encoded
from infogrowth.io.avro import stringify_extra
from infogrowth.io.vectors import EMBEDDING_FIELDS, pack, pack_if_exact, unpack
from infogrowth.records import KNOWN_FIELDS, Outcome, Sample

PASSTHROUGH = ("source", "url", "crawl_time")  # RawSample fields the core does not use
# What decoding a message into a sample raises when it is none: undecodable bytes
# (MalformedMessage is a ValueError) or valid Avro that is no sample (a packed embedding of
# 7 bytes). The agents send such a message to dead-letter.
NOT_A_SAMPLE = (ValueError, TypeError, KeyError)


def raw_record(row: dict[str, Any]) -> dict[str, Any]:
    """A RawSample from a user's row: known fields typed, everything else in ``extra``."""
    rest = {k: v for k, v in row.items() if k not in KNOWN_FIELDS and k not in PASSTHROUGH}
    extra = rest.pop("extra", None)
    record = {k: row.get(k) for k in (*KNOWN_FIELDS, *PASSTHROUGH)}
    record["id"] = "" if record["id"] is None else str(record["id"])
    record["extra"] = stringify_extra({**(extra or {}), **rest})
    for name in EMBEDDING_FIELDS:
        record[name] = pack_if_exact(record[name])
    return record


def sample_from_raw(rec: dict[str, Any]) -> Sample:
    extra = {k: rec.get(k) for k in PASSTHROUGH}
    extra["extra"] = dict(rec.get("extra") or {})
    return Sample(
        id=rec["id"],
        image=rec.get("image"),
        caption=rec.get("caption"),
        label=rec.get("label"),
        image_embedding=unpack(rec.get("image_embedding")),
        text_embedding=unpack(rec.get("text_embedding")),
        extra=extra,
    )


def _passthrough(sample: Sample) -> dict[str, Any]:
    out = {k: sample.extra.get(k) for k in PASSTHROUGH}
    out["extra"] = dict(sample.extra.get("extra") or {})
    return out


def scored_record(
    item: Scored, attempt: int, original_caption: str | None = None
) -> dict[str, Any]:
    s, e = item.sample, item.encoded
    return {
        "id": s.id,
        "image": s.image,
        "caption": s.caption,
        "label": s.label,
        **_passthrough(s),
        "image_embedding": pack(e.image_emb),
        "text_embedding": pack(e.text_emb),
        "alignment": e.alignment,
        "top_label": e.top_label,
        "label_confidence": item.label_confidence,
        "relabelled": item.relabelled,
        "attempt": attempt,
        "original_caption": original_caption,
        "original_alignment": item.original_alignment,
        "caption_source": item.caption_source,
        "original_label": item.original_label,
        "image_hash": e.image_hash,
    }


def scored_from_record(rec: dict[str, Any]) -> Scored:
    sample = Sample(
        id=rec["id"],
        image=rec.get("image"),
        caption=rec.get("caption"),
        label=rec.get("label"),
        extra={k: rec.get(k) for k in (*PASSTHROUGH, "extra")},
    )
    encoded = Encoded(
        image_emb=unpack(rec["image_embedding"]),
        text_emb=unpack(rec.get("text_embedding")),
        alignment=rec.get("alignment"),
        top_label=rec.get("top_label"),
        image_hash=usable_hashes(rec.get("image_hash")),
    )
    recaptioned = rec.get("attempt", 0) > 0 and rec.get("original_caption") is not None
    source = rec.get("caption_source") or ("recaptioned" if recaptioned else "original")
    return Scored(
        sample,
        encoded,
        caption_source=source,
        original_alignment=rec.get("original_alignment"),
        relabelled=rec.get("relabelled", False),
        label_confidence=rec.get("label_confidence"),
        original_label=rec.get("original_label"),
    )


def recaption_request(item: Scored, delta: float) -> dict[str, Any]:
    alignment = item.encoded.alignment
    return {
        "sample": scored_record(item, attempt=0),
        "alignment": alignment,
        "reason": f"alignment {alignment:.3f} < delta={delta}",
    }


def outcome_record(outcome: Outcome, sample: Sample, item: Scored | None) -> dict[str, Any]:
    """AcceptedSample or RejectedSample (by ``outcome.decision``) for the output topics."""
    record: dict[str, Any] = {
        "id": outcome.id,
        "image": sample.image,
        "caption": outcome.caption,
        "caption_source": outcome.caption_source,
        "label": outcome.label,
        "relabelled": outcome.relabelled,
        "gain": outcome.gain,
        "label_gain": outcome.label_gain,
        "alignment": outcome.alignment,
        "original_alignment": outcome.original_alignment,
        "decision": outcome.decision,
        "extra": _output_extra(sample),
        "label_confidence": outcome.label_confidence,
        "original_label": outcome.original_label,
        "neighbour": outcome.neighbour,
        "neighbour_distance": outcome.neighbour_distance,
    }
    if outcome.decision == "accepted":
        assert item is not None
        record["image_embedding"] = pack(item.encoded.image_emb)
        record["text_embedding"] = pack(item.encoded.text_emb)
    else:
        record["reason"] = outcome.reason
        record["detail"] = outcome.detail or ""
        del record["relabelled"]
    return record


def _output_extra(sample: Sample) -> dict[str, str]:
    """Output records keep the crawl metadata (source, url, crawl time) in ``extra``."""
    meta = _passthrough(sample)
    out = dict(meta.pop("extra"))
    for key, value in meta.items():
        if value is not None:
            out[key] = value.isoformat() if isinstance(value, datetime) else value
    return stringify_extra(out)
