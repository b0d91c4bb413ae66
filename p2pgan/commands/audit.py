"""Audit a site's privacy from a curious neighbour's seat.

``p2pgan audit privacy --run RUN_DIR --peer ID`` runs the update attack, the discriminator-logit attack and
(when the run inserted canaries) the canary audit against site ID of a harness run, and prints the
strongest attack's AUC and TPR at 1% FPR beside the claimed epsilon and the empirical lower bound. The
run must have been made with ``--holdout FRACTION`` (non-members) and ``--audit-record``.

Examples:
  p2pgan harness --peers 2 --steps 300 --holdout 0.2 --audit-record --out runs/audit
  p2pgan audit privacy --run runs/audit --peer peer0 --json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_kind", metavar="KIND", required=True)
    p = sub.add_parser("privacy", help="membership attacks and the canary audit against one site of a harness run")
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="a harness folder (--out)")
    p.add_argument("--peer", required=True, metavar="ID", help="the site to audit")
    p.add_argument("--last-k", type=int, default=10, help="discriminator snapshots of the logit attack")
    p.add_argument("--max-steps", type=int, default=200, help="the last steps the update attack scores")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from p2pgan.errors import ConfigError
    from p2pgan.privacy.audit.run import audit, save

    if not args.run.is_dir():
        raise ConfigError(f"--run: {args.run} is not a folder (give a harness --out folder)")
    if args.last_k < 1 or args.max_steps < 1:
        raise ConfigError("--last-k and --max-steps must be >= 1")
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
