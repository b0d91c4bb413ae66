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
    log=.venv/install.log
    echo "p2pgan: installing into $root/.venv (first run only; log in $log) ..." >&2
    # set -e does not apply inside a list guarded by ||, hence the explicit && chain: a failed torch
    # install must never fall through to an unpinned one pulled in by the project's dependencies.
    {
        python -m pip install --upgrade pip &&
            { python -c "import torch" 2>/dev/null ||
                python -m pip install ${P2PGAN_TORCH_SPEC:-torch==2.13.0}; } &&
            python -m pip install -e ".[dev,metrics]"
    } >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        echo "p2pgan: installation failed; the whole log is $log" >&2
        exit 1
    }
    touch "$stamp"
fi
