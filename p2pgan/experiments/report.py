"""Outputs of the experiment scripts: JSON files, plain-text tables and comparison plots (PNG).

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
from p2pgan.trainer.images import Series, _figure_bytes, _pyplot, band


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


def plot_variant_bands(
    path: str | os.PathLike[str],
    panels: Mapping[str, Mapping[str, Mapping[str, Series]]],
    *,
    xlabel: str,
    title: str = "",
) -> Path:
    """One subplot per panel (key = y label); in each, one colour per variant: the mean over its peers
    and the min-max band across them. ``panels[ylabel][variant][peer] = [(x, y), ...]``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, variants) in zip(axes[0], panels.items()):
        for n, (variant, series) in enumerate(variants.items()):
            x, mean, lo, hi = band(series)
            ax.fill_between(x, lo, hi, alpha=0.2, color=f"C{n}")
            ax.plot(x, mean, color=f"C{n}", lw=1.6, label=f"{variant} ({len(series)} peers)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return atomic_write_bytes(Path(path), _figure_bytes(fig))


def plot_lines(
    path: str | os.PathLike[str],
    panels: Mapping[str, Mapping[str, Series]],
    *,
    xlabel: str,
    title: str = "",
    log_x: bool = False,
) -> Path:
    """One subplot per panel (key = y label), one marked line per label: ``panels[ylabel][label] = [(x, y)]``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels.items()):
        for n, (label, pts) in enumerate(lines.items()):
            xs, ys = zip(*sorted(pts)) if pts else ((), ())
            ax.plot(xs, ys, marker="o", color=f"C{n}", label=label)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return atomic_write_bytes(Path(path), _figure_bytes(fig))
