"""Small self-contained SVG charts for experiment results (no plotting library needed)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from psg4d.utils.io import atomic_write_text

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")


def bar_chart_svg(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    unit: str,
    log_scale: bool = False,
) -> str:
    """Horizontal grouped bars: one group per label, one bar per series (values >= 0)."""
    import math

    n_groups, n_series = len(labels), len(series)
    bar_h, gap, left, right, top = 14, 10, 220, 90, 40
    group_h = n_series * bar_h + gap
    width, height = 760, top + n_groups * group_h + 30 + 18 * n_series
    values = [v for vs in series.values() for v in vs if v is not None and v > 0]
    vmax = max(values, default=1.0)
    vmin = min(values, default=1.0)

    def scale(v: float) -> float:
        if log_scale:
            lo = math.log10(vmin) - 0.3
            return (math.log10(max(v, vmin)) - lo) / (math.log10(vmax) - lo + 1e-9)
        return v / vmax

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif'"
           f" font-size='12'><rect width='100%' height='100%' fill='white'/>",
           f"<text x='10' y='22' font-size='15' font-weight='bold'>{html.escape(title)}</text>"]
    plot_w = width - left - right
    for g, label in enumerate(labels):
        y0 = top + g * group_h
        out.append(f"<text x='{left - 8}' y='{y0 + n_series * bar_h / 2 + 4}' text-anchor='end'>"
                   f"{html.escape(label)}</text>")
        for s, (name, vs) in enumerate(series.items()):
            v = vs[g]
            if v is None:
                continue
            w = max(1.0, plot_w * scale(v))
            y = y0 + s * bar_h
            out.append(f"<rect x='{left}' y='{y}' width='{w:.1f}' height='{bar_h - 2}' "
                       f"fill='{_PALETTE[s % len(_PALETTE)]}'/>")
            out.append(f"<text x='{left + w + 4:.1f}' y='{y + bar_h - 4}'>{v:.3g} {html.escape(unit)}</text>")
    ly = top + n_groups * group_h + 10
    for s, name in enumerate(series):
        out.append(f"<rect x='{left}' y='{ly + 18 * s}' width='12' height='12' fill='{_PALETTE[s % len(_PALETTE)]}'/>")
        out.append(f"<text x='{left + 18}' y='{ly + 18 * s + 10}'>{html.escape(name)}</text>")
    if log_scale:
        out.append(f"<text x='{width - 10}' y='22' text-anchor='end' fill='#666'>log scale</text>")
    out.append("</svg>")
    return "\n".join(out)


def write_bar_chart(path: str | Path, labels: Sequence[str], series: dict[str, Sequence[float]], **kw) -> Path:
    path = Path(path)
    atomic_write_text(path, bar_chart_svg(labels, series, **kw))
    return path
