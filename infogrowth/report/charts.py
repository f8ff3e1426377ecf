"""Inline SVG charts: a histogram of accepted and rejected values with a threshold line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

import numpy as np

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 22, 34  # plot margins
ACCEPTED_COLOUR = "#2f9e6e"
REJECTED_COLOUR = "#d9694f"
THRESHOLD_COLOUR = "#1f2937"
Scale = Callable[[float], float]  # data value -> SVG coordinate


def histogram_svg(
    accepted: Sequence[float],
    rejected: Sequence[float],
    threshold: float | None,
    threshold_name: str,
    bins: int = 30,
) -> str:
    """Stacked histogram (accepted below, rejected above) with the threshold dashed."""
    values = np.asarray([*accepted, *rejected], dtype=np.float64)
    if values.size == 0:
        return '<p class="empty">no values</p>'
    low, high = _range(values, threshold)
    edges = np.linspace(low, high, bins + 1)
    acc = np.histogram(np.asarray(accepted, dtype=np.float64), edges)[0]
    rej = np.histogram(np.asarray(rejected, dtype=np.float64), edges)[0]
    tallest = max(int((acc + rej).max()), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(value: float) -> float:
        return LEFT + (value - low) / (high - low) * plot_w

    def y(count: float) -> float:
        return TOP + plot_h - count / tallest * plot_h

    parts = [_axes(low, high, tallest, x, y)]
    bar_w = plot_w / bins
    for i in range(bins):
        left = LEFT + i * bar_w
        parts.append(_bar(left, bar_w, y(0), y(acc[i]), ACCEPTED_COLOUR, f"{acc[i]} accepted"))
        parts.append(_bar(left, bar_w, y(acc[i]), y(acc[i] + rej[i]), REJECTED_COLOUR,
                          f"{rej[i]} rejected"))  # fmt: skip
    if threshold is not None:
        parts.append(_threshold(x(threshold), f"{threshold_name} = {threshold:g}"))
    body = "".join(parts)
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img">{body}</svg>'
    )


def _range(values: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """The values' range, stretched to show the threshold and never empty."""
    points = [float(values.min()), float(values.max())]
    if threshold is not None:
        points.append(threshold)
    low, high = min(points), max(points)
    pad = (high - low) * 0.04 or 0.05
    floor = 0.0 if low >= 0 else low - pad  # gains are never negative: no axis below 0
    return floor, high + pad


def _bar(left: float, width: float, bottom: float, top: float, colour: str, title: str) -> str:
    if bottom - top <= 0:
        return ""
    return (
        f'<rect x="{left + 0.5:.1f}" y="{top:.1f}" width="{max(width - 1, 0.5):.1f}" '
        f'height="{bottom - top:.1f}" fill="{colour}"><title>{title}</title></rect>'
    )


def _axes(low: float, high: float, tallest: int, x: Scale, y: Scale) -> str:
    baseline = y(0)
    parts = [
        f'<line x1="{LEFT}" y1="{baseline:.1f}" x2="{WIDTH - RIGHT}" y2="{baseline:.1f}" '
        'stroke="#9aa3ad"/>'
    ]
    for tick in np.linspace(low, high, 6):
        tx = x(float(tick))
        parts.append(
            f'<line x1="{tx:.1f}" y1="{baseline:.1f}" x2="{tx:.1f}" y2="{baseline + 4:.1f}" '
            f'stroke="#9aa3ad"/><text x="{tx:.1f}" y="{baseline + 17:.1f}" '
            f'text-anchor="middle" class="tick">{tick:.2f}</text>'
        )
    for count in sorted({0, tallest // 2, tallest}):
        ty = y(count)
        parts.append(
            f'<line x1="{LEFT}" y1="{ty:.1f}" x2="{WIDTH - RIGHT}" y2="{ty:.1f}" '
            f'stroke="#e5e8ec" stroke-dasharray="2 3"/>'
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{count}</text>'
        )
    return "".join(parts)


def _threshold(tx: float, label: str) -> str:
    return (
        f'<line x1="{tx:.1f}" y1="{TOP - 6}" x2="{tx:.1f}" y2="{HEIGHT - BOTTOM}" '
        f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="5 3"/>'
        f'<text x="{tx + 5:.1f}" y="{TOP + 4}" class="threshold">{escape(label)}</text>'
    )
