#!/usr/bin/env bash
# Train the committed forecaster models on the Online Retail II shard panel and
# check ONNX parity. Deterministic: re-running gives the same weights.
#
#   forecaster/train/train.sh                 # both models into forecaster/models/
#   OUT=/tmp/models forecaster/train/train.sh # elsewhere
#
# About 20-30 minutes on 2 CPU cores. Extra arguments go to both train.py runs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$repo/forecaster/train/setup_venv.sh"
py=${SHARDCAST_VENV:-$repo/.venv}/bin/python
out=${OUT:-$repo/forecaster/models}
data=$repo/data/online_retail
cd "$repo"

# hourly model: 1 h and the next-24-hour total (1 d)
"$py" forecaster/train/train.py --panel "$data/shard_hourly.csv.gz" --freq H \
  --id-col shard_id --target-col lines --events "$data/events.csv" \
  --context 24 --hidden 16 --head 16 --steps 3000 --refit \
  --calibrate-hours Sun-Fri:08-17 \
  --name shardcast_hourly --out-dir "$out" \
  --data-note "data/online_retail/shard_hourly.csv.gz (UCI Online Retail II, CC BY 4.0)" "$@"

# daily model: 1 d, weekly totals for weeks 1-4 (1 w) and the 28-day total (1 mo)
"$py" forecaster/train/train.py --panel "$data/shard_daily.csv.gz" --freq D \
  --id-col shard_id --target-col lines --events "$data/events.csv" \
  --context 28 --hidden 16 --head 16 --steps 2000 --eval-every 100 --weight-power 1.0 --refit \
  --name shardcast_daily --out-dir "$out" \
  --data-note "data/online_retail/shard_daily.csv.gz (UCI Online Retail II, CC BY 4.0)" "$@"

SHARDCAST_MODELS="$out" "$py" -m pytest -q forecaster/train/test_parity.py
