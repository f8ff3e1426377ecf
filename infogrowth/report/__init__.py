"""`infogrowth report`: one self-contained HTML page of what a curation run decided.

Input: a `curate` output file (JSONL or Parquet) or a run's `accepted`/`rejected` topics.
Everything is inline (CSS, SVG histograms, thumbnails as base64 JPEG): the page opens from a
mail attachment or an S3 bucket with no network access.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infogrowth.report.page import MAX_PER_SECTION, RunContext, render_page
from infogrowth.report.rows import ReportRow, rows_from_file, rows_from_outcomes, rows_from_topics
from infogrowth.report.thumbs import Thumbnails
from infogrowth.settings import Settings

__all__ = [
    "ReportSummary",
    "report_from_file",
    "report_from_topics",
    "rows_from_outcomes",
    "topics_source",
    "write_report",
]


@dataclass(frozen=True)
class ReportSummary:
    path: Path
    samples: int
    images: int  # thumbnails embedded
    unreadable: int  # references shown as a placeholder

    def line(self) -> str:
        return (
            f"wrote {self.path} ({self.samples} samples, {self.images} images embedded, "
            f"{self.unreadable} unreadable shown as placeholders)"
        )


def write_report(
    rows: Sequence[ReportRow],
    out: str | Path,
    settings: Settings,
    source: str,
    base_dir: Path | None = None,
    max_per_section: int = MAX_PER_SECTION,
) -> ReportSummary:
    """Render ``rows`` to ``out``; images are read with the settings' S3 endpoint and keys
    (relative paths against ``base_dir``). Unreadable images become placeholders."""
    from infogrowth.commands.offline import make_reader

    thumbs = Thumbnails(make_reader(settings, base_dir))
    html = render_page(rows, thumbs, run_context(settings, source), max_per_section)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return ReportSummary(path, len(rows), thumbs.loaded, thumbs.failed)


def report_from_file(
    src: str | Path, out: str | Path, settings: Settings, max_per_section: int = MAX_PER_SECTION
) -> ReportSummary:
    src = Path(src)
    rows = rows_from_file(src)
    return write_report(rows, out, settings, str(src), src.parent, max_per_section)


def report_from_topics(
    settings: Settings, out: str | Path, max_per_section: int = MAX_PER_SECTION
) -> ReportSummary:
    rows = rows_from_topics(settings)
    settings, run_note = _deciding_run(settings, rows)
    source = topics_source(settings) + run_note
    return write_report(rows, out, settings, source, None, max_per_section)


# The settings a report shows and marks on its charts.
REPORT_SETTINGS = ("delta", "k", "tau", "policy", "budget", "encoder", "mode")


def _deciding_run(settings: Settings, rows: Sequence[ReportRow]) -> tuple[Settings, str]:
    """The settings of the run that decided most of ``rows`` (from topic `runs`), so the
    page marks the thresholds that run used rather than the reader's own; and a note for
    the source line. Without a recorded run the given settings stay."""
    from infogrowth.io.runs import read_runs, recorded_settings

    counts = Counter(row.run for row in rows if row.run)
    if not counts:
        return settings, ""
    ref, _ = counts.most_common(1)[0]
    others = f" (+{len(counts) - 1} other runs)" if len(counts) > 1 else ""
    record = read_runs(settings).get(ref)
    if record is None:
        return settings, f" · run {ref}{others}, not in {settings.topic_runs}: given settings"
    recorded = recorded_settings(record)
    values = {k: recorded[k] for k in REPORT_SETTINGS if k in recorded}
    return dataclasses.replace(settings, **values), f" · run {ref}{others}"


def topics_source(settings: Settings) -> str:
    return f"topics {settings.topic_accepted} + {settings.topic_rejected}"


def run_context(settings: Settings, source: str) -> RunContext:
    tau = settings.tau if settings.policy == "threshold" else None
    policy = f"threshold τ={settings.tau:g}" if tau is not None else settings.policy
    if settings.policy == "budget":
        policy = f"budget {settings.budget}"
    line = (
        f"δ={settings.delta:g} · k={settings.k} · policy {policy} · encoder {settings.encoder} "
        f"· {settings.mode}"
    )
    return RunContext(source, settings.delta, tau, line, time.strftime("%Y-%m-%d %H:%M %Z"))
