"""``analyze``: monkey-level statistics of out-of-fold predictions -> stats.json.

See docs/statistics.md for every number in the output and its formula.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icpcv.stats import agreement, bootstrap
from icpcv.stats.bootstrap import CI_METHODS, Estimand, K
from icpcv.stats.inference import holm, signflip_test
from icpcv.stats.io import REQUIRED_COLUMNS, to_jsonable, validate_predictions

#: Interval method used when ``ci_method=None``: ``"auto"`` picks, for each
#: quantity, the method whose coverage of the nominal 95% interval came
#: closest to 95% in the calibration study (docs/calibration.md; G = 14
#: monkeys with the real 19-261 scans each, clustered heavy-tailed errors).
DEFAULT_CI_METHOD = "auto"

#: What ``"auto"`` uses per quantity ("delta" = paired model-minus-reference
#: differences). Single-model MAE/RMSE are scale quantities whose sampling
#: distribution is right-skewed with few effective clusters; the bootstrap-t
#: follows that skew best (still below nominal: see docs/calibration.md).
AUTO_METHODS = {
    "delta": "t",
    "bias": "t",
    "r2": "t",
    "pearson_r": "t",
    "ba_slope": "t",
    "mae": "studentized",
    "rmse": "studentized",
    "mae_subject_mean": "studentized",
}

#: Metrics with a cluster-bootstrap interval in ``models.<name>``.
MODEL_METRICS = ("mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean")
#: Metrics compared against the reference model.
COMPARISON_METRICS = ("mae", "rmse")

MIN_SUBJECTS = 10
MIN_SCANS = 3


@dataclass
class AnalysisResult:
    """Result of :func:`analyze`. ``to_dict()`` is the content of stats.json."""

    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready copy: plain floats/ints/str/lists/dicts, NaN -> None."""
        return to_jsonable(copy.deepcopy(self.data))

    @property
    def verdict(self) -> str:
        return self.data["verdict"]

    @property
    def warnings(self) -> list:
        return self.data["warnings"]

    @property
    def comparisons(self) -> list:
        return self.data["comparisons"]

    @property
    def models(self) -> dict:
        return self.data["models"]

    def __getitem__(self, key):
        return self.data[key]


def _label_sort_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _ci(lo_hi):
    return [float(lo_hi[0]), float(lo_hi[1])]


def _fmt(x, digits=1):
    if x is None or not np.isfinite(x):
        return "n/a"
    s = f"{x:.{digits}f}"
    return "0.0" if s in ("-0.0", "-0.00") else s


def _fmt_p(p):
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}"


def _decomposition(e, codes, G):
    """Split the mean squared error into a per-subject offset and tracking part.

    With subject means ē_g and pooled mean ē over N scans:

    * ``mse`` = (1/N) Σ e²
    * ``between_subject`` (offset) = (1/N) Σ_g n_g ē_g²  — error a per-monkey
      constant would explain; itself = ``global_bias_sq`` (ē²) +
      ``offset_spread`` ((1/N) Σ_g n_g (ē_g - ē)²)
    * ``within_subject`` (tracking) = (1/N) Σ_g Σ_i (e_gi - ē_g)²
    * ``between_fraction`` + ``within_fraction`` = 1.
    """
    n = np.bincount(codes, minlength=G).astype(float)
    s = np.bincount(codes, weights=e, minlength=G)
    N = e.size
    has = n > 0
    means = np.zeros(G)
    means[has] = s[has] / n[has]
    mse = float(np.mean(e**2))
    between = float(np.sum(n * means**2) / N)
    within = float(np.sum((e - means[codes]) ** 2) / N)
    ebar = float(e.mean())
    spread = float(np.sum(n * (means - ebar) ** 2) / N)
    frac = (lambda x: x / mse) if mse > 0 else (lambda x: float("nan"))
    return {
        "mse": mse,
        "between_subject": between,
        "within_subject": within,
        "between_fraction": frac(between),
        "within_fraction": frac(within),
        "global_bias_sq": ebar**2,
        "offset_spread": spread,
    }


def _verdict(comparisons, model_stats, reference, ref_present, n_subjects, ci_level, unit):
    level = f"{round(ci_level * 100):g}%"
    mae_cmp = [c for c in comparisons if c["metric"] == "mae"]
    if not ref_present:
        return (f"The reference model {reference} is not in the predictions, so no model "
                f"was compared against it ({n_subjects} monkey{'' if n_subjects == 1 else 's'}).")
    if not mae_cmp:
        return (f"Only the reference model {reference} is present; there is nothing to "
                f"compare it with ({n_subjects} monkey{'' if n_subjects == 1 else 's'}).")
    def rank(c):  # best = lowest MAE over all of the model's scans
        v = model_stats[c["model"]]["mae"]["estimate"]
        return np.inf if not np.isfinite(v) else v

    best = min(mae_cmp, key=rank)
    lo, hi = (np.nan if v is None else v for v in best["ci"])
    reduction = -best["delta"]
    red_lo, red_hi = -hi, -lo
    finite = [abs(x) for x in (reduction, red_lo, red_hi) if np.isfinite(x)]
    digits = 2 if finite and max(finite) < 1 else 1
    g = best["n_subjects"]
    tail = (f"sign-flip p {_fmt_p(best['p_signflip'])}, Holm-adjusted p "
            f"{_fmt_p(best['p_adjusted'])}; {g} monkey{'' if g == 1 else 's'}")
    evidence = (np.isfinite(hi) and hi < 0 and best["p_adjusted"] is not None
                and np.isfinite(best["p_adjusted"]) and best["p_adjusted"] < 0.05)
    if evidence:
        return (f"The {best['model']} lowers MAE by {_fmt(reduction, digits)} {unit} against "
                f"{reference} ({level} CI {_fmt(red_lo, digits)} to {_fmt(red_hi, digits)} {unit}; "
                f"{tail}).")
    if np.isfinite(best["delta"]) and best["delta"] >= 0:  # no model is even nominally better
        who = "the other model's" if len(mae_cmp) == 1 else "every model's"
        return (f"There is no evidence that any model beats {reference} on MAE: {who} MAE is at or above "
                f"{reference}'s; the closest, {best['model']}, changes MAE by +{_fmt(best['delta'], digits)} "
                f"{unit} ({level} CI {_fmt(lo, digits)} to {_fmt(hi, digits)} {unit}; {tail}).")
    return (f"There is no evidence that any model beats {reference} on MAE: the best, "
            f"{best['model']}, changes MAE by {_fmt(best['delta'], digits)} {unit} "
            f"({level} CI {_fmt(lo, digits)} to {_fmt(hi, digits)} {unit}; {tail}).")


def build_blocks(df, models, reference, G, center):
    """Stacked per-subject statistics and the list of estimands.

    One K-column block per model (all its scans) and, for each model other
    than ``reference``, two blocks computed on the (subject, scan_id) pairs
    both models share: the model's and the reference's. ``df`` needs the
    integer subject code column ``_g``.
    Returns ``(S, estimands, model_frames, pairs)``.
    """
    blocks = []
    estimands = []
    model_frames = {}
    for m in models:
        sub = df[df["model"] == m]
        model_frames[m] = sub
        b = len(blocks) * K
        blocks.append(bootstrap.subject_sums(sub["_g"], sub["y_true"], sub["y_pred"], G, center))
        for metric in MODEL_METRICS + ("ba_slope",):
            estimands.append(Estimand(("model", m, metric), metric, b))
    pairs = {}
    if reference is not None:
        ref_df = model_frames[reference]
        for m in models:
            if m == reference:
                continue
            joined = model_frames[m].merge(ref_df[["subject", "scan_id", "y_true", "y_pred"]],
                                           on=["subject", "scan_id"], suffixes=("", "_ref"))
            joined = joined.sort_values(["_g", "scan_id"], kind="stable")
            pairs[m] = joined
            bm = len(blocks) * K
            blocks.append(bootstrap.subject_sums(joined["_g"], joined["y_true"],
                                                 joined["y_pred"], G, center))
            br = len(blocks) * K
            blocks.append(bootstrap.subject_sums(joined["_g"], joined["y_true_ref"],
                                                 joined["y_pred_ref"], G, center))
            for metric in COMPARISON_METRICS:
                estimands.append(Estimand(("delta", m, metric), metric, bm, br))
                estimands.append(Estimand(("pair_model", m, metric), metric, bm))
                estimands.append(Estimand(("pair_ref", m, metric), metric, br))
    return np.hstack(blocks), estimands, model_frames, pairs


def analyze(predictions, reference="ols_iop", n_boot=10000, seed=0, ci_level=0.95,
            ci_method=None, *, audit_failed=False, unit="mmHg", n_perm=100_000):
    """Monkey-level statistics of out-of-fold predictions.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Long format, one row per (model, scan): ``fold, subject, scan_id,
        model, y_true, y_pred`` (+ optional ``iop``). Validated with
        :func:`icpcv.stats.io.validate_predictions`.
    reference : str
        Model every other model is compared with (default ``ols_iop``).
    n_boot : int
        Number of cluster-bootstrap resamples (subjects drawn with replacement).
    seed : int
        Seed for the resamples and any Monte Carlo sign-flip test.
    ci_level : float
        Confidence level of every interval.
    ci_method : {"percentile", "bca", "studentized", "t"} or None
        Interval method; None -> :data:`DEFAULT_CI_METHOD` (chosen by the
        calibration study).
    audit_failed : bool
        The leakage audit failed: adds a warning.
    unit : str
        Unit of y for the verdict sentence.

    Returns
    -------
    AnalysisResult
        ``to_dict()`` gives the stats.json content (schema in docs/statistics.md).
    """
    method = DEFAULT_CI_METHOD if ci_method is None else ci_method
    if method not in CI_METHODS + ("auto",):
        raise ValueError(f"unknown ci_method {method!r}; choose from "
                         f"{', '.join(CI_METHODS + ('auto',))}")
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")

    df = validate_predictions(pd.DataFrame(predictions), source="predictions")
    warnings = []

    subjects = sorted(df["subject"].unique(), key=_label_sort_key)
    G = len(subjects)
    code_of = {s: i for i, s in enumerate(subjects)}
    df["_g"] = df["subject"].map(code_of).astype(np.intp)
    models = list(dict.fromkeys(df["model"]))
    center = float(df["y_true"].mean())

    # ---- warnings about the design --------------------------------------
    if G < MIN_SUBJECTS:
        warnings.append(f"Only {G} subjects (fewer than {MIN_SUBJECTS}): subject-level "
                        f"intervals and tests have little precision.")
    scans_per_subject = df.groupby("subject")["scan_id"].nunique()
    few = [s for s in subjects if scans_per_subject[s] < MIN_SCANS]
    if few:
        warnings.append("Subjects with fewer than {} scans: {}.".format(
            MIN_SCANS, ", ".join(f"{s} ({scans_per_subject[s]})" for s in few)))
    all_keys = set(zip(df["subject"], df["scan_id"]))
    per_model_keys = {m: set(zip(g["subject"], g["scan_id"])) for m, g in df.groupby("model")}
    for m in models:
        missing = len(all_keys - per_model_keys[m])
        if missing:
            warnings.append(
                f"Model {m} has predictions for {len(per_model_keys[m])} of the {len(all_keys)} "
                f"scans present for some model ({missing} missing); paired comparisons use the "
                f"scans both models share.")
    folds_per_subject = df.groupby(["model", "subject"])["fold"].nunique()
    multi = folds_per_subject[folds_per_subject > 1]
    if len(multi):
        shown = ", ".join(f"{s} ({m})" for (m, s) in multi.index[:10])
        warnings.append(f"Subjects appear in more than one fold for a model: {shown}; "
                        f"leave-one-monkey-out should give each monkey exactly one test fold.")
    if audit_failed:
        warnings.append("The leakage audit FAILED: information may leak between training and "
                        "test monkeys, so these out-of-fold numbers may be optimistic.")
    ref_present = reference in models
    if not ref_present:
        warnings.append(f"Reference model {reference!r} not found (models: {', '.join(models)}); "
                        f"no comparisons were made.")

    S, estimands, model_frames, pairs = build_blocks(df, models, reference if ref_present else None,
                                                     G, center)

    rng = np.random.default_rng(seed)
    counts = bootstrap.counts_from_indices(bootstrap.resample_indices(G, n_boot, rng), G)

    def method_for(key):
        if method != "auto":
            return method
        return AUTO_METHODS["delta" if key[0] == "delta" else key[2]]

    need_student = any(method_for(em.key) == "studentized" for em in estimands)
    out = bootstrap.run_bootstrap(S, estimands, counts, studentized=need_student)
    index = {em.key: j for j, em in enumerate(estimands)}
    n_invalid = {em.key: int(np.sum(~np.isfinite(out.boot[:, j]))) for j, em in enumerate(estimands)}

    def est_ci(key):
        j = index[key]
        m = method_for(key)
        return {"estimate": float(out.estimate[j]),
                "ci": _ci(bootstrap.interval(out, j, m, ci_level)), "method": m}

    bad = sorted({k[1] + "/" + k[2] for k, v in n_invalid.items() if v > 0 and k[0] == "model"
                  and k[2] in MODEL_METRICS})
    if bad:
        warnings.append("Some bootstrap resamples gave an undefined metric and were dropped "
                        f"from its interval: {', '.join(bad)}.")

    # ---- per-model results ------------------------------------------------
    model_out = {}
    for m in models:
        sub = model_frames[m]
        y, p, g = sub["y_true"].to_numpy(), sub["y_pred"].to_numpy(), sub["_g"].to_numpy()
        res = {"n_scans": int(len(sub)), "n_subjects": int(sub["subject"].nunique())}
        for metric in MODEL_METRICS:
            res[metric] = est_ci(("model", m, metric))
        ba = agreement.bland_altman(p, y, ci_level=ci_level)
        ba["note"] = ("loa_ci and proportional_bias ci/p treat scans as independent (too "
                      "narrow with repeated scans per monkey); see bland_altman_repeated and "
                      "proportional_bias.ci_cluster (subject-level).")
        ba["proportional_bias"]["ci_cluster"] = est_ci(("model", m, "ba_slope"))["ci"]
        ba["proportional_bias"]["ci_cluster_method"] = method_for(("model", m, "ba_slope"))
        res["bland_altman"] = ba
        res["bland_altman_repeated"] = agreement.bland_altman_repeated(p, y, sub["subject"])
        rc = agreement.rmcorr(y, p, sub["subject"], ci_level=ci_level)
        res["rmcorr"] = rc
        e = p - y
        per = {}
        gs = sub.groupby("subject", sort=False)
        for s in sorted(gs.groups, key=_label_sort_key):
            es = e[g == code_of[s]]
            per[s] = {"mae": float(np.mean(np.abs(es))), "bias": float(np.mean(es)),
                      "n": int(es.size)}
        res["per_subject"] = per
        dec = _decomposition(e, g, G)
        dec["within_subject_correlation"] = rc["r"]
        dec["within_subject_correlation_ci"] = rc["ci"]
        res["decomposition"] = dec
        model_out[m] = res

    # ---- comparisons -------------------------------------------------------
    comparisons = []
    for i, (m, joined) in enumerate(pairs.items()):
        if len(joined) == 0:
            warnings.append(f"Model {m} shares no scans with the reference {reference}; "
                            f"its comparison is empty (all values null).")
        e_m = (joined["y_pred"] - joined["y_true"]).to_numpy()
        e_r = (joined["y_pred_ref"] - joined["y_true_ref"]).to_numpy()
        g = joined["_g"].to_numpy()
        cnt = np.bincount(g, minlength=G)
        has = cnt > 0
        for k, metric in enumerate(COMPARISON_METRICS):
            loss_m = np.abs(e_m) if metric == "mae" else e_m**2
            loss_r = np.abs(e_r) if metric == "mae" else e_r**2
            diff = (np.bincount(g, weights=loss_m - loss_r, minlength=G)[has] / cnt[has])
            test = signflip_test(diff, n_perm=n_perm, seed=[seed, i, k])
            d = est_ci(("delta", m, metric))
            comparisons.append({
                "model": m, "reference": reference, "metric": metric,
                "delta": d["estimate"], "ci": d["ci"],
                "p_signflip": test["p"], "p_adjusted": None,
                "estimate_model": float(out.estimate[index[("pair_model", m, metric)]]),
                "estimate_reference": float(out.estimate[index[("pair_ref", m, metric)]]),
                "n_subjects": int(has.sum()), "n_scans": int(len(joined)),
                "signflip_method": test["method"], "signflip_statistic": test["statistic"],
                "ci_method": d["method"],
            })
    adj = holm([c["p_signflip"] for c in comparisons])
    for c, a in zip(comparisons, adj):
        c["p_adjusted"] = float(a)

    verdict = _verdict(comparisons, model_out, reference, ref_present, G, ci_level, unit)
    data = {
        "n_subjects": G,
        "n_scans": int(df["scan_id"].nunique()),
        "n_rows": int(len(df)),
        "subjects": list(subjects),
        "ci_level": float(ci_level),
        "ci_method": method,
        "ci_methods": ({k: method_for(("delta", "", "") if k == "delta" else ("model", "", k))
                        for k in AUTO_METHODS}),
        "reference": reference,
        "n_boot": n_boot,
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else seed,
        "unit": unit,
        "resampling_unit": "subject",
        "models": model_out,
        "comparisons": comparisons,
        "verdict": verdict,
        "warnings": warnings,
    }
    return AnalysisResult(data)


__all__ = ["analyze", "AnalysisResult", "DEFAULT_CI_METHOD", "REQUIRED_COLUMNS"]
