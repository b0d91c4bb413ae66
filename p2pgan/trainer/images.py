"""PNG outputs: sample grids (Pillow) and training curves (matplotlib, Agg backend, no display).

Files are rendered into memory and written atomically, so a reader never sees half a PNG.

- :func:`save_image_grid`: images ``[n, C, H, W]`` in [-1, 1] -> one grid, small images enlarged.
- :func:`save_points`: 2-D samples (the 8-Gaussians toy) as a scatter plot.
- :func:`save_samples`: either of the two, by the samples' shape.
- :func:`plot_panels`: curves of several peers per panel, mean line with the min-max band across peers
  (as in the paper's Figure 2).
- :func:`write_run_figures`: ``score.png``, ``losses.png`` and ``consensus.png`` from metrics records.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pgan.checkpoint import atomic_write_bytes
from p2pgan.trainer.data import to_uint8_images

#: cells of a sample grid are enlarged (nearest neighbour) to at least this many pixels
MIN_CELL_PX = 32
#: font size (pixels) of a sample grid's title
TITLE_PX = 14

Series = Sequence[tuple[float, float]]


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile images ``[n, C, H, W]`` in [-1, 1] into a ``uint8`` array ``[rows*(H+p)+p, cols*(W+p)+p, C]``."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be [n >= 1, 1 or 3, H, W], got {tuple(images.shape)}")
    x = to_uint8_images(images).transpose(0, 2, 3, 1)
    n, h, w, c = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = x[i]
    return grid


def save_image_grid(images: torch.Tensor, path: str | os.PathLike[str], *, nrow: int | None = None,
                    min_cell_px: int = MIN_CELL_PX, title: str = "") -> Path:
    """Write a PNG grid of ``images`` (in [-1, 1]); cells smaller than ``min_cell_px`` are enlarged.

    ``title`` (e.g. ``"peer0 step 800"``) is written in a white band above the grid, so a grid that is
    copied or shared alone still says what it shows."""
    from PIL import Image, ImageDraw, ImageFont

    scale = max(1, math.ceil(min_cell_px / max(images.shape[-2:])))
    grid = image_grid(images, nrow, padding=1)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)  # "L" for grey images, "RGB" for colour
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    if title:
        font = ImageFont.load_default(size=TITLE_PX)
        band = TITLE_PX + 8
        titled = Image.new(img.mode, (img.width, img.height + band), "white")
        titled.paste(img, (0, band))
        ImageDraw.Draw(titled).text((4, 3), title, fill="black", font=font)
        img = titled
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def _figure_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # never needs a display; keeps a backend the caller chose earlier
    import matplotlib.pyplot as plt

    return plt


def save_points(points: torch.Tensor, path: str | os.PathLike[str], *, reference: np.ndarray | None = None,
                title: str = "") -> Path:
    """Scatter plot of 2-D samples ``[n, 2]`` (``reference`` points, e.g. the mode centres, drawn as crosses)."""
    plt = _pyplot()
    p = points.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.5, label="generated")
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], marker="x", c="red", s=40, label="modes")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    return atomic_write_bytes(path, _figure_bytes(fig))


def save_samples(samples: torch.Tensor, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Images -> :func:`save_image_grid`; 2-D points -> :func:`save_points`."""
    if samples.dim() == 2 and samples.shape[1] == 2:
        return save_points(samples, path, title=title)
    return save_image_grid(samples, path, title=title)


def band(series: Mapping[str, Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, min, max)`` across peers on a common x grid (linear interpolation).

    The grid is the x values of the peer with the most points inside the x range all peers cover, plus
    that range's ends (peers' epochs differ slightly when shard sizes do, and the first and last
    evaluations must not fall off the band); a single point or peer gives a degenerate band.
    """
    curves = [np.asarray(sorted(s), dtype=np.float64) for s in series.values() if len(s)]
    if not curves:
        raise ValueError("no data to plot")
    lo, hi = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
    grid = max(curves, key=len)[:, 0]
    grid = np.unique(np.concatenate(([lo], grid[(grid >= lo) & (grid <= hi)], [hi]))) if lo <= hi else grid[-1:]
    ys = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def _smooth(series: Series, window: int) -> Series:
    if window <= 1 or len(series) < 2 * window:
        return series
    xs, ys = zip(*series)
    kernel = np.ones(window) / window
    ys_s = np.convolve(np.asarray(ys, dtype=np.float64), kernel, mode="valid")
    return list(zip(xs[window - 1:], ys_s.tolist()))


def save_panel_figure(path: str | os.PathLike[str], panels: Mapping[str, Any],
                      draw: Callable[[Any, str, Any], None], *, xlabel: str, title: str = "",
                      panel_size: tuple[float, float] = (4.2, 3.4)) -> Path:
    """One subplot per panel (its key is the y label), filled by ``draw(ax, ylabel, content)``; the axes
    labels, grid, legend, title and the atomic PNG write are the same for every figure of p2pgan."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]), squeeze=False)
    for ax, (ylabel, content) in zip(axes[0], panels.items()):
        draw(ax, ylabel, content)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return atomic_write_bytes(path, _figure_bytes(fig))


def plot_panels(path: str | os.PathLike[str], panels: Mapping[str, Mapping[str, Series]], *, xlabel: str,
                title: str = "", log_y: Sequence[str] = (), smooth: int = 1,
                reference: Mapping[str, float] | None = None, reference_label: str = "real data") -> Path:
    """One subplot per panel (its key is the y label); each shows every peer's curve thinly, the mean
    across peers, and the min-max band across peers. ``smooth`` is a moving-average window in points;
    ``reference`` maps a panel to a value drawn as a dashed line (the real data's score)."""
    panels = {k: v for k, v in panels.items() if any(len(s) for s in v.values())}
    if not panels:
        raise ValueError(f"{path}: nothing to plot")

    def draw(ax: Any, ylabel: str, series: Mapping[str, Series]) -> None:
        series = {peer: _smooth(s, smooth) for peer, s in series.items() if len(s)}
        for peer, s in sorted(series.items()):
            xs, ys = zip(*sorted(s))
            ax.plot(xs, ys, lw=0.6, alpha=0.35)
        x, mean, lo, hi = band(series)
        ax.fill_between(x, lo, hi, alpha=0.25, color="C0", label=f"min-max over {len(series)} peers")
        ax.plot(x, mean, color="C0", lw=1.8, label="mean")
        ref = (reference or {}).get(ylabel)
        if isinstance(ref, (int, float)) and math.isfinite(ref):
            ax.axhline(ref, color="k", ls="--", lw=1.2, label=f"{reference_label}: {ref:.3g}")
        if ylabel in log_y:
            ax.set_yscale("log")

    return save_panel_figure(path, panels, draw, xlabel=xlabel, title=title)


def _collect(records_by_peer: Mapping[str, Sequence[Mapping[str, Any]]], kind: str, x: str,
             key: str, sub: str | None = None) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for peer, records in records_by_peer.items():
        for r in records:
            if r.get("type") != kind:
                continue
            value = (r.get(key) or {}).get(sub) if sub else r.get(key)
            if isinstance(value, (int, float)) and isinstance(r.get(x), (int, float)) and math.isfinite(value):
                out.setdefault(peer, []).append((float(r[x]), float(value)))
    return out


def write_run_figures(records_by_peer: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | os.PathLike[str],
                      *, x: str = "epoch", reference: Mapping[str, float] | None = None,
                      reference_label: str = "real data") -> list[Path]:
    """From metrics records (see :mod:`p2pgan.metrics`) write the figures there is data for:
    ``score.png`` (one panel per evaluation score vs ``x``, with ``reference`` scores of real data as
    dashed lines), ``losses.png`` (generator and discriminator loss, a moving average over 1/50 of the
    steps, which its title states) and ``consensus.png`` (consensus distance, log scale). Returns the files written."""
    out_dir = Path(out_dir)
    written = []
    score_names = list(dict.fromkeys(name for rs in records_by_peer.values() for r in rs
                                     if r.get("type") == "eval" for name in (r.get("scores") or {})))
    scores = {name: _collect(records_by_peer, "eval", x, "scores", name) for name in score_names}
    if any(scores.values()):
        written.append(plot_panels(out_dir / "score.png", scores, xlabel=x, title="evaluation score",
                                   reference=reference, reference_label=reference_label))
    n_steps = max((len(rs) for rs in records_by_peer.values()), default=0)
    window = max(1, n_steps // 50)
    losses = {name: _collect(records_by_peer, "step", x, name) for name in ("loss_g", "loss_d")}
    if any(losses.values()):
        title = f"losses (moving average over {window} steps)" if window > 1 else "losses (every step, unsmoothed)"
        written.append(plot_panels(out_dir / "losses.png", losses, xlabel=x, title=title, smooth=window))
    consensus = {"consensus": _collect(records_by_peer, "step", x, "consensus")}
    if consensus["consensus"]:
        positive = all(v > 0 for s in consensus["consensus"].values() for _, v in s)
        written.append(plot_panels(out_dir / "consensus.png", consensus, xlabel=x, title="distance to neighbours' average",
                                   log_y=("consensus",) if positive else ()))
    return written
