"""``analyze``: monkey-level statistics of out-of-fold predictions -> stats.json.

The analysis in documented steps, each usable on its own:

1. :func:`prepare_predictions` -- validate the table, fix the order of the monkeys (the fold
   plan's natural order) and code them;
2. :func:`design_warnings` -- what about the design limits the conclusions (few monkeys, few
   scans, partial coverage, monkeys in two folds, a failed leakage audit);
3. :func:`bootstrap_estimates` -- every metric's estimate and its monkey-level resamples, in one
   matrix product (:mod:`icpcv.stats.bootstrap`);
4. :func:`model_statistics` -- per model: metrics with intervals, Bland-Altman, rmcorr, per-monkey
   errors, the between/within error decomposition (:class:`~icpcv.stats.results.ModelStats`);
5. :func:`compare_models` -- each model against the reference on the scans both predicted:
   difference, interval, exact sign-flip p, Holm across models
   (:class:`~icpcv.stats.results.Comparison`);
6. :func:`verdict` -- one sentence, by the rule "interval entirely below zero and Holm-adjusted
   p below 1 - ci_level".

:func:`analyze` runs them in order and returns an :class:`~icpcv.stats.results.AnalysisResult`.
See docs/statistics.md for every number in the output and its formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icpcv.stats import agreement, bootstrap
from icpcv.stats.bootstrap import CI_METHODS, Estimand, K
from icpcv.stats.inference import holm, signflip_test
from icpcv.stats.io import REQUIRED_COLUMNS, validate_predictions
from icpcv.stats.results import (MODEL_METRICS, AnalysisResult, BlandAltman, BlandAltmanRepeated, Comparison,
                                 ErrorDecomposition, Estimate, ModelStats, RMCorr, SubjectError)
from icpcv.util import fmt_num, fmt_p, natural_sorted

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

#: Metrics compared against the reference model.
COMPARISON_METRICS = ("mae", "rmse")

#: issue 19: the nuisance baselines (icpcv.models.nuisance spells the same names): models that cannot see
#: anatomy, against which a scan model that beats the reference is compared too (docs/acquisition.md)
NUISANCE_BASELINES = ("acq", "image_stats")
#: what each nuisance baseline stands for, in the verdict's words
NUISANCE_MEANING = {"acq": "the acquisition settings (protocol, eye, time in the session) explain",
                    "image_stats": "global image brightness explains"}
#: models that read no scan and no acquisition: never compared with a nuisance baseline
IOP_ONLY = ("mean", "ols_iop", "ols_iop2", "mixedlm_iop")

MIN_SUBJECTS = 10
MIN_SCANS = 3

BA_NOTE = ("loa_ci and proportional_bias ci/p treat scans as independent (too narrow with repeated scans per "
           "monkey); see bland_altman_repeated and proportional_bias.ci_cluster (subject-level).")


def _ci(lo_hi):
    return [float(lo_hi[0]), float(lo_hi[1])]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- 1. the table


@dataclass
class Predictions:
    """A validated predictions table ready for the analysis (:func:`prepare_predictions`).

    ``frame`` has the column ``_g``, each row's monkey as an integer code into ``subjects``
    (natural order, as the fold plan sorts them: ``M1, M2, M10``); ``models`` is in order of
    first appearance.
    """

    frame: pd.DataFrame
    subjects: list[str]
    models: list[str]

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def center(self) -> float:
        return float(self.frame["y_true"].mean())


def prepare_predictions(predictions) -> Predictions:
    """Validate a long predictions table (:func:`icpcv.stats.io.validate_predictions`) and code its monkeys.

    >>> import pandas as pd
    >>> t = pd.DataFrame(dict(fold=[0, 1, 2], subject=["M10", "M2", "M1"], scan_id=["a", "b", "c"],
    ...                       model="ols_iop", y_true=[10.0, 12.0, 14.0], y_pred=[11.0, 12.5, 13.0]))
    >>> p = prepare_predictions(t)
    >>> p.subjects, p.frame["_g"].tolist()
    (['M1', 'M2', 'M10'], [2, 1, 0])
    """
    df = validate_predictions(pd.DataFrame(predictions), source="predictions")
    subjects = natural_sorted(df["subject"].unique())
    code_of = {s: i for i, s in enumerate(subjects)}
    df["_g"] = df["subject"].map(code_of).astype(np.intp)
    return Predictions(df, subjects, list(dict.fromkeys(df["model"])))


# --------------------------------------------------------------------------- 2. the design


def design_warnings(pred: Predictions, reference: str, *, audit_failed: bool = False) -> list[str]:
    """Sentences on what in the design limits the conclusions.

    Fewer than :data:`MIN_SUBJECTS` monkeys; monkeys with fewer than :data:`MIN_SCANS` scans;
    models that did not predict every scan (their comparisons use the shared scans); a monkey
    tested in more than one fold of a model (not leave-one-monkey-out); a failed leakage audit;
    a reference model that is absent.
    """
    df, subjects, models = pred.frame, pred.subjects, pred.models
    G = pred.n_subjects
    warnings = []
    if G < MIN_SUBJECTS:
        warnings.append(f"Only {_plural(G, 'subject')} (fewer than {MIN_SUBJECTS}): subject-level "
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
    subjects_of = df.groupby("model")["subject"].unique()
    for m in models:
        have = set(subjects_of[m])
        if len(have) < G:
            lacking = [s for s in subjects if s not in have]
            shown = ", ".join(lacking[:10]) + (", ..." if len(lacking) > 10 else "")
            warnings.append(
                f"Model {m} covers only {len(have)} of the {G} monkeys (none for {shown}): its "
                f"metrics are over fewer monkeys than the others' and not comparable with them; "
                f"the verdict ranks models by their paired comparison with the reference on the "
                f"monkeys both predicted.")
    folds_per_subject = df.groupby(["model", "subject"])["fold"].nunique()
    multi = folds_per_subject[folds_per_subject > 1]
    if len(multi):
        shown = ", ".join(f"{s} ({m})" for (m, s) in multi.index[:10])
        warnings.append(f"Subjects appear in more than one fold for a model: {shown}; "
                        f"leave-one-monkey-out should give each monkey exactly one test fold.")
    if audit_failed:
        warnings.append("The leakage audit FAILED: information may leak between training and "
                        "test monkeys, so these out-of-fold numbers may be optimistic.")
    if reference not in models:
        warnings.append(f"Reference model {reference!r} not found (models: {', '.join(models)}); "
                        f"no comparisons were made.")
    return warnings


# --------------------------------------------------------------------------- 3. the bootstrap


def best_nuisance(df, models, reference) -> str | None:
    """The nuisance baseline (:data:`NUISANCE_BASELINES`) with the lowest MAE on the scans it shares
    with ``reference``; None without one (or without the reference). First in order on ties."""
    present = [m for m in models if m in NUISANCE_BASELINES and m != reference]
    if reference is None or reference not in models or not present:
        return None
    ref = df[df["model"] == reference][["subject", "scan_id"]]
    maes = {}
    for m in present:
        j = df[df["model"] == m].merge(ref, on=["subject", "scan_id"])
        if len(j):
            maes[m] = float(np.mean(np.abs(j["y_pred"] - j["y_true"])))
    return min(maes, key=lambda m: (maes[m], present.index(m))) if maes else None


def nuisance_targets(models, reference, nuisance: str | None) -> list[str]:
    """The models compared with the best nuisance baseline: every model but the reference, the
    nuisance baselines and the IOP-only baselines (:data:`IOP_ONLY`), fixed before any result."""
    if nuisance is None:
        return []
    return [m for m in models if m != reference and m not in NUISANCE_BASELINES and m not in IOP_ONLY]


def build_blocks(df, models, reference, G, center, nuisance: str | None = None):
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
    npairs = {}  # issue 19: each scan model against the best nuisance baseline, on the scans both predicted
    for m in nuisance_targets(models, reference, nuisance):
        joined = model_frames[m].merge(model_frames[nuisance][["subject", "scan_id", "y_true", "y_pred"]],
                                       on=["subject", "scan_id"], suffixes=("", "_ref"))
        joined = joined.sort_values(["_g", "scan_id"], kind="stable")
        npairs[m] = joined
        bm = len(blocks) * K
        blocks.append(bootstrap.subject_sums(joined["_g"], joined["y_true"], joined["y_pred"], G, center))
        br = len(blocks) * K
        blocks.append(bootstrap.subject_sums(joined["_g"], joined["y_true_ref"], joined["y_pred_ref"], G, center))
        for metric in COMPARISON_METRICS:
            estimands.append(Estimand(("ndelta", m, metric), metric, bm, br))
            estimands.append(Estimand(("npair_model", m, metric), metric, bm))
            estimands.append(Estimand(("npair_ref", m, metric), metric, br))
    return np.hstack(blocks), estimands, model_frames, pairs, npairs


@dataclass
class BootstrapEstimates:
    """Every estimand's estimate and monkey-level resamples (:func:`bootstrap_estimates`)."""

    output: bootstrap.BootstrapOutput
    index: dict  # estimand key -> column
    method: str  # the ci_method asked for ("auto" or one of CI_METHODS)
    ci_level: float
    model_frames: dict[str, pd.DataFrame]
    pairs: dict[str, pd.DataFrame]  # model -> its scans joined with the reference's
    #: estimand key -> why its interval is not reported (``ci`` None), filled by :meth:`estimate`
    no_interval: dict = field(default_factory=dict)
    #: issue 19: model -> its scans joined with the best nuisance baseline's (``nuisance``)
    npairs: dict = field(default_factory=dict)
    nuisance: str | None = None

    def method_for(self, key) -> str:
        if self.method != "auto":
            return self.method
        return AUTO_METHODS["delta" if key[0] in ("delta", "ndelta") else key[2]]

    def estimate(self, key) -> Estimate:
        """The estimate of ``key`` (e.g. ``("model", "cnn", "mae")``) with its interval.

        Where the interval cannot be computed honestly
        (:func:`icpcv.stats.bootstrap.interval_with_reason`) ``ci`` is None and the reason is
        kept in :attr:`no_interval` (the analysis turns it into a warning).
        """
        j = self.index[key]
        m = self.method_for(key)
        lo_hi, why = bootstrap.interval_with_reason(self.output, j, m, self.ci_level)
        if why is not None:
            self.no_interval[key] = why
            return Estimate(float(self.output.estimate[j]), None, m)
        return Estimate(float(self.output.estimate[j]), _ci(lo_hi), m)

    def value(self, key) -> float:
        return float(self.output.estimate[self.index[key]])

    def undefined(self) -> list[str]:
        """``model/metric`` pairs with resamples where the metric was undefined (dropped from its
        interval; not those whose interval is not reported at all, see :attr:`no_interval`)."""
        bad = {k[1] + "/" + k[2] for k, j in self.index.items()
               if k[0] == "model" and k[2] in MODEL_METRICS and k not in self.no_interval
               and np.any(~np.isfinite(self.output.boot[:, j]))}
        return sorted(bad)

    def interval_warnings(self, reference: str | None) -> list[str]:
        """One warning per model (and per comparison) whose intervals are not reported, naming
        each metric, its method and why. Estimates that are themselves undefined (e.g. a
        comparison without shared scans) are left to the other warnings."""
        level = f"{round(self.ci_level * 100):g}%"
        groups: dict[tuple, dict[tuple, list[str]]] = {}
        for key, why in sorted(self.no_interval.items(), key=lambda kv: self.index[kv[0]]):
            if key[0] not in ("model", "delta") or not np.isfinite(self.output.estimate[self.index[key]]):
                continue
            groups.setdefault(key[:2], {}).setdefault((self.method_for(key), why), []).append(key[2])
        out = []
        for (kind, m), reasons in groups.items():
            who = f"model {m}" if kind == "model" else f"the comparison of {m} with {reference}"
            items = "; ".join(f"{', '.join(metrics)} ({method}: {why})" for (method, why), metrics in reasons.items())
            out.append(f"No {level} interval (ci null) for {who}: {items}.")
        return out


def bootstrap_estimates(pred: Predictions, reference: str | None, *, n_boot: int = 10000, seed=0,
                        ci_level: float = 0.95, ci_method: str = DEFAULT_CI_METHOD) -> BootstrapEstimates:
    """Resample monkeys ``n_boot`` times (``numpy.random.default_rng(seed)``) and compute every
    model's metrics and every paired difference against ``reference`` on each resample.

    The same resampled monkeys enter every estimand, so the two terms of a difference move
    together. ``ci_method`` "auto" uses :data:`AUTO_METHODS` per quantity.
    """
    G = pred.n_subjects
    nuisance = best_nuisance(pred.frame, pred.models, reference)
    S, estimands, model_frames, pairs, npairs = build_blocks(pred.frame, pred.models, reference, G, pred.center,
                                                             nuisance)
    rng = np.random.default_rng(seed)
    counts = bootstrap.counts_from_indices(bootstrap.resample_indices(G, n_boot, rng), G)
    est = BootstrapEstimates(None, {em.key: j for j, em in enumerate(estimands)}, ci_method, ci_level,
                             model_frames, pairs, npairs=npairs, nuisance=nuisance if npairs else None)
    need_student = any(est.method_for(em.key) == "studentized" for em in estimands)
    est.output = bootstrap.run_bootstrap(S, estimands, counts, studentized=need_student)
    return est


# --------------------------------------------------------------------------- 4. each model


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


def model_statistics(pred: Predictions, boot: BootstrapEstimates) -> dict[str, ModelStats]:
    """Per model: metrics with monkey-level intervals, agreement, per-monkey errors, decomposition."""
    G, ci_level = pred.n_subjects, boot.ci_level
    code_of = {s: i for i, s in enumerate(pred.subjects)}
    out = {}
    for m in pred.models:
        sub = boot.model_frames[m]
        y, p, g = sub["y_true"].to_numpy(), sub["y_pred"].to_numpy(), sub["_g"].to_numpy()
        ba = BlandAltman.from_dict(agreement.bland_altman(p, y, ci_level=ci_level))
        ba.note = BA_NOTE
        ba.proportional_bias.ci_cluster = boot.estimate(("model", m, "ba_slope")).ci
        ba.proportional_bias.ci_cluster_method = boot.method_for(("model", m, "ba_slope"))
        rc = RMCorr.from_dict(agreement.rmcorr(y, p, sub["subject"], ci_level=ci_level))
        e = p - y
        per = {}
        for s in natural_sorted(set(sub["subject"])):
            es = e[g == code_of[s]]
            per[s] = SubjectError(mae=float(np.mean(np.abs(es))), bias=float(np.mean(es)), n=int(es.size))
        dec = ErrorDecomposition(**_decomposition(e, g, G), within_subject_correlation=rc.r,
                                 within_subject_correlation_ci=rc.ci)
        out[m] = ModelStats(name=m, n_scans=int(len(sub)), n_subjects=int(sub["subject"].nunique()),
                            **{metric: boot.estimate(("model", m, metric)) for metric in MODEL_METRICS},
                            bland_altman=ba,
                            bland_altman_repeated=BlandAltmanRepeated.from_dict(
                                agreement.bland_altman_repeated(p, y, sub["subject"])),
                            rmcorr=rc, per_subject=per, decomposition=dec)
    return out


# --------------------------------------------------------------------------- 5. against the reference


def compare_models(pred: Predictions, boot: BootstrapEstimates, reference: str, *, seed=0,
                   n_perm: int = 100_000, return_nuisance: bool = False):
    """Each model against ``reference`` on the scans both predicted, for MAE and RMSE.

    ``delta`` = model's metric minus the reference's (pooled over the shared scans) with the
    monkey-level interval; the sign-flip test is over the per-monkey differences of the mean
    loss (absolute error for MAE, squared error for RMSE); p-values are Holm-adjusted across
    all comparisons returned.

    Issue 19: when the predictions hold a nuisance baseline (:data:`NUISANCE_BASELINES`), each
    scan model (:func:`nuisance_targets`) is also compared, in the same way, with the best one
    (:func:`best_nuisance`), and those comparisons join the Holm family. ``return_nuisance``
    returns ``(comparisons, nuisance_comparisons)``.
    """
    comparisons = _paired(pred, boot, boot.pairs, reference, ("delta", "pair_model", "pair_ref"), seed, n_perm, 0)
    nuisance = _paired(pred, boot, boot.npairs, boot.nuisance, ("ndelta", "npair_model", "npair_ref"), seed, n_perm,
                       len(boot.pairs))
    # one Holm family: the comparisons with the reference and those with the best nuisance baseline
    family = comparisons + nuisance
    for c, a in zip(family, holm([c.p_signflip for c in family])):
        c.p_adjusted = float(a)
    if return_nuisance:
        return comparisons, nuisance
    return comparisons


def _paired(pred, boot, pairs, reference, keys, seed, n_perm, offset) -> list[Comparison]:
    """The paired comparisons of each model in ``pairs`` with ``reference`` (MAE and RMSE), unadjusted."""
    G = pred.n_subjects
    out = []
    for i, (m, joined) in enumerate(pairs.items()):
        e_m = (joined["y_pred"] - joined["y_true"]).to_numpy()
        e_r = (joined["y_pred_ref"] - joined["y_true_ref"]).to_numpy()
        g = joined["_g"].to_numpy()
        cnt = np.bincount(g, minlength=G)
        has = cnt > 0
        for k, metric in enumerate(COMPARISON_METRICS):
            loss_m = np.abs(e_m) if metric == "mae" else e_m**2
            loss_r = np.abs(e_r) if metric == "mae" else e_r**2
            diff = (np.bincount(g, weights=loss_m - loss_r, minlength=G)[has] / cnt[has])
            test = signflip_test(diff, n_perm=n_perm, seed=[seed, offset + i, k])
            d = boot.estimate((keys[0], m, metric))
            out.append(Comparison(
                model=m, reference=reference, metric=metric, delta=d.estimate, ci=d.ci,
                p_signflip=test["p"], p_adjusted=None,
                estimate_model=boot.value((keys[1], m, metric)),
                estimate_reference=boot.value((keys[2], m, metric)),
                n_subjects=int(has.sum()), n_scans=int(len(joined)),
                signflip_method=test["method"], signflip_statistic=test["statistic"], ci_method=d.method))
    return out


# --------------------------------------------------------------------------- 6. the verdict


#: The verdict's threshold on the Holm-adjusted sign-flip p (and the rule of :meth:`Comparison.better`).
RULE_ALPHA = 0.05


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def _compared(comparisons: list[Comparison]) -> list[Comparison]:
    """The MAE comparisons with shared scans and a defined difference (those that can be ranked)."""
    return [c for c in comparisons if c.metric == "mae" and c.n_scans > 0 and _finite(c.delta)]


def verdict_comparison(models: dict[str, ModelStats] | None, comparisons: list[Comparison],
                       alpha: float = RULE_ALPHA) -> Comparison | None:
    """The MAE comparison the verdict speaks of, ranked on the paired comparisons with the reference.

    Among the models the rule calls better (:meth:`Comparison.better`), the one with the largest
    reduction (most negative paired ``delta``, over the scans it shares with the reference);
    when none is, the one with the lowest paired ``delta``. A comparison without shared scans
    (or with an undefined difference) is never chosen; first in order on ties; None without a
    comparison that can be chosen. A nuisance baseline (:data:`NUISANCE_BASELINES`) is not chosen
    when a scan model (neither a nuisance baseline nor an IOP-only one, :data:`IOP_ONLY`) was compared. ``models`` is not used (pooled MAEs over each model's own
    scans are not comparable between models that predicted different monkeys); it is kept for
    the callers' signature.
    """
    cand = _compared(comparisons)
    # issue 19: where a scan model was compared, the verdict speaks of the scan models, not of a nuisance baseline
    if any(c.model not in NUISANCE_BASELINES and c.model not in IOP_ONLY for c in cand):
        cand = [c for c in cand if c.model not in NUISANCE_BASELINES]
    if not cand:
        return None
    better = [c for c in cand if c.better(alpha)]
    return min(better or cand, key=lambda c: c.delta)


def smallest_p(c: Comparison) -> float:
    """The smallest sign-flip p the comparison's test could give: 2 / 2^G for the exact test over
    G monkeys (the observed signs and their mirror image), 0 for the Monte Carlo test (G > 20)."""
    if c.signflip_method == "exact" and c.n_subjects > 0:
        return min(1.0, 2.0 / 2.0 ** c.n_subjects)
    return 0.0


def unreachable(comparisons: list[Comparison], alpha: float = RULE_ALPHA) -> str | None:
    """Why no model can be called better whatever the data, or None when one could.

    A comparison's Holm-adjusted p is at least its own smallest possible p (:func:`smallest_p`)
    and at least m times the smallest possible p of any comparison in the Holm family of m
    (every comparison of the analysis with a p-value, both metrics). When that bound reaches ``alpha`` for
    every MAE comparison, no verdict of "better" is possible.
    """
    cand = [c for c in _compared(comparisons) if _finite(c.p_signflip)]
    family = [c for c in comparisons if _finite(c.p_signflip)]  # Holm counts the finite p-values
    if not cand:
        return None
    m = len(family)
    floor = min(smallest_p(c) for c in family)
    if any(max(smallest_p(c), m * floor) < alpha for c in cand):
        return None
    G = max(c.n_subjects for c in cand)
    p_min = smallest_p(max(cand, key=lambda c: c.n_subjects))
    if p_min >= alpha:
        return (f"With {_plural(G, 'monkey')} the exact sign-flip test cannot reach p < {alpha:g} "
                f"(smallest possible p = 2/2^{G} = {p_min:.3g}), so no verdict of better is possible.")
    return (f"With {_plural(G, 'monkey')} and {m} comparisons in the Holm family the Holm-adjusted "
            f"sign-flip p cannot fall below {alpha:g} (smallest possible {m} × 2/2^{G} = "
            f"{m * floor:.3g}), so no verdict of better is possible.")


def _digits(*xs) -> int:
    finite = [abs(x) for x in xs if np.isfinite(x)]
    return 2 if finite and max(finite) < 1 else 1


def verdict_sentences(comparisons: list[Comparison], models: dict[str, ModelStats], reference: str, *,
                      n_subjects: int, ci_level: float = 0.95, unit: str = "mmHg",
                      nuisance_comparisons: list[Comparison] | None = None) -> list[str]:
    """The sentences of :func:`verdict`: the statement on the best model first (and, issue 19, whether
    it also beats the best nuisance baseline), then (when neither it nor any model can be called
    better) why, then a sentence on a nuisance baseline that beats the reference, then one sentence
    per model clearly worse than the reference."""
    nuisance_comparisons = list(nuisance_comparisons or [])
    level = f"{round(ci_level * 100):g}%"
    mae_cmp = [c for c in comparisons if c.metric == "mae"]
    if reference not in models:
        return [f"The reference model {reference} is not in the predictions, so no model "
                f"was compared against it ({_plural(n_subjects, 'monkey')})."]
    if not mae_cmp:
        return [f"Only the reference model {reference} is present; there is nothing to "
                f"compare it with ({_plural(n_subjects, 'monkey')})."]

    def fmt(x, digits):
        return fmt_num(x, digits, "n/a")

    def tail(c):
        return (f"sign-flip p {fmt_p(c.p_signflip, 'n/a', equals=True)}, Holm-adjusted p "
                f"{fmt_p(c.p_adjusted, 'n/a', equals=True)}; {_plural(c.n_subjects, 'monkey')}")

    best = verdict_comparison(models, comparisons)
    if best is None:
        return [f"No model shares scans with the reference {reference}, so no model was compared "
                f"with it ({_plural(n_subjects, 'monkey')})."]
    lo, hi = best.lower, best.upper
    reduction = -best.delta
    red_lo, red_hi = -hi, -lo
    digits = _digits(reduction, red_lo, red_hi)
    if best.better(RULE_ALPHA):
        out = [f"The {best.model} lowers MAE by {fmt(reduction, digits)} {unit} against "
               f"{reference} ({level} CI {fmt(red_lo, digits)} to {fmt(red_hi, digits)} {unit}; "
               f"{tail(best)})."]
        nc = next((c for c in nuisance_comparisons if c.model == best.model and c.metric == "mae"), None)
        if nc is not None and best.model not in NUISANCE_BASELINES:  # issue 19: the reviewer's next question
            d = _digits(nc.delta, nc.lower, nc.upper)
            said = (f"MAE {'+' if _finite(nc.delta) and nc.delta >= 0 else ''}{fmt(nc.delta, d)} {unit} against it, "
                    f"{level} CI {fmt(nc.lower, d)} to {fmt(nc.upper, d)} {unit}; {tail(nc)}")
            what = NUISANCE_MEANING.get(nc.reference, "acquisition alone explains")
            if nc.better(RULE_ALPHA):
                out[0] = (out[0][:-1] + f", and it also beats the best nuisance baseline, {nc.reference} ({said}): "
                          f"its advantage over IOP is more than what {what}.")
            else:
                out[0] = (out[0][:-1] + f", but it does not beat {nc.reference} ({said}): its advantage over IOP is "
                          f"within what {what}, so it is not evidence that the scan's anatomy carries ICP.")
    elif np.isfinite(best.delta) and best.delta >= 0:  # no model is even nominally better
        who = "the other model's" if len(mae_cmp) == 1 else "every model's"
        if any(c.model in NUISANCE_BASELINES and c.delta < 0 for c in _compared(comparisons)):
            who = "every model's but the nuisance baselines'"  # issue 19: those are spoken of below
        out = [f"There is no evidence that any model beats {reference} on MAE: {who} MAE is at or above "
               f"{reference}'s; the closest, {best.model}, changes MAE by +{fmt(best.delta, digits)} "
               f"{unit} ({level} CI {fmt(lo, digits)} to {fmt(hi, digits)} {unit}; {tail(best)})."]
    else:
        out = [f"There is no evidence that any model beats {reference} on MAE: the best, "
               f"{best.model}, changes MAE by {fmt(best.delta, digits)} {unit} "
               f"({level} CI {fmt(lo, digits)} to {fmt(hi, digits)} {unit}; {tail(best)})."]
    if not best.better(RULE_ALPHA):
        why = unreachable(comparisons + nuisance_comparisons, RULE_ALPHA)
        if why:
            out.append(why)
    for c in _compared(comparisons):  # issue 19: a model that cannot see anatomy beats IOP
        if c.model in NUISANCE_BASELINES and c.model != best.model and c.better(RULE_ALPHA):
            d = _digits(c.delta, c.lower, c.upper)
            out.append(f"The nuisance baseline {c.model}, which cannot see anatomy, lowers MAE by {fmt(-c.delta, d)} "
                       f"{unit} against {reference} ({level} CI {fmt(-c.upper, d)} to {fmt(-c.lower, d)} {unit}; "
                       f"{tail(c)}): in these data {NUISANCE_MEANING.get(c.model, 'the acquisition explains')} "
                       f"part of ICP.")
    for c in _compared(comparisons):
        if c.worse(RULE_ALPHA):
            d = _digits(c.delta, c.lower, c.upper)
            out.append(f"The {c.model} is worse than {reference} on MAE: it raises MAE by "
                       f"{fmt(c.delta, d)} {unit} ({level} CI {fmt(c.lower, d)} to {fmt(c.upper, d)} "
                       f"{unit}; {tail(c)}).")
    return out


def verdict(comparisons: list[Comparison], models: dict[str, ModelStats], reference: str, *, n_subjects: int,
            ci_level: float = 0.95, unit: str = "mmHg", nuisance_comparisons: list[Comparison] | None = None) -> str:
    """The verdict on the MAE comparisons, in one to a few sentences (:func:`verdict_sentences`).

    The model it speaks of is chosen on the paired comparisons with the reference
    (:func:`verdict_comparison`). It is "better" than the reference when its interval of the
    MAE difference lies entirely below zero and its Holm-adjusted sign-flip p is below 0.05;
    the sentence states the reduction with its interval and both p-values, or that there is no
    evidence, naming the closest model -- and, when the design cannot give a p below 0.05 at
    all (few monkeys, :func:`unreachable`), says so. Each model clearly worse than the
    reference (interval entirely above zero, Holm-adjusted p below 0.05) gets a sentence of
    its own. Issue 19: a model that beats the reference is also set against the best nuisance
    baseline (``nuisance_comparisons``, the same Holm family), and when it does not beat that one
    too the sentence says its advantage is within what the acquisition explains.
    """
    return " ".join(verdict_sentences(comparisons, models, reference, n_subjects=n_subjects,
                                      ci_level=ci_level, unit=unit, nuisance_comparisons=nuisance_comparisons))


# --------------------------------------------------------------------------- all of it


def analyze(predictions, reference="ols_iop", n_boot=10000, seed=0, ci_level=0.95,
            ci_method=None, *, audit_failed=False, unit="mmHg", n_perm=100_000) -> AnalysisResult:
    """Monkey-level statistics of out-of-fold predictions: the six steps above, in order.

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
        ``to_dict()`` gives the stats.json content (schema in docs/statistics.md);
        ``summary()`` a text table.

    Examples
    --------
    >>> from icpcv.stats.synthetic import synthetic_predictions
    >>> p = synthetic_predictions(n_subjects=8, seed=1)
    >>> res = analyze(p[p.model.isin(["ols_iop", "cnn"])], n_boot=500)
    >>> list(res.models)
    ['ols_iop', 'cnn']
    >>> c = res.comparison("cnn")
    >>> c.metric, c.n_subjects, c.signflip_method, round(c.delta, 2), round(c.p_signflip, 3)
    ('mae', 8, 'exact', -0.45, 0.203)
    >>> print(res.verdict)  # doctest: +ELLIPSIS
    There is no evidence that any model beats ols_iop on MAE: the best, cnn, changes MAE by -0.4 mmHg ...
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

    pred = prepare_predictions(predictions)
    warnings = design_warnings(pred, reference, audit_failed=audit_failed)
    ref_present = reference in pred.models
    boot = bootstrap_estimates(pred, reference if ref_present else None, n_boot=n_boot, seed=seed,
                               ci_level=ci_level, ci_method=method)
    models = model_statistics(pred, boot)
    for m, joined in boot.pairs.items():
        if len(joined) == 0:
            warnings.append(f"Model {m} shares no scans with the reference {reference}; "
                            f"its comparison is empty (all values null).")
    comparisons, nuisance = compare_models(pred, boot, reference, seed=seed, n_perm=n_perm, return_nuisance=True)
    bad = boot.undefined()
    if bad:
        warnings.append("Some bootstrap resamples gave an undefined metric and were dropped "
                        f"from its interval: {', '.join(bad)}.")
    warnings += boot.interval_warnings(reference)
    return AnalysisResult(
        n_subjects=pred.n_subjects, n_scans=int(pred.frame["scan_id"].nunique()), n_rows=int(len(pred.frame)),
        subjects=list(pred.subjects), ci_level=float(ci_level), ci_method=method,
        ci_methods={k: boot.method_for(("delta", "", "") if k == "delta" else ("model", "", k)) for k in AUTO_METHODS},
        reference=reference, n_boot=n_boot, seed=int(seed) if isinstance(seed, (int, np.integer)) else seed,
        unit=unit, resampling_unit="subject", models=models, comparisons=comparisons,
        nuisance_comparisons=nuisance,
        verdict=verdict(comparisons, models, reference, n_subjects=pred.n_subjects, ci_level=ci_level, unit=unit,
                        nuisance_comparisons=nuisance),
        warnings=warnings)


__all__ = ["NUISANCE_BASELINES", "best_nuisance", "analyze", "prepare_predictions", "design_warnings", "bootstrap_estimates", "model_statistics",
           "compare_models", "verdict", "verdict_sentences", "verdict_comparison", "unreachable", "smallest_p",
           "RULE_ALPHA", "Predictions", "BootstrapEstimates", "AnalysisResult", "DEFAULT_CI_METHOD",
           "AUTO_METHODS", "REQUIRED_COLUMNS"]
