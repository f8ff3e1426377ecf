"""The records every stage passes around: an input sample and its curation outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Machine-readable reasons a sample is not accepted.
REASON_BAD_INPUT = "bad_input"
REASON_MISALIGNED = "misaligned"
REASON_REDUNDANT = "redundant"
REASON_OVER_BUDGET = "over_budget"
REASON_MISLABELLED = "mislabelled"  # single-modal, label_action=reject
REASON_DUPLICATE = "duplicate"  # the image (near) repeats a kept one, whatever the caption

KNOWN_FIELDS = ("id", "image", "caption", "label", "image_embedding", "text_embedding")


@dataclass
class Sample:
    """One crawled sample. ``image`` is a reference (path, file:// or s3:// URI), never bytes."""

    id: str
    image: str | None = None
    caption: str | None = None
    label: str | None = None
    image_embedding: list[float] | None = None
    text_embedding: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other input fields, kept as-is

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Sample:
        extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
        known = {k: row.get(k) for k in KNOWN_FIELDS}
        known["id"] = "" if known["id"] is None else str(known["id"])
        return cls(**known, extra=extra)

    @property
    def has_embeddings(self) -> bool:
        return self.image_embedding is not None and self.text_embedding is not None


@dataclass
class Outcome:
    """What curation decided about one sample."""

    id: str
    decision: str  # accepted | rejected
    reason: str | None = None  # None when accepted
    detail: str | None = None  # human-readable detail of the reason
    gain: float | None = None  # raw mean cosine distance to the k nearest; None when not computed
    alignment: float | None = None  # final alignment score (after recaption if any)
    caption: str | None = None  # the final caption
    caption_source: str = "original"  # original | recaptioned | label_fallback (opt-in)
    original_alignment: float | None = None
    label: str | None = None  # final label (single-modal mode may relabel)
    relabelled: bool = False
    label_gain: float | None = None  # single-modal entropy gain 1 - p
    evicted: list[str] = field(default_factory=list)  # budget policy: ids this one pushed out
    label_confidence: float | None = None  # single-modal: P(given label | d) or kNN vote share
    original_label: str | None = None  # single-modal: the given label when relabelled
    neighbour: str | None = None  # duplicate/redundant: the kept sample that made it so
    neighbour_distance: float | None = None  # 1 − cos; image-hash duplicate: bits / hash bits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StoreUnavailable(ConnectionError):
    """The object store did not answer (down, unreachable, refusing): the sample is fine,
    so no stage may call it bad input; streaming stages wait and retry the batch."""


class BadInput(ValueError):
    """A sample that cannot be processed; it becomes a rejected record, never a crash."""

    reason = REASON_BAD_INPUT
