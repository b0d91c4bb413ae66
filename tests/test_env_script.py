"""scripts/env.sh, sourced the way the READMEs say, leaves the user's shell as it was (options, folder)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
cd "$1"
before="$(set +o; shopt -p)"
. "$2/scripts/env.sh"
echo "rc=$?"
after="$(set +o; shopt -p)"
[ "$before" = "$after" ] && echo "options unchanged"
echo "pwd=$(pwd)"
echo "python=$(command -v python)"
false  # with set -e left behind by env.sh this would end the shell here
echo "still here"
"""


@pytest.mark.timeout(600)  # a fresh checkout installs .venv on first use
def test_sourcing_env_sh_keeps_the_shell_options_and_folder(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "-c", _SCRIPT, "bash", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=590)
    out = proc.stdout.splitlines()
    assert "rc=0" in out and "options unchanged" in out, proc.stdout + proc.stderr
    assert f"pwd={tmp_path}" in out
    assert f"python={ROOT}/.venv/bin/python" in out
    assert out[-1] == "still here"


def _plan(tmp_path: Path, *, gpu: bool, spec: str | None = None) -> list[str]:
    """What scripts/env.sh would run to install torch in a fresh checkout (one pip argument list a line)."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "env.sh").write_text((ROOT / "scripts" / "env.sh").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    # a real nvidia-smi lists "GPU 0: ..."; without a driver it fails (and /proc/driver/nvidia is absent)
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n" if gpu else
                   "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\n"
                   "exit 9\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "P2PGAN_NVIDIA_PROC": str(tmp_path / "no-such-proc")}
    if spec is not None:
        env["P2PGAN_TORCH_SPEC"] = spec
    proc = subprocess.run(["bash", str(root / "scripts" / "env.sh"), "--plan"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (root / ".venv").exists()  # a plan installs nothing
    return proc.stdout.splitlines()


def test_without_a_gpu_torch_comes_from_the_cpu_index_then_the_plain_index(tmp_path: Path) -> None:
    first, fallback = _plan(tmp_path, gpu=False)
    assert first.split() == ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu",
                             "--timeout", "5", "--retries", "0"]  # an unreachable index fails within seconds
    assert fallback.split() == ["torch==2.13.0"]  # a mirror that has the CPU wheel (as pip's config may say)


def test_with_a_gpu_torch_is_the_default_cuda_build_and_the_spec_wins(tmp_path: Path) -> None:
    assert _plan(tmp_path / "gpu", gpu=True) == ["torch==2.13.0"]
    spec = "torch==2.13.0+cu130 --index-url https://download.pytorch.org/whl/cu130"
    assert _plan(tmp_path / "spec-gpu", gpu=True, spec=spec) == [spec]
    assert _plan(tmp_path / "spec-cpu", gpu=False, spec=spec) == [spec]


def test_an_installed_torch_is_kept() -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "env.sh"), "--plan"], capture_output=True, text=True,
                          env={**os.environ, "P2PGAN_TORCH_SPEC": "torch==0.0"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith("keep torch 2."), line  # even a spec does not replace a torch already in .venv
