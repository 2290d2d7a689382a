"""The leakage audit's statistics: what a naive scan-level split would have claimed, beside the honest one.

Both splits predict every scan once, so each model's two sets of out-of-fold predictions are
paired scan by scan; the optimism (scan-split MAE below the leave-one-monkey-out MAE) gets a
monkey-level interval and sign-flip p from the same statistics engine as everything else.
"""
from __future__ import annotations

import math

import pandas as pd

from icpcv.stats.analysis import analyze
from icpcv.stats.inference import holm
from icpcv.util import fmt_num, fmt_p

SUFFIX = " [scan split]"


def leakage_summary(honest: pd.DataFrame, leaky: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                    ci_level: float = 0.95) -> dict:
    """Per model present in both tables: MAE under each split and the optimism (subject-split MAE
    minus scan-split MAE, mmHg; positive = the scan split flatters the model), its interval from
    resampling monkeys (the same monkeys for both splits) and the exact sign-flip p over monkeys'
    per-monkey MAE differences, Holm-adjusted across the models (``p_adjusted``). A model is called
    clearly optimistic under the scan split when its interval lies above zero and its adjusted p
    is below 1 - ci_level (the verdict's rule). ``honest`` and ``leaky`` are long predictions
    tables."""
    rows = []
    for model in [m for m in dict.fromkeys(honest["model"]) if m in set(leaky["model"])]:
        a = honest[honest["model"] == model]
        b = leaky[leaky["model"] == model].assign(model=model + SUFFIX)
        res = analyze(pd.concat([a, b], ignore_index=True), reference=model, n_boot=n_boot, seed=seed,
                      ci_level=ci_level)
        comp = res.comparison(model + SUFFIX, "mae")
        lo, hi = (None if v is None or not math.isfinite(v) else v for v in (comp.ci or (None, None)))
        honest_mae = res.models[model].mae.estimate
        rows.append(dict(
            model=model, mae_subject_split=honest_mae, mae_scan_split=res.models[model + SUFFIX].mae.estimate,
            optimism=-comp.delta, optimism_percent=100 * -comp.delta / honest_mae,
            optimism_ci=[None if hi is None else -hi, None if lo is None else -lo],
            p_signflip=comp.p_signflip))
    for row, p in zip(rows, holm([r["p_signflip"] for r in rows]) if rows else []):
        row["p_adjusted"] = float(p)
    return dict(ci_level=ci_level, n_boot=n_boot, models=rows, statement=statement(rows, ci_level))


def statement(rows: list[dict], ci_level: float) -> str:
    """The largest optimism with its interval and p; then which models are clearly optimistic by the
    verdict's own rule (interval above zero and Holm-adjusted p below 1 - ci_level)."""
    if not rows:
        return "No model was run under both splits."

    def fmt(x):
        return fmt_num(x, 1, "n/a")

    pct, alpha = f"{round(ci_level * 100):g}%", 1 - ci_level
    worst = max(rows, key=lambda r: r["optimism"])
    lo, hi = worst["optimism_ci"]
    ci = f"{pct} CI {fmt(lo)} to {fmt(hi)}" if lo is not None else "no interval"
    if not worst["optimism"] > 0:
        return (f"The scan-level split was not more optimistic than leave-one-monkey-out for any model (largest "
                f"difference: {worst['model']}, {fmt(worst['optimism'])} mmHg, {ci}).")
    clear = [r["model"] for r in rows if r["optimism_ci"][0] is not None and r["optimism_ci"][0] > 0
             and r["p_adjusted"] < alpha]
    verb = "is" if len(clear) == 1 else "are"
    w = worst
    return (f"A scan-level split would have reported {w['model']}'s MAE as {fmt(w['mae_scan_split'])} mmHg "
            f"instead of {fmt(w['mae_subject_split'])} mmHg leave-one-monkey-out: {fmt(w['optimism'])} mmHg "
            f"({w['optimism_percent']:.0f}%) too optimistic ({ci}; sign-flip p {fmt_p(w['p_signflip'], 'n/a', True)}, "
            f"Holm-adjusted p {fmt_p(w['p_adjusted'], 'n/a', True)}). {len(clear)} of {len(rows)} models {verb} "
            f"clearly optimistic under it (interval above zero and Holm-adjusted p < {alpha:.2g})"
            + (f": {', '.join(clear)}." if clear else "."))
