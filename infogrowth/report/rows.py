"""The outcomes a report shows, from a `curate` output file or a run's output topics."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infogrowth.io.files import read_rows
from infogrowth.settings import Settings


@dataclass(frozen=True)
class ReportRow:
    """One sample's outcome, with only the fields a report shows (no embeddings)."""

    id: str
    decision: str
    reason: str | None = None
    detail: str | None = None
    image: str | None = None
    caption: str | None = None
    original_caption: str | None = None
    caption_source: str = "original"
    gain: float | None = None
    alignment: float | None = None
    original_alignment: float | None = None
    label: str | None = None
    original_label: str | None = None
    relabelled: bool = False
    neighbour: str | None = None  # the earlier sample that made this one redundant
    neighbour_distance: float | None = None
    run: str | None = None  # the run (topic `runs`) that decided it, on topic records

    @property
    def recaptioned(self) -> bool:
        return self.caption_source == "recaptioned"

    @property
    def decision_key(self) -> str:
        return self.decision if not self.reason else f"{self.decision}: {self.reason}"


def report_row(record: Mapping[str, Any]) -> ReportRow:
    """A row of a curate output file or a decoded Accepted/RejectedSample record.

    Fields other stages may add later (``neighbour``, ``original_caption``, ...) are read
    from the record itself or else from its ``extra`` map; absent ones stay None.
    """
    extra = _extra(record.get("extra"))

    def field(name: str) -> Any:
        value = record.get(name)
        return extra.get(name) if value is None else value

    return ReportRow(
        id=str(record.get("id") or ""),
        decision=str(record.get("decision") or "rejected"),
        reason=record.get("reason") or None,
        detail=record.get("detail") or None,
        image=_text(field("image")),
        caption=_text(field("caption")),
        original_caption=_text(field("original_caption")),
        caption_source=str(record.get("caption_source") or "original"),
        gain=_number(record.get("gain")),
        alignment=_number(record.get("alignment")),
        original_alignment=_number(field("original_alignment")),
        label=_text(field("label")),
        original_label=_text(field("original_label")),
        relabelled=_flag(field("relabelled")),
        neighbour=_text(field("neighbour")),
        neighbour_distance=_number(field("neighbour_distance")),
        run=_text(record.get("run")),
    )


def rows_from_file(path: str | Path) -> list[ReportRow]:
    """The rows of a `curate` output file (JSONL or Parquet), in file order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    for number, record in enumerate(read_rows(path), 1):
        if "decision" not in record:
            raise ValueError(
                f"{path}: row {number} has no decision; is it the output of `infogrowth curate`?"
            )
        rows.append(report_row(record))
    return rows


def rows_from_topics(settings: Settings) -> list[ReportRow]:
    """The last committed outcome per sample of the settings' accepted/rejected topics,
    read_committed, with samples the budget policy evicted later shown as over_budget."""
    from infogrowth.commands.pipeline import read_outcomes  # Kafka only when reading topics

    return rows_from_outcomes(read_outcomes(settings))


def rows_from_outcomes(outcomes: Mapping[str, Mapping[str, Any]]) -> list[ReportRow]:
    """Rows of ``infogrowth.commands.pipeline.read_outcomes``' records (id -> last outcome)."""
    return [report_row(record) for record in outcomes.values()]


def _extra(value: Any) -> dict[str, Any]:
    """An ``extra`` map: a dict (topics) or a JSON object as text (exported Parquet)."""
    if isinstance(value, Mapping):
        return {k: _maybe_json(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return _extra(parsed) if isinstance(parsed, Mapping) else {}
    return {}


def _maybe_json(value: Any) -> Any:
    """Avro ``extra`` values are strings, numbers among them written as JSON."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, int | float | bool) else value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if number != number else number  # NaN: not computed


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")
