#!/usr/bin/env bash
# The main job on one machine: 4 real peer daemons (separate processes) train one digits GAN over
# mutual-TLS gRPC on loopback, each on its own private shard of scikit-learn's bundled 8x8 digits,
# mixing parameters with their ring neighbours (DP-OAdam). About 3-5 minutes on 2 CPU cores.
#
#   scripts/demo.sh                       # defaults below
#   scripts/demo.sh --peers 8 --variant rand-dp --steps 1500 --out runs/rand-dp
#
# Extra arguments go to `p2pgan harness` (see `p2pgan harness --help`); later flags win.
# It writes OUT/report.md (open this one: setup, per-peer table, real-data reference, curves, samples),
# OUT/report.json, OUT/score.png (IS / FID vs epoch, band across peers, real digits' score dashed),
# OUT/losses.png, OUT/consensus.png, OUT/samples-peer*.png and OUT/samples-real.png. Its last line says
# what the run reached, e.g. "mean IS 6.84 (held-out real digits: 9.54); mean FID 25.8 (real: 4.41)".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
for ((i = 1; i <= $#; i++)); do
    if [ "${!i}" = "--out" ]; then j=$((i + 1)); out="${!j}"; fi
done
python -m p2pgan harness --peers 4 --dataset digits --variant dp --topology ring --rounds 1 \
    --steps 800 --eval-interval 100 --batch-size 32 --out "$out" "$@"
