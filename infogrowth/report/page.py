"""The report page: header with the run's totals, counts, histograms and galleries."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from importlib import resources
from string import Template

from infogrowth.records import (
    REASON_BAD_INPUT,
    REASON_DUPLICATE,
    REASON_MISALIGNED,
    REASON_REDUNDANT,
)
from infogrowth.report.charts import ACCEPTED_COLOUR, REJECTED_COLOUR, histogram_svg
from infogrowth.report.rows import ReportRow
from infogrowth.report.thumbs import Thumbnails

MAX_PER_SECTION = 48
_HASH_DETAIL = re.compile(r"image hash (\d+)/(\d+) bits")  # a duplicate found by image hash


@dataclass(frozen=True)
class RunContext:
    """What the page says about where its rows come from and the thresholds to mark."""

    source: str
    delta: float | None
    tau: float | None  # None when the policy has no gain threshold
    settings_line: str
    generated: str


@dataclass(frozen=True)
class Gallery:
    key: str
    title: str
    note: str
    rows: list[ReportRow]
    card: Callable[[ReportRow], str]
    layout: str = "single"  # "pairs": cards of two thumbnails, in wider cells


def render_page(
    rows: Sequence[ReportRow],
    thumbs: Thumbnails,
    run: RunContext,
    max_per_section: int = MAX_PER_SECTION,
) -> str:
    by_id = {row.id: row for row in rows}
    cards = Cards(thumbs, by_id)
    galleries = [g for g in galleries_of(rows, cards) if g.rows]
    body = "".join(
        [
            header(rows, run),
            '<main class="page">',
            navigation(galleries),
            counts_section(rows),
            charts_section(rows, run),
            *(gallery_section(g, max_per_section) for g in galleries),
            "</main>",
        ]
    )
    template = Template(_resource("page.html"))
    return template.substitute(title=escape(f"Curation report: {run.source}"),
                               css=_resource("page.css"), body=body)  # fmt: skip


def _resource(name: str) -> str:
    return resources.files("infogrowth.report").joinpath(name).read_text(encoding="utf-8")


# --- header and counts -------------------------------------------------------------------
def header(rows: Sequence[ReportRow], run: RunContext) -> str:
    total = len(rows)
    accepted = sum(1 for r in rows if r.decision == "accepted")
    stats = [
        ("samples", total, ""),
        ("accepted", accepted, "ok"),
        ("rejected", total - accepted, "no"),
        ("recaptioned", sum(1 for r in rows if r.recaptioned), ""),
        ("relabelled", sum(1 for r in rows if r.relabelled), ""),
    ]
    stats = [s for s in stats if s[1] or s[0] != "relabelled"]  # relabelling: single-modal only
    tiles = "".join(
        f'<div class="stat {kind}"><b>{n:,}</b><span>{name}{_share(n, total, name)}</span></div>'
        for name, n, kind in stats
    )
    return (
        '<header class="top"><div class="page">'
        f'<h1>Curation report</h1><p class="source">{escape(run.source)}</p>'
        f'<p class="settings">{escape(run.settings_line)} · generated {escape(run.generated)}</p>'
        f'<div class="stats">{tiles}</div></div></header>'
    )


def _share(n: int, total: int, name: str) -> str:
    return "" if name == "samples" or not total else f" · {100 * n / total:.0f}%"


def navigation(galleries: Sequence[Gallery]) -> str:
    links = ['<a href="#counts">counts</a>', '<a href="#charts">histograms</a>']
    links += [f'<a href="#{g.key}">{escape(g.title)} ({len(g.rows)})</a>' for g in galleries]
    return f'<nav class="toc">{"".join(links)}</nav>'


def counts_section(rows: Sequence[ReportRow]) -> str:
    counts = Counter(r.decision_key for r in rows)
    total = max(len(rows), 1)
    lines = []
    for key, n in sorted(counts.items(), key=lambda kv: (kv[0] != "accepted", -kv[1], kv[0])):
        colour = ACCEPTED_COLOUR if key == "accepted" else REJECTED_COLOUR
        decision, _, reason = key.partition(": ")
        lines.append(
            f"<tr><td>{escape(decision)}</td><td>{escape(reason or '-')}</td>"
            f'<td class="num">{n:,}</td><td class="num">{100 * n / total:.1f}%</td>'
            f'<td class="barcell"><span class="bar" style="width:{100 * n / total:.1f}%;'
            f'background:{colour}"></span></td></tr>'
        )
    return (
        '<section id="counts"><h2>Outcomes by decision and reason</h2>'
        '<table class="counts"><thead><tr><th>decision</th><th>reason</th><th>samples</th>'
        f"<th>share</th><th></th></tr></thead><tbody>{''.join(lines)}</tbody></table></section>"
    )


def charts_section(rows: Sequence[ReportRow], run: RunContext) -> str:
    def values(attr: str, decision: str) -> list[float]:
        found = (getattr(r, attr) for r in rows if r.decision == decision)
        return [v for v in found if v is not None]

    charts = [
        ("gain", "Gain: mean cosine distance to the k nearest earlier samples", run.tau, "τ"),
        ("alignment", "Alignment: image–caption cosine (final caption)", run.delta, "δ"),
    ]
    figures = "".join(
        f'<figure class="chart-box"><figcaption>{escape(title)}</figcaption>'
        f"{histogram_svg(values(attr, 'accepted'), values(attr, 'rejected'), mark, name)}"
        "</figure>"
        for attr, title, mark, name in charts
    )
    legend = (
        f'<p class="legend"><i style="background:{ACCEPTED_COLOUR}"></i>accepted '
        f'<i style="background:{REJECTED_COLOUR}"></i>rejected '
        '<i class="dash"></i>threshold</p>'
    )
    return (
        f'<section id="charts"><h2>Histograms</h2>{legend}'
        f'<div class="charts">{figures}</div></section>'
    )


# --- galleries ---------------------------------------------------------------------------
def galleries_of(rows: Sequence[ReportRow], cards: Cards) -> list[Gallery]:
    return [
        neighbour_gallery(
            "duplicate",
            "Duplicates",
            "samples whose image repeats a kept image, whatever the caption says",
            [r for r in rows if r.reason == REASON_DUPLICATE],
            cards,
        ),
        neighbour_gallery(
            "redundant",
            "Redundant",
            "samples the gain rejected: too close to what was already collected",
            [r for r in rows if r.reason == REASON_REDUNDANT],
            cards,
        ),
        Gallery(
            "misaligned",
            "Misaligned",
            "Caption and image disagree, also after a new caption: rejected.",
            [r for r in rows if r.reason == REASON_MISALIGNED],
            cards.misaligned,
        ),
        Gallery(
            "recaptioned",
            "Recaptioned",
            "The original caption scored below δ; the captioner wrote a new one.",
            [r for r in rows if r.recaptioned],
            cards.recaptioned,
        ),
        Gallery(
            "relabelled",
            "Relabelled",
            "The classifier doubted the given label and replaced it.",
            [r for r in rows if r.relabelled],
            cards.relabelled,
        ),
        Gallery(
            "bad_input",
            "Bad input",
            "Rows that could not be curated at all: the image or caption was unusable.",
            [r for r in rows if r.reason == REASON_BAD_INPUT],
            cards.bad_input,
        ),
        Gallery(
            "accepted",
            "Accepted",
            "Samples kept in the dataset.",
            [r for r in rows if r.decision == "accepted"],
            cards.scored,
        ),
    ]


def neighbour_gallery(
    key: str, title: str, what: str, rows: list[ReportRow], cards: Cards
) -> Gallery:
    """Pairs when the records name each one's nearest kept sample; else one card each."""
    if any(r.neighbour for r in rows):
        note = f"{what.capitalize()}, each beside the kept sample that made it so."
        return Gallery(key, title, note, rows, cards.redundant, "pairs")
    note = (
        f"{what.capitalize()}. These records do not name the earlier sample (no neighbour "
        "field), so each is shown alone."
    )
    return Gallery(key, title, note, rows, cards.scored)


def gallery_section(gallery: Gallery, limit: int) -> str:
    shown = gallery.rows[:limit]
    more = len(gallery.rows) - len(shown)
    left_out = f'<p class="more">{more:,} more not shown (first {limit} here).</p>' if more else ""
    return (
        f'<section id="{gallery.key}"><h2>{escape(gallery.title)} '
        f'<span class="count">{len(gallery.rows):,}</span></h2>'
        f'<p class="note">{escape(gallery.note)}</p>'
        f'<div class="grid {gallery.layout}">{"".join(gallery.card(r) for r in shown)}</div>'
        f"{left_out}</section>"
    )


class Cards:
    """One HTML card per sample, for each gallery."""

    def __init__(self, thumbs: Thumbnails, by_id: dict[str, ReportRow]) -> None:
        self.thumbs = thumbs
        self.by_id = by_id

    def image(self, row: ReportRow | None, fallback: str = "image unavailable") -> str:
        thumb = self.thumbs.get(row.image if row else None)
        if thumb.data_uri is None:
            return placeholder(fallback, thumb.problem if row else fallback)
        alt = escape(row.id if row else "")
        return (
            f'<img src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="{alt}" title="{escape(row.image or "") if row else ""}">'
        )

    def redundant(self, row: ReportRow) -> str:
        earlier = self.by_id.get(row.neighbour) if row.neighbour else None
        if row.neighbour is None:
            right = placeholder("neighbour not recorded")
            who = "earlier: not recorded"
        else:
            right = self.image(earlier, "not in this report")
            who = f"earlier: {row.neighbour}"
        facts = {"gain": _num(row.gain)}
        by_hash = _HASH_DETAIL.search(row.detail or "")
        if by_hash:  # neighbour_distance is then bits / hash size, not 1 - cos
            facts["image hash"] = f"{by_hash[1]}/{by_hash[2]} bits"
        elif row.neighbour_distance is not None:
            facts["distance"] = _num(row.neighbour_distance)
        return (
            '<figure class="card pair">'
            f'<div class="thumbs"><div class="slot">{self.image(row)}<small>this one</small></div>'
            '<div class="arrow">≈</div>'
            f'<div class="slot">{right}<small>{escape(who)}</small></div></div>'
            f"<figcaption>{_id(row)}{_facts(facts)}{_caption(row.caption)}</figcaption></figure>"
        )

    def misaligned(self, row: ReportRow) -> str:
        facts = _facts({"alignment": _change(row.original_alignment, row.alignment)}, "bad")
        return self._single(row, f"{facts}{_caption(row.caption)}")

    def recaptioned(self, row: ReportRow) -> str:
        old = row.original_caption
        before = _caption(old, "was") if old else '<p class="cap muted">original not recorded</p>'
        facts = _facts({"alignment": _change(row.original_alignment, row.alignment)})
        return self._single(row, f"{facts}{_decision(row)}{before}{_caption(row.caption, 'now')}")

    def relabelled(self, row: ReportRow) -> str:
        old = escape(row.original_label) if row.original_label else "<i>not recorded</i>"
        return self._single(
            row,
            f"{_decision(row)}"
            f'<p class="labels"><s>{old}</s> → <b>{escape(row.label or "")}</b></p>',
        )

    def scored(self, row: ReportRow) -> str:
        facts = _facts({"gain": _num(row.gain), "alignment": _num(row.alignment)})
        return self._single(row, f"{facts}{_caption(row.caption)}")

    def bad_input(self, row: ReportRow) -> str:
        return self._single(row, f'<p class="cap bad">{escape(row.detail or "")}</p>')

    def _single(self, row: ReportRow, text: str) -> str:
        return (
            f'<figure class="card"><div class="thumbs">{self.image(row)}</div>'
            f"<figcaption>{_id(row)}{text}</figcaption></figure>"
        )


def placeholder(text: str, why: str | None = None) -> str:
    """The box shown where an image cannot be: same size as a thumbnail, reason on hover."""
    return f'<div class="ph" title="{escape(why or text)}"><span>{escape(text)}</span></div>'


def _id(row: ReportRow) -> str:
    return f'<div class="id" title="{escape(row.id)}">{escape(row.id)}</div>'


def _facts(facts: dict[str, str], kind: str = "") -> str:
    cells = "".join(f"<span>{escape(name)} <b>{value}</b></span>" for name, value in facts.items())
    return f'<div class="facts {kind}">{cells}</div>'


def _change(before: float | None, after: float | None) -> str:
    return _num(after) if before is None else f"{_num(before)} → {_num(after)}"


def _caption(text: str | None, tag: str = "") -> str:
    if not text:
        return ""
    label = f"<em>{escape(tag)}</em> " if tag else ""
    return f'<p class="cap" title="{escape(text)}">{label}{escape(text)}</p>'


def _decision(row: ReportRow) -> str:
    kind = "ok" if row.decision == "accepted" else "bad"
    return f'<div class="decision {kind}">{escape(row.decision_key)}</div>'


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
