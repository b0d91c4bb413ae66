"""Write a site's own report for one daemon of a real federation, from its metrics and checkpoints.

Reads the peer's config, then its metrics file (curves, scores, bytes, membership and churn history, the
privacy budget its records report, if any) and its newest checkpoint (a grid of samples from its
generator). Writes report.md, report.json and the PNGs into --out (default: report/ beside the metrics
file). Works while the daemon runs or after it stopped; asks nothing of the other members.

Examples:
  p2pgan report --config peers/alice.yaml
  p2pgan report --config /etc/p2pgan/alice.yaml --out /tmp/alice-report
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.yaml", help="the peer's YAML config")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder to write into (default: report/ beside the config's metrics.path)")


def run(args: argparse.Namespace) -> int:
    from p2pgan.report.site import write_site_report

    path = write_site_report(args.config, args.out)
    report_md = path.with_name("report.md")
    print(f"site report: {report_md} (numbers: {path})")
    return 0
