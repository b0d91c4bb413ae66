"""The package as a user gets it: sdist and wheel build, the wheel installs into a clean venv and runs.

Slow (a fresh venv gets torch and the other dependencies: about a minute here), still part of CI. torch
is constrained to the build already installed (the CPU wheel), as scripts/env.sh does, so pip never
pulls several GB of CUDA wheels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import p2pgan

ROOT = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "runs", "out",
                               ".pytest_cache")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build`` on a copy of the source tree (the wheel is built from the sdist, as pip would)."""
    pytest.importorskip("build")
    src = tmp_path_factory.mktemp("src") / "p2pgan"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    out = src.parent / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheel = next(out.glob("p2pgan-*.whl"))
    sdist = next(out.glob("p2pgan-*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.timeout(330)
def test_sdist_and_wheel_hold_what_users_need(dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"p2pgan-{p2pgan.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    for needed in ("p2pgan/py.typed", "p2pgan/wire/v1/gossip_pb2.py", "p2pgan/wire/v1/gossip_pb2_grpc.py",
                   "p2pgan/wire/health.py", "p2pgan/cli.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    entry = zipfile.ZipFile(dists["wheel"]).read(f"p2pgan-{p2pgan.__version__}.dist-info/entry_points.txt").decode()
    assert "p2pgan = p2pgan.cli:main" in entry
    members = {n.split("/", 1)[1] for n in tarfile.open(dists["sdist"]).getnames() if "/" in n}
    for needed in ("protos/p2pgan/wire/v1/gossip.proto", "peers/p2pgan-peer@.service", "peers/alice.yaml",
                   "scripts/env.sh", "README.md", "pyproject.toml"):
        assert needed in members, needed


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_into_a_clean_venv_and_runs(dists: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")  # the CPU build this suite runs on
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), str(dists["wheel"])],
                          capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exe = venv / "bin" / "p2pgan"

    def run(*argv: str) -> str:
        p = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        return p.stdout

    assert run("--version").strip() == f"p2pgan {p2pgan.__version__}"
    assert run("selftest", "--peers", "2").startswith("selftest OK: 2 peers")
    where = subprocess.run([str(py), "-c", "import p2pgan; print(p2pgan.__file__)"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path, env=env, check=True).stdout
    assert where.startswith(str(venv))  # the installed wheel ran, not the source tree
