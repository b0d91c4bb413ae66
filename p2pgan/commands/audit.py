"""Audit a site's privacy from a curious neighbour's seat.

``p2pgan audit privacy --run RUN_DIR --peer ID`` runs the update attack, the discriminator-logit attack and
(when the run inserted canaries) the canary audit against site ID of a harness run, and prints the
strongest attack's AUC and TPR at 1% FPR beside the claimed epsilon and the empirical lower bound. The
run must have been made with ``--holdout FRACTION`` (non-members) and ``--audit-record``.

``p2pgan audit privacy --config PEER.yaml --non-members PATH`` audits a daemon of a real federation from
its own config: the record it kept in ``privacy.audit_dir``, its ``data`` (the members) and PATH, images it
never trained on in the format of its ``data.format`` (a shard folder for the bundled formats).

Examples:
  p2pgan harness --peers 2 --steps 300 --holdout 0.2 --audit-record --out runs/audit
  p2pgan audit privacy --run runs/audit --peer peer0 --json
  p2pgan audit privacy --config peers/site-a.yaml --non-members data/held-out --json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_kind", metavar="KIND", required=True)
    p = sub.add_parser("privacy", help="membership attacks and the canary audit against one site "
                                         "(a harness run, or a daemon from its config)")
    form = p.add_mutually_exclusive_group(required=True)
    form.add_argument("--run", type=Path, metavar="RUN_DIR", help="a harness folder (--out); with --peer")
    form.add_argument("--config", type=Path, metavar="PEER.yaml",
                      help="a daemon's config with privacy.audit_dir set; with --non-members")
    p.add_argument("--peer", metavar="ID", help="the site to audit (--run)")
    p.add_argument("--non-members", type=Path, metavar="PATH",
                   help="images the site never trained on, in its data.format (--config)")
    p.add_argument("--last-k", type=int, default=10, help="discriminator snapshots of the logit attack")
    p.add_argument("--max-steps", type=int, default=200, help="the last steps the update attack scores")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from p2pgan.errors import ConfigError
    from p2pgan.privacy.audit.run import audit, audit_config, save, save_config_result

    if args.last_k < 1 or args.max_steps < 1:
        raise ConfigError("--last-k and --max-steps must be >= 1")
    if args.config is not None:
        if args.peer is not None:
            raise ConfigError("--peer: goes with --run; --config audits the peer its config names")
        result = audit_config(args.config, args.non_members, last_k=args.last_k, max_steps=args.max_steps)
        path = save_config_result(Path(result["audit_dir"]), result)
    else:
        if args.non_members is not None:
            raise ConfigError("--non-members: goes with --config; --run reads the harness folder's holdout/")
        if args.peer is None:
            raise ConfigError("--peer: required with --run (the site of the harness run to audit)")
        if not args.run.is_dir():
            raise ConfigError(f"--run: {args.run} is not a folder (give a harness --out folder)")
        result = audit(args.run, args.peer, last_k=args.last_k, max_steps=args.max_steps)
        path = save(args.run, result)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    eps = result["epsilon_claimed"]
    claim = "no DP (epsilon infinite)" if eps is None or math.isinf(eps) else f"claimed epsilon {eps:.4g}"
    lines = [f"privacy audit of {result['peer']}: {claim}; empirical lower bound "
             f"{result['epsilon_lower'] if result['epsilon_lower'] is not None else '-'}"]
    for name, r in result["attacks"].items():
        if "auc" in r and name != "canary":
            lines.append(f"  {name}: AUC {r['auc']:.3f} [{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}], TPR at 1% FPR "
                         f"{r['tpr_at_1pct_fpr']:.3f}, at 0.1% FPR {r['tpr_at_0p1pct_fpr']:.3f} "
                         f"({r['members']} members, {r['non_members']} non-members)")
    lines.append(f"  written to {path}")
    print("\n".join(lines))
    return 0
