"""Federation certificates for mutual TLS.

  p2pgan certs init  --out DIR --federation NAME                      make the federation CA (DIR/ca.pem, DIR/ca.key)
  p2pgan certs issue --ca DIR --peer ID --out DIR [--host H]... [--ip A]...   issue a peer certificate
  p2pgan certs show  FILE.pem                                         print identity and SHA-256 fingerprint

Keys are written with permissions 0600. Copy a peer's directory (ca.pem, peer.pem, peer.key) to its
machine; put its fingerprint into the roster to pin it.

Examples:
  p2pgan certs init --out fed/ca --federation demo
  p2pgan certs issue --ca fed/ca --peer alice --out fed/alice --host alice.example.org --ip 192.168.1.20
  p2pgan certs show fed/alice/peer.pem
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    from p2pgan.logs import options_parent

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("init", help="make a federation CA", parents=[options_parent()])
    p.add_argument("--out", required=True, type=Path, help="directory for ca.pem and ca.key")
    p.add_argument("--federation", required=True, help="federation name (lowercase letters, digits, - and _)")
    p.add_argument("--force", action="store_true", help="overwrite an existing CA")
    p = sub.add_parser("issue", help="issue a peer certificate from a federation CA", parents=[options_parent()])
    p.add_argument("--ca", required=True, type=Path, help="the CA directory made by 'certs init'")
    p.add_argument("--peer", required=True, help="peer id (lowercase letters, digits, - and _)")
    p.add_argument("--out", required=True, type=Path, help="directory for ca.pem, peer.pem and peer.key")
    p.add_argument("--host", action="append", default=[], help="extra DNS name in the certificate (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="extra IP address in the certificate (repeatable)")
    p.add_argument("--force", action="store_true", help="overwrite an existing certificate and key")
    p = sub.add_parser("show", help="print a certificate's peer identity and fingerprint", parents=[options_parent()])
    p.add_argument("cert", type=Path)


def run(args: argparse.Namespace) -> int:
    from p2pgan.security import certs

    if args.action == "init":
        path = certs.init_ca(args.out, args.federation, force=args.force)
        print(f"federation {args.federation!r} CA: {path} (key {args.out / certs.CA_KEY}, mode 0600)")
        print(f"fingerprint sha256:{certs.fingerprint(path.read_bytes())}")
    elif args.action == "issue":
        files = certs.issue_peer(args.ca, args.peer, args.out, hosts=args.host, ips=args.ip, force=args.force)
        print(f"peer {args.peer!r}: {files.cert} (key {files.key}, mode 0600; CA copy {files.ca})")
        print(f"fingerprint sha256:{certs.fingerprint(files.cert.read_bytes())}")
    else:
        for line in certs.describe_certificate(args.cert):
            print(line)
    return 0
