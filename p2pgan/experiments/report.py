"""Outputs of the experiment scripts: JSON files, Markdown tables, comparison plots (PNG), report.md.

:func:`plot_seed_bands` puts several settings (CP, DP, Rand-DP...) on one axis, each as its mean over
repeated runs (seeds) with the band across seeds and, as the paper's Figure 2 does, the band across
the peers of a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2pgan.checkpoint import atomic_write_bytes
from p2pgan.trainer.images import Series, save_panel_figure

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


#: one run's curve: the x values and, at each x, one value per peer
PeerCurve = tuple[Sequence[float], Sequence[Sequence[float]]]


def plot_seed_bands(
    path: str | os.PathLike[str],
    panels: Mapping[str, Mapping[str, Sequence[PeerCurve]]],
    *,
    xlabel: str,
    title: str = "",
) -> Path:
    """One subplot per panel (key = y label); in each, one colour per setting, over its runs (seeds):
    the line is the mean over seeds of the peers' mean, the shaded band the lowest-to-highest seed, and
    the dotted lines the band across peers within a run (the peers' min and max, averaged over seeds).
    ``panels[ylabel][setting] = [(xs, values[eval][peer]) for each seed]``; the runs share their xs."""

    def draw(ax: Any, ylabel: str, settings: Mapping[str, Sequence[PeerCurve]]) -> None:
        for n, (label, runs) in enumerate(settings.items()):
            xs = np.asarray(runs[0][0], dtype=np.float64)
            vals = [np.asarray(v, dtype=np.float64) for _, v in runs]  # each [evals, peers]
            if any(len(x) != len(xs) for x, _ in runs):
                raise ValueError(f"{path}: {label}: the runs were evaluated at different x")
            seed_means = np.stack([v.mean(axis=1) for v in vals])  # [seeds, evals]
            color = f"C{n}"
            ax.fill_between(xs, seed_means.min(axis=0), seed_means.max(axis=0), alpha=0.25, color=color, lw=0)
            ax.plot(xs, seed_means.mean(axis=0), color=color, lw=1.6, label=f"{label} ({len(runs)} seeds)")
            for edge in (np.stack([v.min(axis=1) for v in vals]), np.stack([v.max(axis=1) for v in vals])):
                ax.plot(xs, edge.mean(axis=0), color=color, lw=0.8, ls=":")

    return save_panel_figure(path, panels, draw, xlabel=xlabel, title=title, panel_size=PANEL_SIZE)
