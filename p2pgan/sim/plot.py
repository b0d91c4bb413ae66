"""PNG figures of a simulation: metric curves over steps, and generator samples for ``gaussians``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def write_png(path: Path, result: dict[str, Any], samples: torch.Tensor | None = None) -> None:
    """Plot ``result["history"]`` (distance, consensus; log scale) and optional 2-D ``samples`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = result["history"]
    panels = 2 if samples is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    steps = [h["step"] for h in history]
    for key in ("distance", "consensus", "hq_fraction"):
        ys = [h.get(key) for h in history]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float)) and y > 0]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"{result['algorithm']} / {result['optimizer']} on {result['problem']}, "
                 f"{result['peers']} peers, {result['topology']} t={result['rounds']}", fontsize=9)
    ax.legend()
    if samples is not None:
        ax = axes[0][1]
        xy = samples.detach().cpu()
        ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_title(f"samples of the average model: {result.get('modes')} modes, "
                     f"{100 * result.get('hq_fraction', 0):.0f}% high quality", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
