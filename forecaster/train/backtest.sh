#!/usr/bin/env bash
# Train and backtest the forecaster on any long-format demand panel.
#
#   forecaster/train/backtest.sh --panel FILE --freq H|D|W|M [--id-col C] [--time-col C] \
#       [--target-col C] [--test-periods N] [--events FILE] --out DIR
#
# Writes DIR/EVAL.md, DIR/eval.json and DIR/models/. See backtest.py --help for
# every option (CV folds, step count, open hours, ...).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${SHARDCAST_VENV:-$repo/.venv}
if [ ! -x "$venv/bin/python" ]; then
  "$repo/forecaster/train/setup_venv.sh"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$venv/bin/python" "$repo/forecaster/train/backtest.py" "$@"
