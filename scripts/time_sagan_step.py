#!/usr/bin/env python
"""Time one training step of the full-size sagan128 (the paper's SAGAN) on one device, without the network.

One step is what a peer daemon computes per DPOSG step, less the gossip: the game's field (G forward, the
discriminator's loss on real and generated images with its gradient penalty, both players' gradients)
and the OAdam update of the whole parameter vector, through the same ``GANGame`` and ``DPOSG`` the daemon
uses (with an identity mixer). The real images are random, which does not change the cost. Prints one
line per timed step and a summary, and writes JSON (default runs/time_sagan_step.json): the median and
each step's seconds, the field's share, peak GPU memory, parameter count, device and versions.

    PYTHONPATH=$PWD python scripts/time_sagan_step.py                      # batch 64, cuda if available
    PYTHONPATH=$PWD python scripts/time_sagan_step.py --device cpu --batch 1 --width 8 --steps 1   # a smoke run

The paper's runs used a total batch of 256 over its learners; ``--batch`` is the per-peer batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from p2pgan.algorithm import DPOSG
from p2pgan.mixing import IdentityMixer
from p2pgan.trainer.game import GANGame
from p2pgan.trainer.losses import LOSS_NAMES
from p2pgan.trainer.models import MODEL_DEFAULTS, count_parameters, make_models

MODEL = "sagan128"
#: untimed steps first: the first DPOSG step takes two gradients (Algorithm 1's start), and allocator,
#: cuDNN algorithm search and caches warm up
WARMUP_STEPS = 2


def time_steps(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g, d, k, shape = make_models(MODEL, width=args.width, device=device, seed=0)
    real = torch.rand(args.batch, *shape) * 2 - 1
    game = GANGame(g, d, args.loss, real, latent_dim=k, batch_size=args.batch, seed=0, device=device)
    defaults = MODEL_DEFAULTS[MODEL]
    lr = game.lr_vector(defaults.lr_generator, defaults.lr_discriminator).to(device)
    algo = DPOSG(game.point().to(device), IdentityMixer(1), "oadam", lr, schedule="overlap", betas=(0.5, 0.9))
    for _ in range(args.warmup):
        algo.step(game)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds, field_seconds = [], []
    for i in range(args.steps):
        start = time.perf_counter()
        info = algo.step(game)
        sync()
        seconds.append(time.perf_counter() - start)
        field_seconds.append(info.field_seconds)
        last = game.last
        print(f"  step {i + 1}: {seconds[-1]:.3f} s (field {info.field_seconds:.3f} s), "
              f"loss_d {last.loss_d if last else float('nan'):.4g}, loss_g {last.loss_g if last else float('nan'):.4g}",
              flush=True)
    finite = bool(torch.isfinite(algo.z).all())
    n = count_parameters(g, d)
    return {
        "benchmark": "time_sagan_step",
        "model": MODEL,
        "width": args.width or 64,
        "batch": args.batch,
        "loss": args.loss,
        "optimizer": "oadam",
        "parameters": {"generator": count_parameters(g), "discriminator": count_parameters(d), "total": n,
                       "float32_mib": 4 * n / 2**20},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "warmup_steps": args.warmup,
        "step_seconds": seconds,
        "field_seconds": field_seconds,
        "median_step_s": statistics.median(seconds),
        "median_field_s": statistics.median(field_seconds),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "finite": finite,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="per-peer minibatch (default 64)")
    p.add_argument("--width", type=int, default=None, help="model width (default: the paper's 64)")
    p.add_argument("--loss", default="wgan-gp", choices=LOSS_NAMES)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto: cuda if available")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=WARMUP_STEPS, help=f"untimed steps first (default {WARMUP_STEPS})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=Path("runs/time_sagan_step.json"))
    args = p.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = time_steps(args)
    print(f"{MODEL} width {report['width']}, batch {args.batch}, {args.loss}, {report['device_name']} "
          f"({report['device']}): median step {report['median_step_s']:.3f} s, field {report['median_field_s']:.3f} s"
          + (f", peak GPU memory {report['peak_gpu_memory_gib']:.1f} GiB" if report["peak_gpu_memory_gib"] else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
