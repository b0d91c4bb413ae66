"""Train one GAN with M real peer daemons on this machine (mutual TLS on loopback) and write a report.

Makes a throw-away federation (CA, certificates, roster, one private data shard per peer) under --out,
starts the daemons as separate processes, shows progress, stops them cleanly (also on Ctrl-C or when a
peer dies) and writes OUT/report.json, curves (score.png, losses.png, consensus.png) and a sample grid
per peer, and report.md, one page to read: the setup, a per-peer table, the curves and the sample grids
next to real images.

Examples:
  p2pgan harness --peers 4 --steps 300 --out runs/demo
  p2pgan harness --peers 8 --variant rand-dp --dataset gaussians --steps 2000 --out runs/gaussians
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from p2pgan.harness import HarnessOptions

    d = HarnessOptions(peers=0, out=Path("."))
    parser.add_argument("--peers", type=int, default=4, help="number of peer daemons M (default 4)")
    parser.add_argument("--topology", default=d.topology, help="ring, exponential, torus, ... (dp)")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="mixing rounds t per step")
    parser.add_argument("--variant", default=d.variant, help="dp | rand-dp | cp (the topology)")
    parser.add_argument("--schedule", default=None,
                        help="exact (Algorithm 1) | overlap (the paper's implementation); default: overlap for "
                             "dp and rand-dp, exact for cp")
    parser.add_argument("--dataset", default=d.dataset, help="digits | gaussians | PATH (CIFAR-10 batches or image folder)")
    parser.add_argument("--split", default=d.split, choices=("iid", "label"), help="how the data is shared out")
    parser.add_argument("--steps", type=int, default=d.steps, help="DPOSG steps per peer")
    parser.add_argument("--out", type=Path, required=True, help="folder for the federation, state and report")
    parser.add_argument("--discovery", default=d.discovery, choices=("roster", "zeroconf"))
    parser.add_argument("--model", default=None,
                        help="mlp2d | digits | dcgan32 | resnet32 | sagan128 (default: by dataset); an image folder "
                             "is resized to the model's side (sagan128: 128)")
    parser.add_argument("--loss", default=d.loss, help="wgan-gp | ns")
    parser.add_argument("--optimizer", default=d.optimizer, help="osg | oadam | oadagrad")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="per-peer minibatch")
    parser.add_argument("--lr-g", type=float, default=None,
                        help="generator learning rate (default: the model's; 2e-4, sagan128 1e-3)")
    parser.add_argument("--lr-d", type=float, default=None,
                        help="discriminator learning rate (default: the model's; 2e-4, sagan128 4e-5)")
    parser.add_argument("--width", type=int, default=None, help="model width override")
    parser.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations (default steps/10)")
    parser.add_argument("--round-timeout", type=float, default=d.round_timeout_s, help="seconds before a late neighbour is dropped for a round")
    parser.add_argument("--wire-dtype", default=d.wire_dtype, choices=("float32", "bfloat16", "float16"),
                        help="precision of the parameters on the wire (mixing.wire_dtype); each peer's own share "
                             "of the mix stays float32")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads per peer")
    parser.add_argument("--device", default=d.device, choices=("cpu", "cuda", "auto"))
    parser.add_argument("--insecure", action="store_true", help="plain-text gRPC (test networks only)")
    parser.add_argument("--backend", default=d.backend, choices=("grpc", "torch"),
                        help="mixer: mutual-TLS gRPC gossip, or torch.distributed Gloo (needs --insecure)")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC", dest="faults",
                        help="inject a fault (repeatable; PEER = index in the sorted peer list): kill:PEER@STEP, "
                             "term:PEER@STEP, stop:PEER@STEP:SECONDS, restart:PEER@+SECONDS, join:PEER@STEP. "
                             "Example: --fault kill:1@50 --fault restart:1@+5 --round-timeout 2")
    parser.add_argument("--link", default=None, metavar="RATE:DELAY",
                        help="put every pair of peers on its own emulated link of this rate per direction and "
                             "one-way delay (p2pgan.netem), e.g. 100mbit:20ms, 1gbit:5ms, 10mbit:20ms")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                        help="override one field of every peer's config (repeatable), validated as `p2pgan peer "
                             "--set` does: --set train.init_seed=3 --set mixing.round_timeout_s=5")
    parser.add_argument("--holdout", type=float, default=d.holdout, metavar="FRACTION",
                        help="withhold this fraction of the dataset from every peer (OUT/holdout): the non-members "
                             "of `p2pgan audit privacy`")
    parser.add_argument("--audit-record", action="store_true",
                        help="each peer records what it sent and mixed and its minibatches (OUT/audit/<peer>) for "
                             "`p2pgan audit privacy` (off by default; large: dim_v floats per step and peer)")


def run(args: argparse.Namespace) -> int:
    import signal

    from p2pgan.harness import HarnessOptions, run_harness

    opts = HarnessOptions(
        peers=args.peers, out=args.out, steps=args.steps, dataset=args.dataset, topology=args.topology,
        rounds=args.rounds, variant=args.variant, schedule=args.schedule, discovery=args.discovery, split=args.split, model=args.model,
        loss=args.loss, optimizer=args.optimizer, batch_size=args.batch_size, lr_generator=args.lr_g,
        lr_discriminator=args.lr_d, width=args.width, eval_interval=args.eval_interval,
        round_timeout_s=args.round_timeout, wire_dtype=args.wire_dtype, seed=args.seed, threads=args.threads, device=args.device,
        insecure=args.insecure, backend=args.backend, faults=tuple(args.faults),
        overrides=tuple(args.overrides), link=args.link, holdout=args.holdout, audit_record=args.audit_record,
    )

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean stop as Ctrl-C: peers checkpoint and exit

    signal.signal(signal.SIGTERM, _terminate)
    import json

    report = run_harness(opts)
    reached = json.loads(report.read_text()).get("reached", "")
    print(f"p2pgan harness: {reached}; report: {report.with_name('report.md')}")
    return 0
