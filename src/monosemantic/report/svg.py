"""Inline SVG charts: the site must open from file:// with no plotting library or network.

Each function returns markup ready to drop into a template; colours and fonts come from the
site's CSS classes (`.chart .bar`, `.chart .s0` …) so a designer restyles them in one place.
"""

from __future__ import annotations

import math
from typing import Sequence

from markupsafe import Markup, escape

W, H = 360, 180                      # viewBox; the CSS scales the chart to its column
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 34


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round-numbered ticks covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{int(v):,}" if math.isfinite(v) and v == int(v) and abs(v) < 1e7 else f"{v:.3g}"


class _Frame:
    """Linear scales from data to the plot area, and the axes drawn around it."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float], top: float = TOP):
        self.x0, self.x1 = x if x[1] > x[0] else (x[0] - 0.5, x[0] + 0.5)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0], y[0] + 1)
        self.top = top  # a legend above the plot moves it down

    def px(self, v: float) -> float:
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - self.top - BOTTOM)

    def axes(self, xlabel: str, ylabel: str, xticks: Sequence[float] | None = None) -> str:
        parts = [f'<line class="axis" x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}"/>']
        for t in _ticks(self.y0, self.y1, 5):
            y = self.py(t)
            parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>'
                         f'<text class="tick" x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in xticks if xticks is not None else _ticks(self.x0, self.x1):
            x = self.px(t)
            parts.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 13}" text-anchor="middle">{_fmt(t)}</text>')
        parts.append(f'<text class="label" x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 4}" text-anchor="middle">'
                     f'{escape(xlabel)}</text>'
                     f'<text class="label" transform="translate(11 {(self.top + H - BOTTOM) / 2:.0f}) rotate(-90)" '
                     f'text-anchor="middle">{escape(ylabel)}</text>')
        return "".join(parts)


def _svg(body: str, title: str) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
                  f'<title>{escape(title)}</title>{body}</svg>')


def bars(counts: Sequence[float], lo: float, hi: float, xlabel: str, ylabel: str, title: str) -> Markup:
    """A histogram of equal-width bins over [lo, hi]; each bar's count shows on hover."""
    if not counts:
        return Markup("")
    f = _Frame((lo, hi), (0, max(max(counts), 1)))
    width = (hi - lo) / len(counts)
    rects = []
    for i, c in enumerate(counts):
        a, b = lo + i * width, lo + (i + 1) * width
        x, y = f.px(a), f.py(c)
        rects.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(f.px(b) - x - 0.6, 0.6):.1f}" '
                     f'height="{f.py(0) - y:.1f}"><title>{_fmt(a)}–{_fmt(b)}: {_fmt(c)}</title></rect>')
    return _svg(f.axes(xlabel, ylabel) + '<g class="bars">' + "".join(rects) + "</g>", title)


SERIES = 6  # distinct series styles (.s0 … .s5 in the CSS, and as many marker shapes)
_SHAPES = [None,                                                  # circle
           [(-1, -1), (1, -1), (1, 1), (-1, 1)],                  # square
           [(0, -1.25), (1.1, 0.85), (-1.1, 0.85)],               # triangle
           [(0, -1.35), (1.35, 0), (0, 1.35), (-1.35, 0)],        # diamond
           [(0, 1.25), (1.1, -0.85), (-1.1, -0.85)],              # triangle, pointing down
           [(-0.5, -1.2), (0.5, -1.2), (1.2, 0), (0.5, 1.2), (-0.5, 1.2), (-1.2, 0)]]  # hexagon


def frontier(series: dict[str, Sequence[tuple[float, float, str]]], xlabel: str, ylabel: str,
             title: str) -> Markup:
    """One line per series (an architecture), its points joined in the given order (dictionary size)
    and labelled; series differ in colour (`.s<k>`) and marker shape, and a legend above names them."""
    series = {name: [(x, y, label) for x, y, label in pts if _finite(x) and _finite(y)] for name, pts in series.items()}
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return Markup("")
    legend, top = _legend(list(series))
    xs, ys = [p[0] for pts in series.values() for p in pts], [p[1] for pts in series.values() for p in pts]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.1 or 1, (max(ys) - min(ys)) * 0.15 or 0.05
    f = _Frame((max(min(xs) - pad_x, 0), max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y), top)
    body = [f.axes(xlabel, ylabel)]
    for k, (name, pts) in enumerate(series.items()):
        path = " ".join(f"{'M' if i == 0 else 'L'}{f.px(x):.1f},{f.py(y):.1f}" for i, (x, y, _) in enumerate(pts))
        marks = "".join(_marker(k, f.px(x), f.py(y), f"{name} {label}: {_fmt(x)}, {_fmt(y)}")
                        + f'<text class="point-label" x="{f.px(x) + 6:.1f}" y="{f.py(y) - 6:.1f}">{escape(label)}</text>'
                        for x, y, label in pts)
        body.append(f'<g class="series" data-series="{escape(name)}">'
                    f'<path class="line s{k % SERIES}" d="{path}"/>{marks}</g>')
    return _svg(legend + "".join(body), title)


def _marker(k: int, x: float, y: float, tip: str, r: float = 4) -> str:
    """Series k's marker shape at (x, y), with `tip` on hover."""
    shape, cls, tip = _SHAPES[k % SERIES], f"point s{k % SERIES}", f"<title>{escape(tip)}</title>"
    if shape is None:
        return f'<circle class="{cls}" cx="{x:.1f}" cy="{y:.1f}" r="{r}">{tip}</circle>'
    points = " ".join(f"{x + dx * r * 0.85:.1f},{y + dy * r * 0.85:.1f}" for dx, dy in shape)
    return f'<polygon class="{cls}" points="{points}">{tip}</polygon>'


def _legend(names: list[str]) -> tuple[str, float]:
    """The series' markers and names in rows above the plot; returns the markup and where the plot starts."""
    parts, x, y = [], LEFT, TOP + 4
    for k, name in enumerate(names):
        width = 22 + 5.6 * len(name)
        if x > LEFT and x + width > W - RIGHT:
            x, y = LEFT, y + 13
        parts.append(_marker(k, x + 4, y, name, r=3.5)
                     + f'<text class="key-label" x="{x + 11:.1f}" y="{y + 3:.1f}">{escape(name)}</text>')
        x += width
    return '<g class="legend">' + "".join(parts) + "</g>", y + 12


def distributions(series: dict[str, Sequence[float]], lo: float, hi: float, bins: int, xlabel: str,
                  title: str) -> Markup:
    """Overlaid step histograms, normalised to fractions so groups of different sizes compare."""
    hists = {}
    for name, values in series.items():
        vals = [v for v in values if _finite(v)]
        if vals:
            counts = [0] * bins
            for v in vals:
                counts[min(max(int((v - lo) / (hi - lo) * bins), 0), bins - 1)] += 1
            hists[name] = [c / len(vals) for c in counts]
    if not hists:
        return Markup("")
    f = _Frame((lo, hi), (0, max(max(h) for h in hists.values())))
    width = (hi - lo) / bins
    body = [f.axes(xlabel, "fraction of units")]
    for k, (name, h) in enumerate(hists.items()):
        d = f"M{f.px(lo):.1f},{f.py(0):.1f}"
        for i, c in enumerate(h):
            d += f" V{f.py(c):.1f} H{f.px(lo + (i + 1) * width):.1f}"
        body.append(f'<path class="step s{k}" d="{d} V{f.py(0):.1f}"><title>{escape(name)}</title></path>')
        body.append(f'<rect class="key s{k}" x="{W - RIGHT - 92}" y="{TOP + 2 + 13 * k}" width="10" height="3"/>'
                    f'<text class="key-label" x="{W - RIGHT - 78}" y="{TOP + 7 + 13 * k}">{escape(name)}</text>')
    return _svg("".join(body), title)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
