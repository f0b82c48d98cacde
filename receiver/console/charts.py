"""Small charts drawn on the server as inline SVG: no script, no library, readable
without colour (every bar has a title with its numbers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

COLOURS = {
    "accepted": "#2e7d32",
    "duplicate": "#9e9e9e",
}
REJECTED = "#c62828"


def colour(outcome: str) -> str:
    return COLOURS.get(outcome, REJECTED)


def stacked_bars(
    columns: Sequence[tuple[int, Mapping[str, int]]], *, width: int = 720, height: int = 160
) -> Markup:
    """One bar per (epoch seconds, outcome -> count), stacked by outcome, oldest left."""
    if not columns:
        return Markup("")
    peak = max((sum(counts.values()) for _, counts in columns), default=0) or 1
    step = width / len(columns)
    bar = max(step - 1, 1)
    top = 16  # room for the peak's label above the bars
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {top + height + 18}" width="100%" role="img" '
        f'aria-label="deliveries per minute, last {len(columns)} minutes, peak {peak}">'
    ]
    for index, (start, counts) in enumerate(columns):
        x = index * step
        y = float(top + height)
        label = datetime.fromtimestamp(start, UTC).strftime("%H:%M")
        title = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        parts.append(f"<g><title>{escape(label)} UTC: {escape(title)}</title>")
        for outcome, count in sorted(counts.items()):
            h = height * count / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour(outcome)}"/>'
            )
        parts.append("</g>")
        if index % 10 == 0:
            parts.append(f'<text x="{x:.1f}" y="{top + height + 14}" font-size="11">{escape(label)}</text>')
    parts.append(f'<text x="{width}" y="11" font-size="11" text-anchor="end">peak {peak}/min</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
