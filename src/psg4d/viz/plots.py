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


def histograms_png(
    path: str | Path,
    panels: dict[str, dict[str, Sequence[float]]],
    *,
    title: str,
    bins: int = 40,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """One panel per entry of ``panels`` (``{panel title: {series label: values}}``), each with the
    series' normalised histograms overlaid as outlines over ``value_range``; written as a PNG."""
    import numpy as np
    from PIL import Image, ImageDraw

    panel_w, panel_h, pad, top = 460, 300, 40, 40
    width = pad + len(panels) * (panel_w + pad)
    height = top + panel_h + 2 * pad + 18 * max((len(s) for s in panels.values()), default=1)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, 12), title, fill="black")
    lo, hi = value_range
    edges = np.linspace(lo, hi, bins + 1)
    for p, (name, series) in enumerate(panels.items()):
        x0, y0 = pad + p * (panel_w + pad), top
        draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], outline="#888888")
        draw.text((x0 + 4, y0 + 4), name, fill="black")
        hists = {k: np.histogram(np.clip(np.asarray(v, dtype=float), lo, hi), bins=edges)[0] for k, v in series.items()}
        peak = max((h.max() / max(h.sum(), 1) for h in hists.values()), default=1.0) or 1.0
        for s, (label, h) in enumerate(hists.items()):
            colour = _PALETTE[s % len(_PALETTE)]
            frac = h / max(h.sum(), 1) / peak  # [bins], tallest bar of all series = panel height
            pts = []
            for b in range(bins):
                xa = x0 + panel_w * b / bins
                xb = x0 + panel_w * (b + 1) / bins
                y = y0 + panel_h - (panel_h - 20) * frac[b]
                pts += [(xa, y), (xb, y)]
            draw.line(pts, fill=colour, width=2)
            ly = y0 + panel_h + pad + 18 * s
            draw.rectangle([x0, ly, x0 + 12, ly + 12], fill=colour)
            vals = np.asarray(series[label], dtype=float)
            draw.text((x0 + 18, ly), f"{label}: mean {vals.mean():.3f}, n={vals.size}" if vals.size else label,
                      fill="black")
        for frac_x, value in ((0.0, lo), (0.5, (lo + hi) / 2), (1.0, hi)):
            draw.text((x0 + frac_x * panel_w - (20 if frac_x == 1.0 else 0), y0 + panel_h + 4), f"{value:g}",
                      fill="#444444")
    path = Path(path)
    from psg4d.utils.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return path
