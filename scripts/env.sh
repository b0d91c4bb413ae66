#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: makes (once) and activates the project's virtual
# environment in .venv. The CPU torch wheel is pinned and installed first, because an unpinned torch
# would pull several GB of CUDA wheels. A GPU user who wants their own torch build installs it into
# .venv first (or sets P2PGAN_TORCH_SPEC, e.g. "torch==2.13.0+cu130 --index-url ..."); an already
# installed torch that satisfies pyproject.toml is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.p2pgan-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "p2pgan: installing into $root/.venv (first run only) ..." >&2
    python -m pip install --quiet --upgrade pip
    if ! python -c "import torch" 2>/dev/null; then
        # shellcheck disable=SC2086
        python -m pip install --quiet ${P2PGAN_TORCH_SPEC:-torch==2.13.0}
    fi
    python -m pip install --quiet -e ".[dev,metrics]"
    touch "$stamp"
fi
