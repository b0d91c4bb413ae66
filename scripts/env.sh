#!/usr/bin/env bash
# Makes (once) and activates the project's virtual environment in .venv.
#
#   . scripts/env.sh        in your shell: installs on first use, then activates .venv (afterwards
#                           `. .venv/bin/activate` is enough). Your shell's options (set -e, -u, pipefail)
#                           and its working directory are left as they were; a failed install returns 1.
#   scripts/test.sh, scripts/demo.sh source it the same way.
#
# The CPU torch wheel is pinned and installed first, because an unpinned torch would pull several GB of
# CUDA wheels. A GPU user who wants their own torch build installs it into .venv first (or sets
# P2PGAN_TORCH_SPEC, e.g. "torch==2.13.0+cu130 --index-url ..."); an already installed torch that
# satisfies pyproject.toml is kept.

_p2pgan_install() (
    # a subshell: strict options and the cd stay in here, never in the shell that sources this file
    set -euo pipefail
    cd "$1"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    stamp=.venv/.p2pgan-installed
    if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
        exit 0
    fi
    log=.venv/install.log
    echo "p2pgan: installing into $1/.venv (first run only; log in $log) ..." >&2
    # set -e does not apply inside a list guarded by ||, hence the explicit && chain: a failed torch
    # install must never fall through to an unpinned one pulled in by the project's dependencies.
    {
        .venv/bin/python -m pip install --upgrade pip &&
            { .venv/bin/python -c "import torch" 2>/dev/null ||
                .venv/bin/python -m pip install ${P2PGAN_TORCH_SPEC:-torch==2.13.0}; } &&
            .venv/bin/python -m pip install -e ".[dev,metrics]"
    } >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        echo "p2pgan: installation failed; the whole log is $1/$log" >&2
        exit 1
    }
    touch "$stamp"
)

_p2pgan_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if _p2pgan_install "$_p2pgan_root"; then
    . "$_p2pgan_root/.venv/bin/activate"
    unset -f _p2pgan_install
    unset _p2pgan_root
else
    unset -f _p2pgan_install
    unset _p2pgan_root
    return 1 2>/dev/null || exit 1  # `return` when sourced, `exit` when run as a script
fi
