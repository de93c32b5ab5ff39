#!/usr/bin/env bash
# Backtest the committed models against seasonal-naive and AutoETS and write
# forecaster/EVAL.md (about 6-8 minutes on 2 cores; AutoETS dominates).
# Extra arguments go to evaluate.py (see --help).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$repo/forecaster/train/setup_venv.sh"
cd "$repo"
exec "${SHARDCAST_VENV:-$repo/.venv}/bin/python" forecaster/train/evaluate.py "$@"
