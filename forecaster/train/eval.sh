#!/usr/bin/env bash
# Backtest the forecaster on the dev data (Online Retail II shard panels) at every
# frequency the data allows, with backtest.sh, and write forecaster/EVAL.md and
# forecaster/train/eval_dev.json from those runs. The hourly and daily runs train
# shardcast_hourly / shardcast_daily; `--ship` copies them into forecaster/models/
# (then run the parity tests). About 20-30 minutes on 2 cores.
#
#   forecaster/train/eval.sh [--ship] [--rescore-hourly | --rescore]   # OUT=/tmp/dir keeps the runs elsewhere
#
# --rescore-hourly keeps the hourly run already in OUT (made by this script's command) and
# only re-runs its choice and scoring (backtest --rescore): the hourly training is most of
# the time. --rescore does that for every run in OUT (seconds).
#
# Monthly is not run: the data holds 24 months, and a 12-month test window with a
# 12-month validation window leaves no training history.
set -euo pipefail
ship=0 rescore_h=() rescore_dw=()
for arg in "$@"; do
  case $arg in
    --ship) ship=1 ;;
    --rescore-hourly) rescore_h=(--rescore) ;;
    --rescore) rescore_h=(--rescore) rescore_dw=(--rescore) ;;
    *) echo "eval.sh: unknown flag $arg (use --ship, --rescore-hourly, --rescore)" >&2; exit 2 ;;
  esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$repo/forecaster/train/setup_venv.sh"
py=${SHARDCAST_VENV:-$repo/.venv}/bin/python
out=${OUT:-/tmp/shardcast-eval}
data=data/online_retail  # relative to the repo (cd below): eval_dev.json names no machine's paths
note="Online Retail II shard panel (UCI, CC BY 4.0; 14 shards = region × category, target = invoice lines per"
cd "$repo"
common=(--id-col shard_id --target-col lines --events "$data/events.csv")
bt=forecaster/train/backtest.sh
intro=$(cat forecaster/train/eval_intro.md)
# the data's timestamps are the UK store's wall clock (BST in summer): read them in its zone (a kept hourly
# run that was trained before the zone was read is re-scored on the clock it was trained on: UTC = wall clock)
tz=Europe/London
if [ ${#rescore_h[@]} -gt 0 ]; then
  tz=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("timezone") or "UTC")' "$out/hourly/eval.json")
fi
$bt --panel "$data/shard_hourly.csv.gz" --freq H "${common[@]}" --open-hours Sun-Fri:08-17 --timezone "$tz" \
  --name shardcast_hourly --out "$out/hourly" "${rescore_h[@]}" --data-note "$note hour; data/online_retail/shard_hourly.csv.gz)"
# daily: D h=1 may also be answered by the hourly models' 24-hour totals (the CV chooses); the store's
# trading days only are scored (it is closed on Saturdays: a day known to sell nothing is no forecast)
$bt --panel "$data/shard_daily.csv.gz" --freq D "${common[@]}" --hourly-run "$out/hourly" --open-hours Sun-Fri:08-17 \
  --name shardcast_daily --out "$out/daily" "${rescore_dw[@]}" --data-note "$note day; data/online_retail/shard_daily.csv.gz)"
# weekly: the daily model's weekly-total heads (7x the training samples of a weekly model); 4 CV folds
# (a weekly model is cheap) reach back to the previous autumn, the season of the test window
$bt --panel "$data/shard_weekly.csv.gz" --daily-panel "$data/shard_daily.csv.gz" --freq W "${common[@]}" \
  --name shardcast_weekly_from_daily --out "$out/weekly" --cv-folds 4 "${rescore_dw[@]}" \
  --data-note "$note Monday-based week; data/online_retail/shard_weekly.csv.gz, with shard_daily.csv.gz for the daily model)"
"$py" forecaster/train/merge_eval.py "$out/hourly" "$out/daily" "$out/weekly" \
  --title "Forecaster evaluation (dev data: Online Retail II)" --intro "$intro" \
  --missing "M: the data holds 24 months; a 12-month test window plus a 12-month validation window leave nothing to train on" \
  --notes forecaster/train/eval_notes.md --out forecaster/EVAL.md --json forecaster/train/eval_dev.json
if [ $ship = 1 ]; then
  for n in shardcast_hourly shardcast_daily; do
    d=$out/$([ $n = shardcast_hourly ] && echo hourly || echo daily)/models
    # the daily run writes the hourly graph again when the CV recalibrated its 24-hour head (daily h=1)
    if [ $n = shardcast_hourly ] && [ -f "$out/daily/models/hourly/$n.onnx" ]; then d=$out/daily/models/hourly; fi
    cp "$d/$n.onnx" "$d/$n.json" "$d/$n.parity.json" "$d/$n.weights.npz" forecaster/models/
  done
  "$py" forecaster/train/merge_eval.py "$out/hourly" "$out/daily" "$out/weekly" --out /dev/null \
    --model-card forecaster/models/MODEL_CARD.md --models-dir forecaster/models > /dev/null
  "$py" forecaster/train/parity.py --dst forecaster/models/shardcast_hourly.json  # features across DST changes
  "$py" -m pytest -q forecaster/train/test_parity.py forecaster/train/test_timezone.py
fi
