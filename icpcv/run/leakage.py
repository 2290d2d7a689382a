"""The leakage audit: what a naive scan-level split would have claimed, beside the honest one.

Both splits predict every scan once, so each model's two sets of out-of-fold predictions are
paired scan by scan; the optimism (scan-split MAE below the leave-one-monkey-out MAE) gets a
monkey-level interval and sign-flip p from the same statistics engine as everything else.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from icpcv.util import read_json

SUFFIX = " [scan split]"
#: where ``run --split scans`` puts the scan-level twin of a run
SCAN_SPLIT_DIR = "scan_split"


def leakage_summary(honest: pd.DataFrame, leaky: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                    ci_level: float = 0.95) -> dict:
    """Per model present in both tables: MAE under each split and the optimism (subject-split MAE
    minus scan-split MAE, mmHg; positive = the scan split flatters the model), its interval from
    resampling monkeys (the same monkeys for both splits) and the exact sign-flip p over monkeys'
    per-monkey MAE differences, Holm-adjusted across the models (``p_adjusted``). A model is called
    clearly optimistic under the scan split when its interval lies above zero and its adjusted p
    is below 1 - ci_level (the verdict's rule). ``honest`` and ``leaky`` are long predictions
    tables."""
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
            optimism=-comp["delta"],
            optimism_percent=100 * -comp["delta"] / res["models"][model]["mae"]["estimate"],
            optimism_ci=[None if hi is None else -hi, None if lo is None else -lo],
            p_signflip=comp["p_signflip"]))
    from icpcv.stats.inference import holm

    for row, p in zip(rows, holm([r["p_signflip"] for r in rows]) if rows else []):
        row["p_adjusted"] = float(p)
    return dict(ci_level=ci_level, n_boot=n_boot, models=rows, statement=_statement(rows, ci_level))


def _statement(rows: list[dict], ci_level: float) -> str:
    """The largest optimism with its interval and p; then which models are clearly optimistic by the
    verdict's own rule (interval above zero and Holm-adjusted p below 1 - ci_level)."""
    from icpcv.stats.analysis import _fmt, _fmt_p  # the verdict's own number formats

    if not rows:
        return "No model was run under both splits."
    pct, alpha = f"{round(ci_level * 100):g}%", 1 - ci_level
    worst = max(rows, key=lambda r: r["optimism"])
    lo, hi = worst["optimism_ci"]
    ci = f"{pct} CI {_fmt(lo)} to {_fmt(hi)}" if lo is not None else "no interval"
    if not worst["optimism"] > 0:
        return (f"The scan-level split was not more optimistic than leave-one-monkey-out for any model (largest "
                f"difference: {worst['model']}, {_fmt(worst['optimism'])} mmHg, {ci}).")
    clear = [r["model"] for r in rows if r["optimism_ci"][0] is not None and r["optimism_ci"][0] > 0
             and r["p_adjusted"] < alpha]
    verb = "is" if len(clear) == 1 else "are"
    w = worst
    return (f"A scan-level split would have reported {w['model']}'s MAE as {_fmt(w['mae_scan_split'])} mmHg "
            f"instead of {_fmt(w['mae_subject_split'])} mmHg leave-one-monkey-out: {_fmt(w['optimism'])} mmHg "
            f"({w['optimism_percent']:.0f}%) too optimistic ({ci}; sign-flip p {_fmt_p(w['p_signflip'])}, "
            f"Holm-adjusted p {_fmt_p(w['p_adjusted'])}). {len(clear)} of {len(rows)} models {verb} clearly "
            f"optimistic under it (interval above zero and Holm-adjusted p < {alpha:.2g})"
            + (f": {', '.join(clear)}." if clear else "."))


def read_scan_split_audit(run_dir: Path, record: dict | None = None) -> dict | None:
    """``leakage.json`` when it belongs to this run (same run key, twin still as audited), else None."""
    path = Path(run_dir) / "leakage.json"
    if not path.exists():
        return None
    data = read_json(path)
    record = record or read_json(Path(run_dir) / "run.json")
    twin = Path(run_dir) / data.get("scan_split_dir", SCAN_SPLIT_DIR) / "run.json"
    if data.get("run_key") != record.get("key") or not twin.exists() or \
            read_json(twin).get("key") != data.get("scan_split_run_key"):
        return None
    return data
