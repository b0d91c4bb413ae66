"""scripts/env.sh, sourced the way the READMEs say, leaves the user's shell as it was (options, folder)."""

from __future__ import annotations

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
