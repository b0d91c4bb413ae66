"""Export a peer's trained generator for use outside p2pgan.

A daemon checkpoint holds the whole game state (both parameter sequences, optimizer moments, RNG states)
in p2pgan's verified container. :func:`export_generator` takes the point X a peer publishes, writes the
generator's ``state_dict`` to ``.safetensors`` (needs the ``safetensors`` package) or ``.pt`` (a plain
dict that ``torch.load(path, weights_only=True)`` opens), and a JSON file beside it
(``<out>.json``) naming the architecture, its arguments, the step and how to rebuild the module::

    from p2pgan.trainer.models import make_models
    G = make_models("digits", latent_dim=32, channels=1, width=None)[0]
    G.load_state_dict(torch.load("generator.pt", weights_only=True)["state_dict"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from p2pgan.checkpoint import atomic_write_bytes, load_checkpoint
from p2pgan.errors import ConfigError
from p2pgan.trainer.game import layout_digest
from p2pgan.trainer.models import make_models

FORMATS = (".pt", ".safetensors")


def _models_matching(model: str, latent_dim: int | None, width: int | None, digest: str, source: str) -> tuple[Any, int, int | None]:
    """Rebuild the generator whose game layout matches ``digest`` (the channel count is not in the config
    for the bundled datasets, so both are tried)."""
    for channels in (None, 1, 3):
        g, d, k, _shape = make_models(model, latent_dim=latent_dim, channels=channels, width=width)
        if layout_digest(g, d) == digest:
            return g, k, channels
    raise ConfigError(f"{source}: its parameter layout is not model {model!r} with width {width}, latent_dim "
                      f"{latent_dim}; give the config of the run that wrote it")


def load_generator(checkpoint: Path, *, model: str, latent_dim: int | None = None,
                   width: int | None = None) -> tuple[Any, int, int | None, dict[str, Any]]:
    """The generator of ``checkpoint`` (its published parameters X), its latent size, its image channels,
    and the checkpoint's state."""
    state = load_checkpoint(checkpoint)
    try:
        x = state["algorithm"]["x"]
        digest = state["layout_digest"]
    except (KeyError, TypeError):
        raise ConfigError(f"{checkpoint}: not a peer daemon checkpoint (no algorithm.x / layout_digest)") from None
    g, k, channels = _models_matching(model, latent_dim, width, digest, str(checkpoint))
    row = x.reshape(-1)
    n = sum(p.numel() for p in g.parameters())
    with torch.no_grad():  # the vector is [generator | discriminator], parameters in module order
        offset = 0
        for p in g.parameters():
            p.copy_(row[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    assert offset == n
    return g, k, channels, state


def export_generator(checkpoint: Path, out: Path, *, model: str, latent_dim: int | None = None,
                     width: int | None = None) -> tuple[Path, Path]:
    """Write the generator of ``checkpoint`` to ``out`` and its description to ``out`` + ``.json``."""
    if out.suffix not in FORMATS:
        raise ConfigError(f"--out: {out.name!r} must end in {' or '.join(FORMATS)}")
    g, k, channels, state = load_generator(checkpoint, model=model, latent_dim=latent_dim, width=width)
    tensors = {name: t.detach().cpu().contiguous() for name, t in g.state_dict().items()}
    info = {"architecture": model, "arguments": {"latent_dim": k, "channels": channels, "width": width},
            "step": int(state.get("step", 0)), "peer": state.get("peer"), "federation": state.get("federation"),
            "checkpoint": str(checkpoint), "output_range": "[-1, 1] for images",
            "rebuild": f"p2pgan.trainer.models.make_models({model!r}, latent_dim={k}, channels={channels}, "
                       f"width={width})[0]"}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".safetensors":
            try:
                from safetensors.torch import save as save_safetensors
            except ImportError:
                raise ConfigError("--out: .safetensors needs the safetensors package (pip install safetensors); "
                                  "or write .pt") from None
            data = save_safetensors(tensors, metadata={k_: json.dumps(v) for k_, v in info.items()})
        else:
            import io

            buf = io.BytesIO()
            torch.save({"state_dict": tensors, **info}, buf)
            data = buf.getvalue()
        atomic_write_bytes(out, data)
        side = out.with_name(out.name + ".json")
        atomic_write_bytes(side, (json.dumps(info, indent=2) + "\n").encode())
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {out} ({exc.strerror or exc})") from None
    return out, side
