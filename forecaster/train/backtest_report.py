"""The backtest's report (``DIR/EVAL.md``) from its eval.json record."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from choice import COV80, MASE_RATIO, RECAL_TOLERANCE, WQL_RATIO

UNIT = {"H": "hour", "D": "day", "W": "week", "M": "month"}


def describe_data(r: dict, a) -> str:
    note = a.data_note or f"`{Path(r['panel']).name}`"
    return (f"{note}: {r['series']} series × {r['periods']} {UNIT[r['freq']]}s "
            f"({r['first_period']} .. {r['last_period']}).")


def report(r: dict, a) -> str:
    f = r["freq"]
    unit = UNIT[f]
    tr = r["trained"] or {}
    mem = tr.get("members", [{}])[0]
    grain = {"H": "hourly", "D": "daily", "W": "weekly", "M": "monthly"}[f]
    lines = [f"# {a.title or f'Forecaster backtest, {grain}'}", "",
             f"Written by `forecaster/train/backtest.sh` on {dt.date.today().isoformat()} ({r['seconds']:.0f} s). "
             "Do not edit by hand: re-run it.", "",
             "Data: " + describe_data(r, a) + f" Test window: the final {r['test_periods']} {unit}s "
             f"({r['test_window'][0]} .. {r['test_window'][1]}), never seen in training, validation, "
             "model choice or calibration. Event calendar: "
             + (f"`{Path(r['events']).name}`." if r["events"] else "none.")
             + (f" Hourly cells scored: `{r['open_hours']}`; clock: `{r['timezone'] or 'UTC'}`"
                + (" (the store's wall clock read as UTC)" if (r["timezone"] or "UTC") == "UTC" else "") + "."
                if f == "H" else "")
             + (f" Days scored: the trading days of `{r['open_hours']}` (a closed day's demand is known to be "
                "none, so no method is scored on it)." if f == "D" and (r.get("open_hours") or "all") != "all"
                else ""), "",
             f"Model: `{r['model']}` — " + (f"the daily model trained on `{Path(r['daily_panel']).name}`, its "
                                            "weekly-total heads answering weeks 1-4: " if r.get("daily_panel") else "")
             + f"LSTM(hidden={tr.get('hyper', {}).get('hidden')}) over a context of "
             f"{r['spec']['context']} {UNIT[r['spec']['freq']]}s, seasonal lag channels {r['spec']['periods'] or 'none'}, "
             f"{r['spec']['horizon']}-step quantile heads; best validation step {mem.get('best_step')} of "
             f"{mem.get('steps_run')} run (early stopping, most {tr.get('hyper', {}).get('steps')}), refitted on "
             f"every target before the test window. Exported to ONNX and scored through ONNX Runtime.", "",
             "Protocol: rolling origin over the test window; baselines (statsforecast) fitted on the history "
             "before the window" + (f" (ETS/Theta: the last {r['baseline_history']} {unit}s)" if r["baseline_history"]
                                    else "") + " and rolled forward without refitting; intervals read as 9 "
             "quantile levels. "
             f"MASE = mean over series of MAE(p50) / in-sample seasonal-naive MAE (season {r['mase_season']}, "
             "pre-test data); wQL = mean over the 2.5/10/50/90/97.5 % levels of 2·Σpinball/Σ|y|; coverage = "
             "share of cells inside [p10, p90] and [p1, p99]. Every method is scored on the same cells; a "
             "series' cells before its first observation are never scored.", "",
             "`lstm` is the shipped forecast, chosen by rolling-origin CV on "
             + (f"{len(r['cv_cutoffs'])} earlier windows (cut-offs {', '.join(r['cv_cutoffs'])}), each with "
                "its own LSTM trained only on data before it: the raw LSTM or a quantile average of it with "
                "one statistical model, as it is or with its spread recalibrated (factors cross-fitted across folds); "
                "the best CV score wins (a tie keeps the candidate as it is)"
                + (f"; when the winner's 80 % interval, pooled over the folds, covers outside "
                   f"{COV80[0]:.2f}–{COV80[1]:.2f} and the cross-fitted factors bring the folds nearer 0.80, its "
                   f"recalibrated form ships unless that scores more than {RECAL_TOLERANCE:g} worse "
                   "(`--coverage-recal`)" if r.get("coverage_recal") else "")
                + ". A graph's own output is recalibrated in its transformed space and the factors are multiplied "
                "into the graph's calibration, so the sidecar serves them." if r["cv_cutoffs"] else
                "no earlier windows (too little history): the raw LSTM with its validation calibration."),
             "", "## Results", "",
             "| setup | origins × cells | lstm method | lstm MASE / best | lstm wQL / best | lstm cov80 | target |",
             "|---|---|---|---|---|---|---|"]
    for s in r["setups"]:
        t = s["target"]
        L = s["models"]["lstm"]
        lines.append(f"| {f} h={s['horizon']} | {s['origins']} × {s['cells']} | {s['lstm_method']['chosen']} | "
                     f"{L['mase']:.3f} / {s['models'][t['best_baseline']['mase']]['mase']:.3f} "
                     f"({t['mase_ratio']:.3f}, {t['best_baseline']['mase']}) | "
                     f"{L['wql']:.3f} / {s['models'][t['best_baseline']['wql']]['wql']:.3f} "
                     f"({t['wql_ratio']:.3f}, {t['best_baseline']['wql']}) | {L['cov80']:.3f} | "
                     f"{'met' if t['met'] else 'not met'} |")
    lines += ["", f"Target: MASE ≤ {MASE_RATIO:.2f}× and wQL ≤ {WQL_RATIO:.2f}× of the best baseline, "
              f"80 % coverage in {COV80[0]:.2f}–{COV80[1]:.2f}.", ""]
    for g in r.get("graph_recalibration", []):
        lines += [f"Served graph `{g['model']}`: " + "; ".join(
            f"the spread factors of {e['by']} multiplied into its {'per-step' if e['head'] == 'steps' else 'aggregate'} "
            f"calibration ({'steps' if e['head'] == 'steps' else 'heads'} {', '.join(str(x + 1) if e['head'] == 'steps' else str(x) for x in e['rows'])}): "
            + " ".join(f"{x:.2f}" for x in e["factors"]) for e in g["edits"]) + ".", ""]
    for s in r["setups"]:
        lines += [f"## {f} h={s['horizon']}", "",
                  f"{s['origins']} origins (every {s['origin_step']} {unit}s), {s['cells']} scored cells, targets "
                  f"{s['targets'][0]} .. {s['targets'][1]}. `lstm` = {s['lstm_method']['chosen']}.", "",
                  "| method | MASE | wQL | 80 % cov. | 98 % cov. |", "|---|---|---|---|---|"]
        for n, m in list(s["models"].items()) + list(s["variants"].items()):
            lines.append(f"| {n} | {m['mase']:.3f} | {m['wql']:.3f} | {m['cov80']:.3f} | {m['cov98']:.3f} |")
        if s["lstm_method"].get("cv_cov80_as_is") is not None:
            lines += ["", f"80 % coverage of the chosen candidate as it is, pooled over the CV folds: "
                      f"{s['lstm_method']['cv_cov80_as_is']:.3f}."]
        if s["lstm_method"]["cv_table"]:
            lines += ["", "CV score of the best candidates (max of MASE/(0.90·best) and wQL/(0.95·best), "
                      "mean over folds; < 1 meets both): "
                      + "; ".join(f"{lab} {v:.3f}" for v, lab in s["lstm_method"]["cv_table"][:4]) + "."]
        lines.append("")
    text = "\n".join(lines)
    if a.notes and Path(a.notes).exists():
        text += "\n" + Path(a.notes).read_text()
    return text
