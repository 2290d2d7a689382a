"""The leakage audit: what a naive scan-level split would have claimed, beside the honest one.

Both splits predict every scan once, so each model's two sets of out-of-fold predictions are
paired scan by scan; the optimism (scan-split MAE below the leave-one-monkey-out MAE) gets a
monkey-level interval and sign-flip p from the same statistics engine as everything else.
"""
from __future__ import annotations

import pandas as pd

SUFFIX = " [scan split]"


def leakage_summary(honest: pd.DataFrame, leaky: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                    ci_level: float = 0.95) -> dict:
    from icpcv.stats import analyze

    rows = []
    for model in [m for m in dict.fromkeys(honest["model"]) if m in set(leaky["model"])]:
        a = honest[honest["model"] == model]
        b = leaky[leaky["model"] == model].assign(model=model + SUFFIX)
        res = analyze(pd.concat([a, b], ignore_index=True), reference=model, n_boot=n_boot, seed=seed,
                      ci_level=ci_level).to_dict()
        comp = next(c for c in res["comparisons"] if c["metric"] == "mae")
        lo, hi = comp["ci"] if comp["ci"] else (None, None)
        rows.append(dict(
            model=model, mae_subject_split=res["models"][model]["mae"]["estimate"],
            mae_scan_split=res["models"][model + SUFFIX]["mae"]["estimate"],
            optimism=-comp["delta"], optimism_ci=[None if hi is None else -hi, None if lo is None else -lo],
            p_signflip=comp["p_signflip"]))
    worst = max(rows, key=lambda r: r["optimism"]) if rows else None
    if worst is None:
        statement = "No model was run under both splits."
    elif worst["optimism"] > 0:
        statement = (f"A scan-level split would have reported {worst['model']}'s MAE as "
                     f"{worst['mae_scan_split']:.1f} mmHg instead of {worst['mae_subject_split']:.1f} mmHg "
                     f"leave-one-monkey-out: {worst['optimism']:.1f} mmHg too optimistic.")
    else:
        statement = "The scan-level split was not more optimistic than leave-one-monkey-out for any model."
    return dict(ci_level=ci_level, n_boot=n_boot, models=rows, statement=statement)
