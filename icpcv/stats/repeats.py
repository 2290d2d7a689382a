"""Training randomness: repeated trainings, the seed ensemble, and what a seed adds to the variance.

A model that depends on training randomness (a CNN: initialisation, batch order, augmentation)
can be trained R times per fold on the same fold plan, with seeds derived from
``(seed, fold, repeat)``. Its out-of-fold predictions then carry an integer ``repeat`` column
(0-based); deterministic models (the IOP baselines) leave it empty. A table without the column
is a plain table (every model trained once).

* :func:`validate_repeats` checks such a table (row and column named in every error).
* :func:`ensemble` turns it into the plain table of the **seed ensemble**: per model and scan,
  the mean of the R repeats' predictions. That is the primary prediction of a repeated model.
* :func:`single_seed_table` is the plain table a study that trained once, with repeat r,
  would have produced.
* :func:`training_variance` analyses each repeat alone with :func:`icpcv.stats.analyze`
  (exactly the numbers a single-seed study would have reported), counts how many repeats alone
  the verdict's rule calls better, and splits the variance of a single-seed estimate of the
  MAE difference into monkey sampling and training noise (:func:`variance_components`).

See docs/statistics.md, "Training randomness (repeats)".
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from icpcv.stats.analysis import RULE_ALPHA, analyze, unreachable, verdict_comparison, verdict_sentences
from icpcv.errors import InputError
from icpcv.stats.results import AnalysisResult, Comparison
from icpcv.util import natural_key, to_jsonable
from icpcv.stats.io import (OPTIONAL_NUMERIC, REPEAT_COLUMN, REQUIRED_COLUMNS,
                            validate_predictions)

#: The verdict's rule (:data:`icpcv.stats.analysis.RULE_ALPHA`, ``Comparison.better``): a model
#: is called better than the reference when its MAE difference has an interval entirely below 0
#: and a Holm-adjusted sign-flip p below RULE_ALPHA (0.05).
RULE = "interval of the MAE difference entirely below 0 and Holm-adjusted sign-flip p < 0.05"

ESTIMATOR = ("weighted one-way random-effects method of moments on the per-monkey, per-repeat "
             "MAE differences, each monkey's scan-sampling variance estimated from its scan x "
             "repeat table (DerSimonian & Kacker 2007 general weights with known within "
             "variances; Searle, Casella & McCulloch 1992, ch. 3-4)")


def _span(repeats) -> str:
    reps = sorted(repeats)
    if len(reps) > 2 and reps == list(range(reps[0], reps[-1] + 1)):
        return f"{reps[0]}-{reps[-1]}"
    return ", ".join(str(r) for r in reps)


def _plain_columns(df: pd.DataFrame) -> list:
    return list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_NUMERIC if c in df.columns]


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def validate_repeats(predictions, source: str = "predictions") -> pd.DataFrame:
    """Check a predictions table that may have a ``repeat`` column; return a clean copy.

    The table is long, one row per (model, scan, repeat): ``fold, subject, scan_id, model,
    y_true, y_pred`` (+ ``iop``) and ``repeat``, a whole number >= 0 on every row of a model
    trained with repeats and empty on every row of a deterministic model. Without the column
    (or with it empty everywhere) every model was trained once.

    Everything :func:`icpcv.stats.io.validate_predictions` checks is checked, with the
    duplicate key (model, scan_id, repeat), and then:

    * a model has a repeat on every row or on none;
    * every scan of a repeated model has every repeat that model has;
    * every repeated model has the same repeats (repeat r of each forms one single-seed study);
    * ``fold`` (and ``iop``) of a (model, scan) is the same in every repeat (``subject`` and
      ``y_true`` are checked per scan across all rows already).

    Errors are :class:`InputError` naming the 1-based data row and the column.

    Returns
    -------
    pandas.DataFrame
        As :func:`~icpcv.stats.io.validate_predictions`, with a nullable ``Int64`` column
        ``repeat`` (``<NA>`` for deterministic models), added when absent.

    Examples
    --------
    >>> import pandas as pd
    >>> from icpcv.stats.repeats import validate_repeats
    >>> table = pd.DataFrame({"fold": 0, "subject": "m1", "scan_id": ["s1", "s1", "s2"],
    ...                       "model": "cnn", "repeat": [0, 1, 0],
    ...                       "y_true": [10.0, 10.0, 12.0], "y_pred": [11.0, 9.0, 12.5]})
    >>> validate_repeats(table)
    Traceback (most recent call last):
    ...
    icpcv.errors.InputError: predictions row 3, column repeat: model 'cnn', scan_id 's2' has no row for repeat 1 (the model has repeats 0, 1 on other scans); every scan of a repeated model needs every repeat
    """
    df = validate_predictions(pd.DataFrame(predictions), source=source, allow_repeats=True)
    if REPEAT_COLUMN not in df.columns:
        df[REPEAT_COLUMN] = pd.array([pd.NA] * len(df), dtype="Int64")
        return df
    blank = df[REPEAT_COLUMN].isna().to_numpy()
    for model, idx in df.groupby("model", sort=False).indices.items():
        b = blank[idx]
        if b.any() and not b.all():
            i, j = idx[b][0], idx[~b][0]
            raise InputError(
                f"{source} row {i + 1}, column {REPEAT_COLUMN}: empty, but model {model!r} has "
                f"repeat {df[REPEAT_COLUMN].iloc[j]} in row {j + 1}; give every row of a repeated "
                f"model its repeat, or leave the column empty on every row of a deterministic model")
    repeated = df[~blank]
    plan = {}
    for model, sub in repeated.groupby("model", sort=False):
        found = sorted(int(r) for r in sub[REPEAT_COLUMN].unique())
        per_scan = sub.groupby("scan_id", sort=False)[REPEAT_COLUMN].nunique()
        short = per_scan[per_scan < len(found)]
        if len(short):
            scan = short.index[0]
            rows = sub.index[(sub["scan_id"] == scan).to_numpy()]
            missing = sorted(set(found) - {int(r) for r in sub.loc[rows, REPEAT_COLUMN]})
            raise InputError(
                f"{source} row {rows[0] + 1}, column {REPEAT_COLUMN}: model {model!r}, scan_id "
                f"{scan!r} has no row for repeat {_span(missing)} (the model has repeats "
                f"{_span(found)} on other scans); every scan of a repeated model needs every repeat")
        plan[model] = tuple(found)
    if plan:
        first_model, first_reps = next(iter(plan.items()))
        for model, reps in plan.items():
            if reps != first_reps:
                row = int(np.flatnonzero((df["model"] == model).to_numpy())[0])
                raise InputError(
                    f"{source} row {row + 1}, column {REPEAT_COLUMN}: model {model!r} has repeats "
                    f"{_span(reps)} but {first_model!r} has {_span(first_reps)}; every repeated model "
                    f"needs the same repeats, so that repeat r of each forms one single-seed study "
                    f"(leave repeat empty on the rows of a deterministic model)")
    for col in ("fold", "iop"):
        if col not in repeated.columns or repeated.empty:
            continue
        text = pd.Series([repr(v) for v in repeated[col]], index=repeated.index)  # NaN equals NaN here
        n_values = text.groupby([repeated["model"], repeated["scan_id"]], sort=False).transform("nunique")
        if (n_values > 1).any():
            bad = repeated[(n_values > 1).to_numpy()]
            model, scan = bad["model"].iloc[0], bad["scan_id"].iloc[0]
            rows = bad.index[((bad["model"] == model) & (bad["scan_id"] == scan)).to_numpy()]
            j = next(r for r in rows if not _same(df[col].iloc[r], df[col].iloc[rows[0]]))
            raise InputError(
                f"{source} row {j + 1}, column {col}: model {model!r}, scan_id {scan!r} has {col} "
                f"{df[col].iloc[j]!r} in repeat {df[REPEAT_COLUMN].iloc[j]} but "
                f"{df[col].iloc[rows[0]]!r} in repeat {df[REPEAT_COLUMN].iloc[rows[0]]} (row "
                f"{rows[0] + 1}); repeats differ only in the training seed, on the same fold plan")
    return df


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def repeat_plan(table: pd.DataFrame) -> dict:
    """``{model: (repeat, ...)}`` for the repeated models of a table from :func:`validate_repeats`."""
    rep = table[table[REPEAT_COLUMN].notna()]
    return {m: tuple(sorted(int(r) for r in sub[REPEAT_COLUMN].unique()))
            for m, sub in rep.groupby("model", sort=False)}


def _ensemble_frame(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["model", "scan_id"]
    cols = _plain_columns(table)
    out = table.loc[~table.duplicated(keys).to_numpy(), cols].reset_index(drop=True)
    means = table.groupby(keys, sort=False)["y_pred"].mean()
    out["y_pred"] = means.reindex(pd.MultiIndex.from_frame(out[keys])).to_numpy()
    return out


def ensemble(predictions, source: str = "predictions") -> pd.DataFrame:
    """The seed-ensemble table: per model and scan, the mean of its repeats' predictions.

    .. math::

        \\hat y^{\\text{ens}}_{mi} = \\frac1R \\sum_{r=1}^{R} \\hat y_{mir}

    for a model m trained R times per fold, scan i. Rows of deterministic models (``repeat``
    empty) pass through unchanged; a table without a ``repeat`` column comes back as it is.
    Validated with :func:`validate_repeats` first.

    Because the absolute error is convex, the ensemble's MAE is never above the mean of the
    repeats' MAEs (Jensen's inequality): the ensemble is a better predictor than a typical
    single network, and its comparison is the comparison of the ensemble, not of one network.

    Returns
    -------
    pandas.DataFrame
        A plain predictions table, one row per (model, scan), columns ``fold, subject, scan_id,
        model, y_true, y_pred`` (+ ``iop`` when the input has it; other columns are not kept,
        as they may differ between repeats), rows in order of first appearance.

    Examples
    --------
    >>> import pandas as pd
    >>> from icpcv.stats.repeats import ensemble
    >>> table = pd.DataFrame({"fold": 0, "subject": "m1", "scan_id": "s1",
    ...                       "model": ["cnn", "cnn", "cnn", "ols_iop"], "repeat": [0, 1, 2, None],
    ...                       "y_true": 10.0, "y_pred": [12.0, 14.0, 13.0, 11.0]})
    >>> ensemble(table)[["model", "y_pred"]].to_dict("records")
    [{'model': 'cnn', 'y_pred': 13.0}, {'model': 'ols_iop', 'y_pred': 11.0}]
    """
    return _ensemble_frame(validate_repeats(predictions, source))


def _slice(table: pd.DataFrame, repeat: int) -> pd.DataFrame:
    rep = table[REPEAT_COLUMN]
    keep = (rep.isna() | (rep == repeat)).to_numpy(dtype=bool)
    return table.loc[keep, _plain_columns(table)].reset_index(drop=True)


def single_seed_table(predictions, repeat: int, source: str = "predictions") -> pd.DataFrame:
    """The plain table of a study that trained every model once, with repeat ``repeat``.

    Every repeated model's rows at that repeat and every deterministic model's rows, in the
    input's order, with the plain columns (see :func:`ensemble`).

    Examples
    --------
    >>> import pandas as pd
    >>> from icpcv.stats.repeats import single_seed_table
    >>> table = pd.DataFrame({"fold": 0, "subject": "m1", "scan_id": "s1",
    ...                       "model": ["cnn", "cnn", "ols_iop"], "repeat": [0, 1, None],
    ...                       "y_true": 10.0, "y_pred": [12.0, 14.0, 11.0]})
    >>> single_seed_table(table, 1)[["model", "y_pred"]].to_dict("records")
    [{'model': 'cnn', 'y_pred': 14.0}, {'model': 'ols_iop', 'y_pred': 11.0}]
    """
    table = validate_repeats(predictions, source)
    plan = repeat_plan(table)
    if plan and repeat not in next(iter(plan.values())):
        raise InputError(f"{source}, column {REPEAT_COLUMN}: no repeat {repeat} (repeats: "
                         f"{_span(next(iter(plan.values())))})")
    return _slice(table, repeat)


# ---------------------------------------------------------------------------------------------
# Variance components
# ---------------------------------------------------------------------------------------------

def scan_level_parts(diffs, counts) -> tuple:
    r"""Per-monkey MAE differences and their scan-sampling variance, from scan-level differences.

    ``diffs`` holds the scan-level loss differences
    :math:`d_{gir} = |e^{model}_{gir}| - |e^{ref}_{gi}|` of scan i of monkey g in repeat r,
    scans ordered by monkey (``counts[g]`` consecutive scans each). Within a monkey the scans and
    the repeats are crossed (every scan is predicted in every repeat), so with the two-way random
    model :math:`d_{gir} = m_g + u_{gi} + \varepsilon_{gr} + \eta_{gir}` (scan effect
    :math:`u_{gi}`, variance :math:`\tau_g^2`; a repeat's shift :math:`\varepsilon_{gr}`; scan-level
    training noise :math:`\eta_{gir}`) the per-monkey mean squares of the scan x repeat table give

    .. math::

        \hat S_g = \frac{MS_{scan,g} - MS_{res,g}}{n_g R}
                 = \frac{1}{n_g}\Big(\widehat{\operatorname{Var}}_i(\bar d_{gi\cdot})
                   - \frac{MS_{res,g}}{R}\Big),
        \qquad E[\hat S_g] = \frac{\tau_g^2}{n_g},

    the variance that sampling the monkey's scans adds to its repeat-mean difference
    :math:`\bar D_g`. It stays the same in every repeat (the scans do not change), so the
    repeats' spread cannot see it (Searle, Casella & McCulloch 1992, ch. 4, the two-way crossed
    random model; :math:`E[MS_{scan}] = R\tau^2 + \sigma_\eta^2`, :math:`E[MS_{res}] = \sigma_\eta^2`).
    A monkey with one scan has no scan spread to measure: its :math:`\hat S_g` is 0 and its scan
    part stays in the monkey part.

    Parameters
    ----------
    diffs : array_like, shape (..., N, R)
        Scan-level loss differences, N = sum(counts) scans in monkey order, R >= 2 repeats.
        Leading axes (simulated cohorts) are vectorised over.
    counts : array_like of int, shape (G,)
        Scans of each monkey, in the order of the rows.

    Returns
    -------
    (D, S) : tuple of ndarray
        ``D`` (..., G, R): each monkey's mean difference per repeat; ``S`` (..., G):
        :math:`\hat S_g` (unbiased; can be negative by chance).

    Examples
    --------
    Scan effects only (no training noise at scan level): :math:`\hat S_g` is the variance of the
    scans' differences over the scan count.

    >>> import numpy as np
    >>> from icpcv.stats.repeats import scan_level_parts
    >>> d = np.array([[1.0, 1.5], [3.0, 3.5], [2.0, 2.5],   # monkey 0: 3 scans, 2 repeats
    ...               [0.0, 1.0], [2.0, 3.0]])              # monkey 1: 2 scans
    >>> D, S = scan_level_parts(d, [3, 2])
    >>> D.tolist(), S.round(4).tolist()
    ([[2.0, 2.5], [1.0, 2.0]], [0.3333, 1.0])
    """
    d = np.asarray(diffs, dtype=float)
    n = np.asarray(counts, dtype=int)
    if d.ndim < 2 or d.shape[-1] < 2:
        raise ValueError(f"diffs must have shape (..., N, R) with R >= 2 repeats, got {d.shape}")
    if n.ndim != 1 or n.size < 1 or (n < 1).any() or n.sum() != d.shape[-2]:
        raise ValueError(f"counts must be positive scan counts summing to the {d.shape[-2]} rows, got {n.tolist()}")
    R = d.shape[-1]
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    codes = np.repeat(np.arange(n.size), n)
    D = np.add.reduceat(d, starts, axis=-2) / n[:, None]                 # (..., G, R)
    d_bar = D.mean(axis=-1)                                              # (..., G)
    row = d.mean(axis=-1)                                                # (..., N) a scan's repeat mean
    resid = d - row[..., None] - D[..., codes, :] + d_bar[..., codes, None]
    ss_res = np.add.reduceat(resid**2, starts, axis=-2).sum(axis=-1)     # (..., G)
    ss_scan = np.add.reduceat((row - d_bar[..., codes]) ** 2, starts, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_rows = ss_scan / (n - 1)
        ms_res = ss_res / ((n - 1) * (R - 1))
        S = np.where(n > 1, (var_rows - ms_res / R) / n, 0.0)
    return D, S


def variance_components(diffs, weights, units=None, scan_variance=None) -> dict:
    """Split the variance of a single-seed pooled difference into monkey sampling and training noise.

    Model (repeats nested within monkeys, since every fold trains its own networks): the
    per-monkey loss difference of repeat r, a mean over the monkey's :math:`n_g` scans, is

    .. math::

        D_{gr} = \\mu + a_g + b_g + \\varepsilon_{gr}, \\qquad
        a_g \\sim (0, \\sigma_a^2), \\quad b_g \\sim (0, S_g), \\quad
        \\varepsilon_{gr} \\sim (0, \\sigma_g^2),

    monkeys g = 1..G independent; :math:`a_g` the monkey's own effect; :math:`b_g` the mean of
    its scans' effects, the same in every repeat (the scans do not change), with
    :math:`S_g = \\tau_g^2 / n_g` shrinking with the monkey's scans; repeats r = 1..R independent
    given the monkey, the training noise :math:`\\sigma_g^2` free to differ between monkeys. A
    single-seed study reports the pooled difference :math:`\\hat\\Delta_r = \\sum_g w_g D_{gr}`
    with :math:`w_g = n_g/N` (scan counts), whose variance is

    .. math::

        \\operatorname{Var}\\hat\\Delta_r = \\underbrace{\\sigma_a^2 \\sum_g w_g^2
        + \\sum_g w_g^2 S_g}_{M \\text{ (monkey sampling: the monkeys and their scans)}}
        + \\underbrace{\\operatorname{Var}\\Big(\\sum_g w_g \\varepsilon_{gr}\\Big)}_{T
        \\text{ (training noise)}}.

    Estimators (all unbiased under the model). With :math:`\\bar D_g`, :math:`s_g^2` the mean
    and the sample variance (divisor R - 1) of monkey g's R differences,
    :math:`\\bar\\Delta = \\sum_g w_g \\bar D_g`, :math:`\\hat S_g` from the scan-level table
    (:func:`scan_level_parts`) and training units u (groups of monkeys that share networks; one
    monkey each under leave-one-monkey-out, the default):

    .. math::

        \\hat T = \\sum_u \\widehat{\\operatorname{Var}}_r\\Big(\\sum_{g\\in u} w_g D_{gr}\\Big),
        \\qquad Q = \\sum_g w_g (\\bar D_g - \\bar\\Delta)^2,

        \\hat\\sigma_a^2 = \\frac{Q - \\big(\\sum_g w_g s_g^2 - \\hat T\\big)/R
        - \\sum_g w_g (1 - w_g) \\hat S_g}{1 - \\sum_g w_g^2},
        \\qquad \\hat M = \\hat\\sigma_a^2 \\sum_g w_g^2 + \\sum_g w_g^2 \\hat S_g,

    because :math:`E[Q] = \\sigma_a^2 (1 - \\sum w_g^2) + \\sum_g w_g (1 - w_g) S_g
    + (\\sum_g w_g \\sigma_g^2 - T)/R`. Without the scan term (``scan_variance`` None) the
    scan part is counted in :math:`\\hat\\sigma_a^2` as if it were shared by every monkey alike:
    :math:`\\hat M` is then biased upward by :math:`\\sum_g S_g w_g \\big[(1 - w_g) \\sum w^2 /
    (1 - \\sum w^2) - w_g\\big]`, which is 0 with equal scan counts and +14% to +15% of M with
    the real study's 13 counts (19 to 251 scans) in the scan-level simulation of
    docs/statistics.md (``python -m icpcv bench variance``). Under leave-one-monkey-out
    :math:`\\hat T = \\sum_g w_g^2 s_g^2`. This is the general method-of-moments estimator of a
    between-unit variance with arbitrary weights and known within-unit variances (DerSimonian &
    Kacker 2007, with :math:`a_g = w_g` and within variances :math:`\\hat S_g + s_g^2/R`); with
    equal weights, one monkey per unit and no scan term it is the balanced one-way
    random-effects ANOVA estimator :math:`\\hat\\sigma_a^2 = (MS_b - MS_w)/R` (Searle, Casella &
    McCulloch 1992, ch. 3). A negative :math:`\\hat M` is reported as 0 (``truncated``); the
    untruncated value is kept as ``monkey_sampling_raw`` (truncation biases M upward).

    The seed ensemble's estimate has variance :math:`M + T/R`.

    Parameters
    ----------
    diffs : array_like, shape (..., G, R)
        Per-monkey loss differences D (model minus reference), one column per repeat. Leading
        axes (e.g. simulated cohorts) are vectorised over.
    weights : array_like, shape (G,) or (..., G)
        Scan counts or weights of the monkeys (normalised to sum to 1).
    units : array_like of int, shape (G,), optional
        Training unit of each monkey (monkeys that share a network in a repeat: a fold with
        several monkeys). Default: every monkey its own unit.
    scan_variance : array_like, shape (G,) or (..., G), optional
        :math:`\\hat S_g`, the scan-sampling variance of each monkey's mean difference
        (:func:`scan_level_parts`). None: no scan part (per-monkey differences without scan
        sampling; biased when monkeys have unequal scan counts, see above).

    Returns
    -------
    dict of float or ndarray
        ``monkey_sampling`` (M, truncated at 0), ``monkey_sampling_raw``, ``truncated``,
        ``between_monkeys`` (:math:`\\hat\\sigma_a^2 \\sum w_g^2`), ``scans_within_monkeys``
        (:math:`\\sum w_g^2 \\hat S_g`; the two add up to ``monkey_sampling_raw``),
        ``training_noise`` (T), ``single_seed_total`` (M + T), ``monkey_share``,
        ``training_share``, ``ensemble_total`` (M + T/R), ``sigma2_monkey`` (raw
        :math:`\\hat\\sigma_a^2`), ``estimate`` (:math:`\\bar\\Delta`), ``n_subjects``,
        ``n_training_units``, ``n_repeats``.

    References
    ----------
    Searle SR, Casella G, McCulloch CE (1992). Variance Components. Wiley, ch. 3-4.
    DerSimonian R, Kacker R (2007). Random-effects model for meta-analysis of clinical
    trials: an update. Contemp Clin Trials 28:105-114.
    Bouthillier X et al. (2021). Accounting for variance in machine learning benchmarks.
    Proc MLSys 3.

    Examples
    --------
    >>> import numpy as np
    >>> from icpcv.stats.repeats import variance_components
    >>> D = np.array([[-1.0, -0.6], [0.2, 0.6], [-0.4, 0.0], [0.8, 1.0]])
    >>> vc = variance_components(D, weights=[10, 10, 10, 10])
    >>> round(float(vc["training_noise"]), 4), round(float(vc["monkey_sampling"]), 4)
    (0.0163, 0.1275)
    """
    D = np.asarray(diffs, dtype=float)
    if D.ndim < 2 or D.shape[-1] < 2 or D.shape[-2] < 2:
        raise ValueError(f"diffs must have shape (..., G, R) with G >= 2 monkeys and R >= 2 "
                         f"repeats, got {D.shape}")
    G, R = D.shape[-2], D.shape[-1]
    w = np.broadcast_to(np.asarray(weights, dtype=float), D.shape[:-1])
    w = w / w.sum(axis=-1, keepdims=True)
    d_bar = D.mean(axis=-1)
    s2 = D.var(axis=-1, ddof=1)
    estimate = np.sum(w * d_bar, axis=-1)
    q = np.sum(w * (d_bar - estimate[..., None]) ** 2, axis=-1)
    sum_w2 = np.sum(w**2, axis=-1)
    if units is None:
        n_units = G
        training = np.sum(w**2 * s2, axis=-1)
    else:
        codes = np.unique(np.asarray(units), return_inverse=True)[1].ravel()
        if codes.size != G:
            raise ValueError(f"units needs one entry per monkey ({G}), got {codes.size}")
        n_units = int(codes.max()) + 1
        member = np.eye(n_units)[codes]  # (G, units) indicator
        unit_sums = np.einsum("...gr,gu->...ur", w[..., None] * D, member)
        training = unit_sums.var(axis=-1, ddof=1).sum(axis=-1)
    if scan_variance is None:
        S = np.zeros(D.shape[:-1])
    else:
        S = np.broadcast_to(np.asarray(scan_variance, dtype=float), D.shape[:-1])
    sigma2_a = ((q - (np.sum(w * s2, axis=-1) - training) / R - np.sum(w * (1 - w) * S, axis=-1))
                / (1.0 - sum_w2))
    between = sigma2_a * sum_w2
    scans = np.sum(w**2 * S, axis=-1)
    monkey_raw = between + scans
    monkey = np.maximum(monkey_raw, 0.0)
    total = monkey + training
    with np.errstate(invalid="ignore", divide="ignore"):
        monkey_share = np.where(total > 0, monkey / total, np.nan)
        training_share = np.where(total > 0, training / total, np.nan)
    return {
        "monkey_sampling": monkey, "monkey_sampling_raw": monkey_raw,
        "between_monkeys": between, "scans_within_monkeys": scans,
        "truncated": monkey_raw < 0, "training_noise": training,
        "single_seed_total": total, "monkey_share": monkey_share,
        "training_share": training_share, "ensemble_total": monkey + training / R,
        "sigma2_monkey": sigma2_a, "estimate": estimate,
        "n_subjects": G, "n_training_units": n_units, "n_repeats": R,
    }


def _units(pairs) -> dict:
    """Training units: connected groups of subjects linked by a shared fold (union-find)."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for subject, fold in pairs:
        a, b = find(("s", subject)), find(("f", fold))
        if a != b:
            parent[a] = b
    return {node[1]: find(node) for node in list(parent) if node[0] == "s"}


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass
class RepeatComparison:
    """The MAE comparison of one model against the reference in one analysis."""

    repeat: int | None  # None: the seed ensemble
    delta: float | None
    ci: list | None
    p_signflip: float | None
    p_adjusted: float | None
    n_subjects: int
    n_scans: int
    called_better: bool


@dataclass
class VarianceDecomposition:
    """Variance (unit²) of a single-seed MAE difference: monkey sampling + training noise."""

    estimator: str
    monkey_sampling: float | None
    monkey_sampling_raw: float | None
    truncated: bool
    training_noise: float | None
    single_seed_total: float | None
    monkey_share: float | None
    training_share: float | None
    ensemble_total: float | None
    n_subjects: int
    n_training_units: int
    n_repeats: int
    note: str | None = None
    #: the two parts of ``monkey_sampling_raw``: the monkeys' own effects and the scans within them
    between_monkeys: float | None = None
    scans_within_monkeys: float | None = None


@dataclass
class FoldSpread:
    """One fold: each repeat's MAE on the fold's held-out scans."""

    fold: str
    subjects: list
    n_scans: int
    mae: list
    mae_mean: float
    mae_sd: float
    ensemble_mae: float
    reference_mae: float | None


@dataclass
class ModelTrainingVariance:
    """Training randomness of one repeated model against the reference."""

    model: str
    n_repeats: int
    per_repeat: list
    delta_mean: float | None
    delta_sd: float | None
    delta_min: float | None
    delta_max: float | None
    n_called_better: int
    ensemble: RepeatComparison
    variance: VarianceDecomposition | None
    per_fold: list


@dataclass
class TrainingVariance:
    """Result of :func:`training_variance`; ``to_dict()`` is stats.json key ``training_variance``."""

    measured: bool
    reason: str | None
    n_repeats: int
    repeats: list
    repeated_models: list
    deterministic_models: list
    reference: str
    metric: str = "mae"
    rule: str = RULE
    ci_level: float = 0.95
    ci_method: str | None = None
    n_boot: int = 0
    seed: object = 0
    unit: str = "mmHg"
    models: dict = field(default_factory=dict)
    single_seed: list = field(default_factory=list)
    ensemble_winner: str | None = None
    ensemble_verdict: str | None = None
    n_agree: int | None = None
    verdict_suffix: str | None = None
    #: True when no single seed could be called better whatever its data (few monkeys), so that
    #: every seed agreeing with an ensemble that finds no evidence is guaranteed, not evidence
    agreement_guaranteed: bool = False
    #: the ensemble's verdict with the suffix inside its first sentence (:func:`with_seed_agreement`)
    verdict_with_agreement: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready copy: plain floats/ints/str/lists/dicts, NaN -> None."""
        return to_jsonable(copy.deepcopy(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingVariance":
        """stats.json's ``training_variance`` read back (the report reads it so, never recomputing it)."""
        d = dict(d)
        models = {}
        for name, m in (d.pop("models", None) or {}).items():
            m = dict(m)
            v = m.get("variance")
            models[name] = ModelTrainingVariance(
                **{**m, "per_repeat": [RepeatComparison(**c) for c in m.get("per_repeat") or []],
                   "ensemble": RepeatComparison(**m["ensemble"]) if m.get("ensemble") else None,
                   "variance": VarianceDecomposition(**v) if v else None,
                   "per_fold": [FoldSpread(**f) for f in m.get("per_fold") or []]})
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known}, models=models)

    def summary(self) -> str:
        """Plain-text table of the per-repeat differences, their spread and the decomposition."""
        u = self.unit
        if not self.measured:
            return f"Training randomness: not measured. {self.reason}"
        level = f"{round(self.ci_level * 100):g}%"
        lines = [f"Training randomness: {self.n_repeats} repeats per fold of "
                 f"{', '.join(self.repeated_models)}; MAE difference against {self.reference} "
                 f"({u}, negative = better), {level} CI; rule: {self.rule}",
                 f"{'model':<14}{'repeat':>9}{'delta':>9}  {'CI':<18}{'p':>8}{'p_holm':>8}  better"]
        for name, m in self.models.items():
            for c in m.per_repeat + [m.ensemble]:
                ci = (f"[{_num(c.ci[0])}, {_num(c.ci[1])}]" if c.ci and c.ci[0] is not None
                      else "n/a")
                label = "ensemble" if c.repeat is None else str(c.repeat)
                lines.append(f"{name:<14}{label:>9}{_num(c.delta):>9}  {ci:<18}"
                             f"{_num(c.p_signflip, 3):>8}{_num(c.p_adjusted, 3):>8}  "
                             f"{'yes' if c.called_better else 'no'}")
            lines.append(f"{name:<14}{'mean':>9}{_num(m.delta_mean):>9}  sd {_num(m.delta_sd)}, "
                         f"range {_num(m.delta_min)} to {_num(m.delta_max)}; called better alone "
                         f"in {m.n_called_better} of {m.n_repeats} repeats")
            v = m.variance
            if v is None:
                continue
            if v.single_seed_total is None:
                lines.append(f"{'':<14}variance: {v.note}")
                continue
            lines.append(
                f"{'':<14}variance of a single-seed difference {_num(v.single_seed_total, 4)} {u}² = "
                f"monkey sampling {_num(v.monkey_sampling, 4)} ({_pct(v.monkey_share)}"
                + (f"; of it scans within monkeys {_num(v.scans_within_monkeys, 4)}"
                   if v.scans_within_monkeys is not None else "") + ") + training "
                f"noise {_num(v.training_noise, 4)} ({_pct(v.training_share)}); ensemble of "
                f"{v.n_repeats}: {_num(v.ensemble_total, 4)} {u}²"
                + (" [monkey part truncated at 0]" if v.truncated else ""))
        lines.append(f"Verdict on the seed ensemble: "
                     f"{self.verdict_with_agreement or f'{self.ensemble_verdict} {self.verdict_suffix}'}")
        return "\n".join(lines)


def _num(x, digits=2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.0f}%"


def _finite(x):
    return x is not None and np.isfinite(x)


def called_better(comparison: dict) -> bool:
    """The verdict's rule on one comparison dict of ``analyze(...).to_dict()["comparisons"]``.

    True when the interval lies entirely below 0 and the Holm-adjusted p is below
    :data:`RULE_ALPHA` (as ``Comparison.better`` in icpcv/stats/results.py decides for the verdict).
    """
    hi = comparison["ci"][1] if comparison["ci"] else None
    p = comparison["p_adjusted"]
    return bool(_finite(hi) and hi < 0 and _finite(p) and p < RULE_ALPHA)


def verdict_winner(stats: dict) -> str | None:
    """The model the verdict calls better than the reference, or None (no evidence).

    ``stats`` is ``analyze(...).to_dict()``. The verdict's own choice
    (:func:`icpcv.stats.analysis.verdict_comparison` on the comparisons read back): among the
    models :func:`called_better` holds for, the one with the most negative paired MAE
    difference (first on ties); None when it holds for none.
    """
    best = verdict_comparison(None, [Comparison.from_dict(c) for c in stats["comparisons"]], RULE_ALPHA)
    return best.model if best is not None and called_better(best.to_dict()) else None


def _agrees(stats: dict, ensemble_winner: str | None) -> bool:
    """Does one single-seed analysis support the ensemble's verdict sentence?

    "The m lowers MAE ...": m alone is called better in it (whichever model its own verdict
    names). "There is no evidence ...": its own verdict calls no model better.
    """
    if ensemble_winner is None:
        return verdict_winner(stats) is None
    c = next(c for c in stats["comparisons"] if c["model"] == ensemble_winner and c["metric"] == "mae")
    return called_better(c)


def _comparison(stats: dict, model: str, repeat) -> RepeatComparison:
    c = next(c for c in stats["comparisons"] if c["model"] == model and c["metric"] == "mae")
    return RepeatComparison(repeat=repeat, delta=c["delta"], ci=list(c["ci"]) if c["ci"] else None,
                            p_signflip=c["p_signflip"], p_adjusted=c["p_adjusted"],
                            n_subjects=c["n_subjects"], n_scans=c["n_scans"],
                            called_better=called_better(c))


def _model_rows(table, model, repeat, plan):
    rows = table[table["model"] == model]
    return rows[(rows[REPEAT_COLUMN] == repeat).to_numpy(dtype=bool)] if model in plan else rows


def _loss_differences(table, model, reference, repeats, plan):
    """Per-subject MAE differences on shared scans and their scan-sampling variance:
    (subjects, D (G x R), S (G), n_g, training units)."""
    columns, pairs = [], set()
    for r in repeats:
        a = _model_rows(table, model, r, plan)
        b = _model_rows(table, reference, r, plan)
        j = a.merge(b[["subject", "scan_id", "y_true", "y_pred", "fold"]],
                    on=["subject", "scan_id"], suffixes=("", "_ref"))
        d = (j["y_pred"] - j["y_true"]).abs() - (j["y_pred_ref"] - j["y_true_ref"]).abs()
        columns.append(pd.Series(d.to_numpy(), index=pd.MultiIndex.from_frame(j[["subject", "scan_id"]])))
        pairs |= set(zip(j["subject"], j["fold"]))
        if reference in plan:
            pairs |= set(zip(j["subject"], j["fold_ref"]))
    # one row per shared scan, one column per repeat (a repeated model has every scan in every repeat)
    wide = pd.concat(columns, axis=1, join="inner")
    order = sorted(range(len(wide)), key=lambda i: (natural_key(wide.index[i][0]), i))
    wide = wide.iloc[order]
    subject_of = wide.index.get_level_values(0)
    subjects = list(dict.fromkeys(subject_of))
    n = pd.Series(subject_of).value_counts(sort=False).reindex(subjects).to_numpy()
    D, S = scan_level_parts(wide.to_numpy(dtype=float), n)
    unit_of = _units(pairs)
    roots = [unit_of[s] for s in subjects]
    codes = np.unique(np.array([str(x) for x in roots]), return_inverse=True)[1].ravel()
    return subjects, D, S, n.astype(float), codes


def _decompose(table, model, reference, repeats, plan) -> VarianceDecomposition:
    subjects, D, S, n, units = _loss_differences(table, model, reference, repeats, plan)
    R = len(repeats)
    if len(subjects) < 2:
        return VarianceDecomposition(ESTIMATOR, None, None, False, None, None, None, None, None,
                                     len(subjects), len(set(units)), R,
                                     note=f"{model} shares scans of fewer than 2 monkeys with "
                                          f"{reference}: no decomposition")
    vc = variance_components(D, n, units=units, scan_variance=S)
    notes = []
    if vc["truncated"]:
        notes.append(f"The moment estimate of the monkey-sampling variance was negative "
                     f"({float(vc['monkey_sampling_raw']):.4g}) and is reported as 0: the monkeys "
                     f"differ no more than training noise alone would make them.")
    single = [s for s, k in zip(subjects, n) if k < 2]
    if single:
        notes.append(f"{', '.join(str(s) for s in single)}: one scan, so no scan spread to measure; "
                     f"its scan part is counted with the monkey's own effect.")
    return VarianceDecomposition(
        estimator=ESTIMATOR, monkey_sampling=float(vc["monkey_sampling"]),
        monkey_sampling_raw=float(vc["monkey_sampling_raw"]), truncated=bool(vc["truncated"]),
        between_monkeys=float(vc["between_monkeys"]),
        scans_within_monkeys=float(vc["scans_within_monkeys"]),
        training_noise=float(vc["training_noise"]),
        single_seed_total=float(vc["single_seed_total"]),
        monkey_share=float(vc["monkey_share"]), training_share=float(vc["training_share"]),
        ensemble_total=float(vc["ensemble_total"]), n_subjects=len(subjects),
        n_training_units=int(vc["n_training_units"]), n_repeats=R, note=" ".join(notes) or None)


def _per_fold(table, ens, model, reference, repeats, plan) -> list:
    out = []
    rows = table[table["model"] == model]
    ens_m = ens[ens["model"] == model]
    ens_ref = ens[ens["model"] == reference].set_index("scan_id")
    for fold in sorted(rows["fold"].unique(), key=natural_key):
        maes = []
        for r in repeats:
            sub = _model_rows(rows, model, r, plan)
            sub = sub[sub["fold"] == fold]
            maes.append(float((sub["y_pred"] - sub["y_true"]).abs().mean()))
        e = ens_m[ens_m["fold"] == fold]
        ref = ens_ref.reindex(e["scan_id"]).dropna(subset=["y_pred"])
        out.append(FoldSpread(
            fold=fold, subjects=sorted(e["subject"].unique(), key=natural_key),
            n_scans=int(len(e)), mae=maes, mae_mean=float(np.mean(maes)),
            mae_sd=float(np.std(maes, ddof=1)) if len(maes) > 1 else None,
            ensemble_mae=float((e["y_pred"] - e["y_true"]).abs().mean()),
            reference_mae=float((ref["y_pred"] - ref["y_true"]).abs().mean()) if len(ref) else None))
    return out


def training_variance(predictions, reference="ols_iop", n_boot=10000, seed=0, ci_level=0.95,
                      ci_method=None, *, unit="mmHg", ensemble_result=None) -> TrainingVariance:
    """How much the MAE comparison depends on the training seed.

    For each repeat r, the single-seed table (:func:`single_seed_table`: every repeated model
    at repeat r, deterministic models unchanged) is analysed with
    :func:`icpcv.stats.analyze` with the same settings, so each repeat's difference, interval,
    sign-flip p and Holm-adjusted p (Holm family: the comparisons of that analysis) are exactly
    what a study that trained once with that seed would have reported. Per repeated model:

    * ``per_repeat``: its MAE comparison in each single-seed analysis, with
      ``called_better`` = the verdict's rule (:func:`called_better`);
    * ``delta_mean``, ``delta_sd`` (divisor R - 1), ``delta_min``, ``delta_max`` over repeats;
    * ``n_called_better``: how many repeats alone the rule calls better;
    * ``ensemble``: its comparison in the analysis of the seed ensemble (:func:`ensemble`);
    * ``variance``: :func:`variance_components` of the per-monkey MAE differences
      :math:`D_{gr}` on the scans shared with the reference, weights = shared scans per
      monkey, training units = monkeys linked by a fold. :math:`\\sum_g w_g D_{gr}` is exactly
      repeat r's ``delta``;
    * ``per_fold``: each repeat's MAE on each fold's held-out scans.

    Over the whole table: the ensemble's verdict and winner (:func:`verdict_winner`);
    ``single_seed``, per repeat its own verdict, the model it calls better and ``agrees``:
    whether that seed alone supports the ensemble's verdict sentence (when the ensemble's
    verdict says model m lowers MAE: m alone is called better by the rule in that seed; when it
    finds no evidence: that seed's verdict calls no model better either); ``n_agree``, how many
    repeats agree; and ``verdict_suffix`` ``"(k of R training seeds alone agree)"`` for the
    verdict sentence (:func:`with_seed_agreement`). When no single seed could be called better
    whatever its data (:func:`icpcv.stats.analysis.unreachable` in every repeat: with 5 or fewer
    monkeys the exact sign-flip p cannot fall below 2/2^5 = 0.0625) and the ensemble finds no
    evidence either, every seed agrees by necessity: ``agreement_guaranteed`` is True and the
    suffix says so, ``"(all R training seeds alone agree, as they must: with G monkeys no single
    seed can be called better)"``.

    With no repeats (no ``repeat`` column, or one repeat) training randomness was not
    measured: ``measured`` is False, ``reason`` says so, and nothing is analysed.

    Parameters
    ----------
    predictions : pandas.DataFrame
        A table with or without ``repeat`` (see :func:`validate_repeats`).
    reference, n_boot, seed, ci_level, ci_method, unit
        As :func:`icpcv.stats.analyze`; every analysis here uses them.
    ensemble_result : AnalysisResult, optional
        ``analyze`` of :func:`ensemble` of the same table with the same settings, to reuse.

    Returns
    -------
    TrainingVariance

    References
    ----------
    Bouthillier X et al. (2021). Accounting for variance in machine learning benchmarks.
    Proc MLSys 3. (And the references of :func:`variance_components`.)

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from icpcv.stats.synthetic import synthetic_predictions
    >>> from icpcv.stats.repeats import training_variance
    >>> base = synthetic_predictions(n_subjects=8, scans=(6, 12), seed=1,
    ...                              models={"ols_iop": (0.5, 1.0), "cnn": (0.0, 0.8)})
    >>> cnn = base[base.model == "cnn"]
    >>> rng = np.random.default_rng(0)
    >>> repeats = [cnn.assign(repeat=r, y_pred=cnn.y_pred + rng.normal(0, 1, 8)[cnn.fold])
    ...            for r in range(3)]
    >>> table = pd.concat([base[base.model == "ols_iop"]] + repeats, ignore_index=True)
    >>> tv = training_variance(table, n_boot=200)
    >>> tv.n_repeats, [c.repeat for c in tv.models["cnn"].per_repeat]
    (3, [0, 1, 2])
    >>> tv.verdict_suffix
    '(3 of 3 training seeds alone agree)'
    """
    table = validate_repeats(predictions)
    plan = repeat_plan(table)
    models = list(dict.fromkeys(table["model"]))
    repeats = list(next(iter(plan.values()))) if plan else []
    R = len(repeats) if plan else 1
    base = TrainingVariance(
        measured=False, reason=None, n_repeats=R, repeats=repeats, repeated_models=list(plan),
        deterministic_models=[m for m in models if m not in plan], reference=reference,
        ci_level=float(ci_level), ci_method=ci_method, n_boot=int(n_boot), seed=seed, unit=unit)
    if not plan:
        base.reason = ("Every model was trained once per fold (no repeat column), so training "
                       "randomness was not measured: another training seed could change each "
                       "trained model's difference by an unknown amount.")
        return base
    if R < 2:
        base.reason = (f"Each repeated model ({', '.join(plan)}) has one repeat, so training "
                       f"randomness was not measured: another training seed could change its "
                       f"difference by an unknown amount.")
        return base
    if reference not in models:
        base.reason = (f"The reference model {reference!r} is not in the predictions, so no "
                       f"repeat could be compared with it.")
        return base
    compared = [m for m in models if m != reference and (m in plan or reference in plan)]
    if not compared:
        base.reason = f"No model other than the reference {reference!r} to compare."
        return base

    settings = dict(reference=reference, n_boot=n_boot, seed=seed, ci_level=ci_level,
                    ci_method=ci_method, unit=unit)
    single = [analyze(_slice(table, r), **settings).to_dict() for r in repeats]
    ens_table = _ensemble_frame(table)
    if ensemble_result is None:
        ens = analyze(ens_table, **settings).to_dict()
    else:
        ens = ensemble_result.to_dict()
        asked = {"reference": reference, "n_boot": int(n_boot), "ci_level": float(ci_level)}
        got = {k: ens.get(k) for k in asked}
        if got != asked or ens.get("seed") != seed or ens.get("n_rows") != len(ens_table):
            raise ValueError(f"ensemble_result was not made from this table's ensemble with these "
                             f"settings (asked {asked}, seed {seed!r}, {len(ens_table)} rows; got "
                             f"{got}, seed {ens.get('seed')!r}, {ens.get('n_rows')} rows)")

    for m in compared:
        per_repeat = [_comparison(s, m, r) for s, r in zip(single, repeats)]
        deltas = np.array([np.nan if c.delta is None else c.delta for c in per_repeat])
        ok = deltas[np.isfinite(deltas)]
        base.models[m] = ModelTrainingVariance(
            model=m, n_repeats=R, per_repeat=per_repeat,
            delta_mean=float(ok.mean()) if ok.size else None,
            delta_sd=float(ok.std(ddof=1)) if ok.size > 1 else None,
            delta_min=float(ok.min()) if ok.size else None,
            delta_max=float(ok.max()) if ok.size else None,
            n_called_better=sum(c.called_better for c in per_repeat),
            ensemble=_comparison(ens, m, None),
            variance=_decompose(table, m, reference, repeats, plan),
            per_fold=_per_fold(table, ens_table, m, reference, repeats, plan))

    base.ensemble_winner = verdict_winner(ens)
    base.ensemble_verdict = ens["verdict"]
    base.single_seed = [{"repeat": r, "winner": verdict_winner(s), "verdict": s["verdict"],
                         "agrees": _agrees(s, base.ensemble_winner)}
                        for r, s in zip(repeats, single)]
    base.n_agree = sum(s["agrees"] for s in base.single_seed)
    # With few monkeys (or a large Holm family) no single seed can pass the rule whatever its data:
    # every seed then "agrees" with an ensemble that finds no evidence, and the count says nothing.
    blocked = [_cannot_call_better(s) for s in single]
    if base.ensemble_winner is None and all(blocked):
        base.agreement_guaranteed = True
        G = max(c["n_subjects"] for s in single for c in s["comparisons"] if c["metric"] == "mae")
        base.verdict_suffix = (f"(all {R} training seeds alone agree, as they must: with "
                               f"{G} monkeys no single seed can be called better)")
    else:
        base.verdict_suffix = f"({base.n_agree} of {R} training seeds alone agree)"
    ens_res = ensemble_result if ensemble_result is not None else AnalysisResult.from_dict(ens)
    base.verdict_with_agreement = with_seed_agreement(
        verdict_sentences(ens_res.comparisons, ens_res.models, reference, n_subjects=ens_res.n_subjects,
                          ci_level=ci_level, unit=unit), base.verdict_suffix)
    base.measured = True
    return base


def _cannot_call_better(stats: dict) -> bool:
    """No model of this analysis could pass the rule whatever the data
    (:func:`icpcv.stats.analysis.unreachable`: the smallest possible Holm-adjusted p is >= 0.05)."""
    return unreachable([Comparison.from_dict(c) for c in stats["comparisons"]], RULE_ALPHA) is not None


def with_seed_agreement(sentences: list, suffix: str | None) -> str:
    """The verdict text with the seed-agreement suffix inside its first sentence, before the period.

    ``sentences`` are :func:`icpcv.stats.analysis.verdict_sentences`; the suffix is
    ``TrainingVariance.verdict_suffix``. The one place that joins them (the analysis's verdict,
    the report):

    >>> from icpcv.stats.repeats import with_seed_agreement
    >>> with_seed_agreement(["The cnn lowers MAE by 2.1 mmHg (...; 14 monkeys).", "Second."],
    ...                     "(4 of 5 training seeds alone agree)")
    'The cnn lowers MAE by 2.1 mmHg (...; 14 monkeys) (4 of 5 training seeds alone agree). Second.'
    """
    parts = list(sentences)
    if suffix and parts:
        first = parts[0]
        parts[0] = f"{first[:-1]} {suffix}." if first.endswith(".") else f"{first} {suffix}"
    return " ".join(parts)


__all__ = [
    "validate_repeats", "repeat_plan", "ensemble", "single_seed_table", "variance_components",
    "scan_level_parts",
    "training_variance", "called_better", "verdict_winner", "with_seed_agreement", "TrainingVariance",
    "ModelTrainingVariance", "RepeatComparison", "VarianceDecomposition", "FoldSpread",
    "REPEAT_COLUMN", "RULE", "RULE_ALPHA", "ESTIMATOR",
]
