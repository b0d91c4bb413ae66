#!/usr/bin/env bash
# Makes (once) and activates the project's virtual environment in .venv.
#
#   . scripts/env.sh        in your shell: installs on first use, then activates .venv (afterwards
#                           `. .venv/bin/activate` is enough). Your shell's options (set -e, -u, pipefail)
#                           and its working directory are left as they were; a failed install returns 1.
#   scripts/env.sh --plan   prints how torch would be installed here (one pip argument list a line, tried
#                           in order until one succeeds, or "keep ..."), and installs nothing.
#   scripts/test.sh, scripts/demo.sh source it the same way.
#
# torch is pinned and installed first, because an unpinned torch would pull several GB of CUDA wheels:
# - where no NVIDIA GPU is present (no working `nvidia-smi -L`, nothing under /proc/driver/nvidia/gpus),
#   the CPU build from the PyTorch CPU wheel index, and, when that index cannot be reached (a mirror, a
#   proxy), the same pin from the plain index (the first try gives up after a few seconds);
# - with a GPU, the default (CUDA) build from the plain index;
# - an already installed torch that satisfies pyproject.toml is kept;
# - P2PGAN_TORCH_SPEC (e.g. "torch==2.13.0+cu130 --index-url ...") wins over all of these.

#: the torch the project is tested with
_P2PGAN_TORCH_PIN="torch==2.13.0"
#: the PyTorch project's index of CPU-only wheels
_P2PGAN_CPU_INDEX="https://download.pytorch.org/whl/cpu"

_p2pgan_has_gpu() {
    # where the NVIDIA driver publishes its GPUs (P2PGAN_NVIDIA_PROC points elsewhere in tests)
    local proc="${P2PGAN_NVIDIA_PROC:-/proc/driver/nvidia/gpus}" listed
    # the whole output first: `nvidia-smi -L | grep -q` could fail under pipefail when grep stops early
    if command -v nvidia-smi >/dev/null 2>&1 && listed="$(nvidia-smi -L 2>/dev/null)"; then
        case "$listed" in
            GPU*) return 0 ;;
        esac
    fi
    [ -d "$proc" ] && [ -n "$(ls -A "$proc" 2>/dev/null)" ]
}

_p2pgan_torch_plan() {
    # $1: the venv's python. One line of pip install arguments per attempt, or "keep <version>".
    local version
    if version="$("$1" -c "import torch; print(torch.__version__)" 2>/dev/null)"; then
        echo "keep torch $version"
    elif [ -n "${P2PGAN_TORCH_SPEC:-}" ]; then
        echo "$P2PGAN_TORCH_SPEC"
    elif _p2pgan_has_gpu; then
        echo "$_P2PGAN_TORCH_PIN"
    else
        echo "$_P2PGAN_TORCH_PIN --index-url $_P2PGAN_CPU_INDEX --timeout 5 --retries 0"
        echo "$_P2PGAN_TORCH_PIN"
    fi
}

_p2pgan_install_torch() {
    # tries each planned pip command in turn; succeeds at the first that works
    local line
    while IFS= read -r line; do
        case "$line" in
            keep*) return 0 ;;
        esac
        echo "p2pgan: pip install $line" >&2
        # shellcheck disable=SC2086  # the line is a list of pip arguments
        if "$1" -m pip install $line; then
            return 0
        fi
    done < <(_p2pgan_torch_plan "$1")
    return 1
}

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
            _p2pgan_install_torch .venv/bin/python &&
            .venv/bin/python -m pip install -e ".[dev,metrics]"
    } >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        echo "p2pgan: installation failed; the whole log is $1/$log" >&2
        exit 1
    }
    touch "$stamp"
)

_p2pgan_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_p2pgan_cleanup() {
    unset -f _p2pgan_install _p2pgan_install_torch _p2pgan_torch_plan _p2pgan_has_gpu _p2pgan_cleanup
    unset _p2pgan_root _P2PGAN_TORCH_PIN _P2PGAN_CPU_INDEX
}
if [ "${1:-}" = "--plan" ]; then
    if [ -x "$_p2pgan_root/.venv/bin/python" ]; then
        _p2pgan_torch_plan "$_p2pgan_root/.venv/bin/python"
    else
        _p2pgan_torch_plan false  # no environment yet: no torch to keep
    fi
    _p2pgan_cleanup
elif _p2pgan_install "$_p2pgan_root"; then
    . "$_p2pgan_root/.venv/bin/activate"
    _p2pgan_cleanup
else
    _p2pgan_cleanup
    return 1 2>/dev/null || exit 1  # `return` when sourced, `exit` when run as a script
fi
