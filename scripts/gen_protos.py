"""Regenerate the committed gRPC stubs from protos/ (``python scripts/gen_protos.py``).

The proto paths mirror the package (protos/p2pgan/wire/v1/gossip.proto has ``package p2pgan.wire.v1``),
so the generated ``import`` lines work unpatched. ``tests/test_wire_protos.py`` regenerates into a
temporary directory and fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTOS = ("p2pgan/wire/v1/gossip.proto",)
#: files generated per proto (suffixes replacing ``.proto``)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run grpc_tools.protoc for every proto into ``out_dir``; return the generated files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS,
    ]
    subprocess.run(cmd, check=True)
    return [out_dir / p.replace(".proto", s) for p in PROTOS for s in GENERATED_SUFFIXES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
