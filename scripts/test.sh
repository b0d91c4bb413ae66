#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
exec python -m pytest -q "$@"
