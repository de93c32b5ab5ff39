#!/usr/bin/env bash
# Train the committed forecaster models (shardcast_hourly, shardcast_daily) on the
# Online Retail II shard panels — by the same backtest that writes forecaster/EVAL.md,
# so the shipped weights are the evaluated ones — copy them into forecaster/models/
# and check ONNX parity. Deterministic: re-running gives the same weights.
#
#   forecaster/train/train.sh            # OUT=/tmp/dir keeps the backtest runs elsewhere
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
exec "$repo/forecaster/train/eval.sh" --ship
