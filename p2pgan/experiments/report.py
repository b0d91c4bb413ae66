"""Outputs of the experiment scripts: JSON files, Markdown tables, comparison plots (PNG), report.md.

The plots put several variants (CP, DP, Rand-DP...) on one axis, each as its mean across peers with
the lowest-to-highest band, the way the paper's Figure 2 does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgan.checkpoint import atomic_write_bytes
from p2pgan.trainer.images import Series, band, save_panel_figure

#: inches per subplot of the experiment figures (a little larger than the run report's)
PANEL_SIZE = (4.6, 3.6)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    return atomic_write_bytes(Path(path), (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (floats with 4 significant digits)."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: str | os.PathLike[str], title: str, intro: Sequence[str],
                   sections: Sequence[tuple[str, str]], pictures: Sequence[str]) -> Path:
    """A one-page ``report.md``: title, intro lines, ``(heading, markdown)`` sections, then the PNGs
    (names relative to the page's folder, so the folder can be moved as a whole)."""
    lines = [f"# {title}", "", *intro, ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body, ""]
    if pictures:
        lines += ["## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in pictures] + [""]
    return atomic_write_bytes(Path(path), "\n".join(lines).encode())


def plot_variant_bands(
    path: str | os.PathLike[str],
    panels: Mapping[str, Mapping[str, Mapping[str, Series]]],
    *,
    xlabel: str,
    title: str = "",
    reference: Mapping[str, float] | None = None,
    reference_label: str = "real data",
) -> Path:
    """One subplot per panel (key = y label); in each, one colour per variant: the mean over its peers
    and the min-max band across them. ``panels[ylabel][variant][peer] = [(x, y), ...]``; ``reference``
    maps a panel to the real data's score, drawn dashed."""

    def draw(ax: Any, ylabel: str, variants: Mapping[str, Mapping[str, Series]]) -> None:
        for n, (variant, series) in enumerate(variants.items()):
            x, mean, lo, hi = band(series)
            ax.fill_between(x, lo, hi, alpha=0.2, color=f"C{n}")
            ax.plot(x, mean, color=f"C{n}", lw=1.6, label=f"{variant} ({len(series)} peers)")
        ref = (reference or {}).get(ylabel)
        if isinstance(ref, (int, float)):
            ax.axhline(ref, color="k", ls="--", lw=1.2, label=f"{reference_label}: {ref:.3g}")

    return save_panel_figure(path, panels, draw, xlabel=xlabel, title=title, panel_size=PANEL_SIZE)


def plot_lines(
    path: str | os.PathLike[str],
    panels: Mapping[str, Mapping[str, Series]],
    *,
    xlabel: str,
    title: str = "",
    log_x: bool = False,
) -> Path:
    """One subplot per panel (key = y label), one marked line per label: ``panels[ylabel][label] = [(x, y)]``."""

    def draw(ax: Any, ylabel: str, lines: Mapping[str, Series]) -> None:
        for n, (label, pts) in enumerate(lines.items()):
            xs, ys = zip(*sorted(pts)) if pts else ((), ())
            ax.plot(xs, ys, marker="o", color=f"C{n}", label=label)
        if log_x:
            ax.set_xscale("log", base=2)

    return save_panel_figure(path, panels, draw, xlabel=xlabel, title=title, panel_size=PANEL_SIZE)
