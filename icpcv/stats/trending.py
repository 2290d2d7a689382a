"""Trending: does a model follow ICP when ICP changes inside one monkey?

Agreement (Bland-Altman) asks whether a prediction is close to the measured level. A monitor is
also used to follow *changes* within one patient. Method-comparison studies of cardiac output
answer that with the four-quadrant plot and its concordance rate (Critchley, Lee & Ho 2010) and
with the polar plot (Critchley, Yang & Lee 2011). This module applies both to out-of-fold ICP
predictions, within each held-out monkey.

Which changes (the change pairs)
--------------------------------
A monkey's *pressure step* is one (IOP step, ICP step) combination of the experiment: the study
set ICP by lumbar drain and IOP by cannulation, and scanned each combination one or more times.
Within one monkey and one IOP step, the ICP steps are ordered by their mean measured ICP, and each
**consecutive pair of ICP steps** gives one change pair:

* measured change  Δy = ȳ(step k+1) − ȳ(step k), the mean measured ICP (``y_true``) of the
  scans of each step; positive by construction (changes are taken upwards);
* predicted change Δp = p̄(step k+1) − p̄(step k), the mean out-of-fold prediction of the same
  scans.

IOP is held at one step, so an IOP-only model has nothing to follow: its predicted change is only
noise in the measured IOP. Changes are taken between *consecutive* steps (the smallest changes
the experiment made) so that pairs do not reuse the same change twice, as in serial cardiac-output
measurements. Only scans that every model in the table predicted are used, so every model is
judged on the same pairs. Because every measured change is positive, the left half of the
four-quadrant plot is empty; the concordance rate and the polar statistics do not depend on the
direction in which a pair is taken.

Steps come from columns ``iop_step`` and ``icp_step`` (set levels or any labels) when the table
has them or when ``steps`` is given, else from the values: the monkey's IOP values are sorted and
a new IOP step starts where the gap to the previous value exceeds ``iop_tolerance``; the same rule
on measured ICP inside each IOP step gives the ICP steps. The gap rule is exact for set levels
that repeat (the seed's IOP column) and can merge or split steps when measured pressures scatter
by more than the spacing of the levels (the phantom's measured pressures scatter by up to
±2 mmHg around levels 3-5 mmHg apart): give the set levels whenever they exist.

Statistics
----------
Four-quadrant concordance rate (Critchley et al. 2010). A pair is *concordant* when the predicted
and measured changes have the same sign, discordant when they have opposite signs; a predicted
change of exactly zero (a model whose prediction does not move) counts one half, the chance
level. Pairs inside the exclusion zone are left out, because small measured changes are mostly
measurement noise:

* ``exclusion="measured"`` (default): left out when \\|Δy\\| < z. The retained pairs are then
  the same for every model, so the paired comparison is over identical changes.
* ``exclusion="square"``: left out when both \\|Δy\\| < z and \\|Δp\\| < z (the central square
  of the four-quadrant plot, as usually drawn for cardiac output).

.. math::

    CR = \\frac{\\sum_g (a_g + \\tfrac12 t_g)}{\\sum_g n_g}

with a_g concordant pairs, t_g zero-change pairs and n_g retained pairs of monkey g. The pairs are
pooled over monkeys (a monkey with more steps weighs more).

Polar plot (Critchley et al. 2011). Each pair becomes a point at radius r = \\|Δy + Δp\\|/2 (the
mean change) and angle θ between the vector (Δy, Δp) and the line of identity, after turning
pairs with a negative mean change by 180° so that θ ∈ (−90°, 90°]:

.. math::

    θ = \\operatorname{atan2}(s Δp, s Δy) − 45°,\\qquad s = \\operatorname{sign}(Δy + Δp).

θ > 0: the model's change is larger than the measured one; θ < 0: smaller, or (below −45°)
opposite. Pairs with r < z are left out (the polar plot's own exclusion rule: a pair whose two
changes cancel has r = 0 and is dropped even when they disagree completely, Saugel et al. 2015).
Angular bias = mean θ; radial limits of agreement = bias ± 1.96·SD(θ) (SD with n − 1), and,
without the normal assumption, the 2.5% and 97.5% quantiles of θ; ``within_accept`` is the share
of pairs with \\|θ\\| ≤ 30°, the sector Critchley et al. (2011) took as good trending.

Intervals are monkey-level (docs/statistics.md: the unit of evidence is the monkey):

* concordance rate, ``ci_method="logit_t"`` (default): leave-one-monkey-out jackknife on the logit
  scale with a ½ continuity correction, logit((Σa + ½Σt + ½)/(Σn + 1)), and a t(G − 1) quantile,
  transformed back (and widened, if needed, to contain the estimate). In the calibration of
  :mod:`icpcv.stats.trending_calibration` (14 monkeys of 8-16 pairs, per-monkey rates drawn from
  a Beta distribution, 1,000 data sets per row, data sets without an interval counted as misses)
  the 95% interval covered 95.1% (rate 0.5), 96.3% (0.8), 96.1% (0.9), 95.5-95.9% (0.97),
  where at 0.9-0.97 the percentile bootstrap covered 83-90%, BCa 90-94% and the plain
  jackknife t 84-92%. At 0.99 (one or two discordant pairs in all) every method covered only
  73-77%: with fewer than :data:`MIN_MINORITY_PAIRS` discordant (or concordant) pairs a warning
  says so. When every retained pair agrees (or every pair disagrees) the interval is None: the
  monkeys show no spread to learn from.
* difference of concordance rates (model − reference): the engine's ``t`` method, jackknife over
  monkeys of the pooled difference with a t(G − 1) quantile (covered 94.0-96.0% in the same
  calibration, 2,000 data sets per row). The test is the exact sign-flip test over monkeys of the
  per-monkey rate differences (:func:`icpcv.stats.inference.signflip_test`), Holm-adjusted across
  the models.
* angular bias: jackknife over monkeys with a t(G − 1) quantile. The radial limits of agreement
  treat pairs as independent and carry no interval.

References
----------
Critchley LA, Lee A, Ho AM-H (2010). A critical review of the ability of continuous cardiac output
monitors to measure trends in cardiac output. Anesth Analg 111:1180-1192.
Critchley LA, Yang XX, Lee A (2011). Assessment of trending ability of cardiac output monitors by
polar plot methodology. J Cardiothorac Vasc Anesth 25:536-546.
Saugel B, Grothe O, Wagner JY (2015). Tracking changes in cardiac output: statistical
considerations on the 4-quadrant plot and the polar plot methodology. Anesth Analg 121:514-524.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from icpcv.stats import bootstrap
from icpcv.errors import InputError
from icpcv.stats.inference import holm, signflip_test
from icpcv.stats.io import validate_predictions
from icpcv.util import natural_key, to_jsonable

#: Default exclusion zone (mmHg): about 10-15% of a typical ICP of 15 mmHg, as Critchley et al.
#: used 0.5 L/min (10-15%) for cardiac output; about twice the phantom's per-scan ICP noise.
DEFAULT_EXCLUSION_ZONE = 2.0
EXCLUSION_RULES = ("measured", "square")
#: Gap (mmHg) between sorted pressures that starts a new step when steps come from the values.
DEFAULT_IOP_TOLERANCE = 2.5
DEFAULT_ICP_TOLERANCE = 2.5
#: |change| below this (mmHg) is floating-point noise of a prediction that did not move.
ZERO_CHANGE = 1e-9
POLAR_MULTIPLIER = 1.96
#: Critchley et al. (2011): radial limits within ±30° indicate good trending.
POLAR_ACCEPT_DEG = 30.0
RATE_CI_METHODS = ("logit_t", "t", "percentile", "bca")
DEFAULT_RATE_CI_METHOD = "logit_t"
#: Fewer discordant (or concordant) pairs than this: the rate's interval undercovers.
MIN_MINORITY_PAIRS = 5

PAIR_DEFINITION = ("consecutive ICP steps at the same IOP step within each monkey, ordered by "
                   "mean measured ICP, on per-step mean measured and predicted ICP")


# --------------------------------------------------------------------------- steps and pairs


def gap_levels(values, tolerance):
    """Step index of each value: sorted values start a new step where the gap exceeds ``tolerance``.

    >>> gap_levels([15.2, 4.9, 30.1, 14.8, 5.3], 2.5).tolist()
    [1, 0, 2, 1, 0]
    """
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    new_step = np.r_[False, np.diff(v[order]) > tolerance]
    codes = np.empty(v.size, dtype=int)
    codes[order] = np.cumsum(new_step)
    return codes


@dataclass
class ChangePairs:
    """Change pairs of every model (see the module docstring for which pairs).

    ``frame`` has one row per (model, pair): ``model, subject, iop_step, icp_step_from,
    icp_step_to, measured_from, measured_to, delta_measured, predicted_from, predicted_to,
    delta_predicted, n_from, n_to, iop_from, iop_to, delta_iop`` (the last three NaN without
    IOP). ``scan_steps`` has each used scan's ``subject, scan_id, iop_step, icp_step``.
    """

    frame: pd.DataFrame
    scan_steps: pd.DataFrame
    step_source: str
    subjects: list
    definition: str = PAIR_DEFINITION
    warnings: list = field(default_factory=list)

    def for_model(self, model) -> pd.DataFrame:
        return self.frame[self.frame["model"] == model]

    @property
    def models(self) -> list:
        return list(dict.fromkeys(self.frame["model"]))


def _steps_from_columns(scans, source, rows_of):
    out = scans.copy()
    for col in ("iop_step", "icp_step"):
        blank = out[col].isna() | (out[col].astype(str).str.strip() == "")
        if blank.any():
            j = int(np.flatnonzero(blank.to_numpy())[0])
            raise InputError(f"{source} row {rows_of(j)}, column {col}: the step is blank; give every "
                             f"scan its {col} or leave both step columns out (steps then come from "
                             f"the pressures)")
        out[col] = out[col].map(_step_label)
    return out


def _step_label(value) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value).strip()


def _steps_from_values(scans, iop_tolerance, icp_tolerance):
    out = scans.copy()
    out["iop_step"] = ""
    out["icp_step"] = ""
    for _, idx in out.groupby("subject", sort=False).groups.items():
        iop = out.loc[idx, "iop"].to_numpy(float)
        iop_codes = gap_levels(iop, iop_tolerance)
        iop_label = {k: f"{iop[iop_codes == k].mean():.1f}" for k in np.unique(iop_codes)}
        out.loc[idx, "iop_step"] = [iop_label[k] for k in iop_codes]
        for k in np.unique(iop_codes):
            sub = np.asarray(idx)[iop_codes == k]
            icp = out.loc[sub, "y_true"].to_numpy(float)
            icp_codes = gap_levels(icp, icp_tolerance)
            icp_label = {c: f"{icp[icp_codes == c].mean():.1f}" for c in np.unique(icp_codes)}
            out.loc[sub, "icp_step"] = [icp_label[c] for c in icp_codes]
    return out


def change_pairs(predictions, *, steps=None, iop_tolerance=DEFAULT_IOP_TOLERANCE,
                 icp_tolerance=DEFAULT_ICP_TOLERANCE, source="predictions") -> ChangePairs:
    """Change pairs between consecutive ICP steps at the same IOP step, per monkey and model.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Out-of-fold predictions ``fold, subject, scan_id, model, y_true, y_pred`` and ``iop``
        (needed unless the steps are given). Optional columns ``iop_step`` and ``icp_step``
        label each scan's pressure step (set levels or any labels).
    steps : pandas.DataFrame, optional
        ``scan_id, iop_step, icp_step`` for the scans (e.g. the phantom's ``iop_set``/``icp_set``);
        used instead of step columns in ``predictions``.
    iop_tolerance, icp_tolerance : float
        Without step labels: a gap larger than this between sorted pressures of a monkey (ICP:
        within one IOP step) starts a new step (mmHg).
    source : str
        Name of the table for error messages.

    Returns
    -------
    ChangePairs

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [(s, f"{s}{i}", icp, iop) for s in "AB" for i, (icp, iop) in
    ...         enumerate([(5, 15), (5.4, 15), (20, 15), (5, 30), (21, 30)])]
    >>> truth = pd.DataFrame(rows, columns=["subject", "scan_id", "y_true", "iop"])
    >>> preds = pd.concat([truth.assign(model="cnn", y_pred=truth.y_true + 1),
    ...                    truth.assign(model="ols_iop", y_pred=10 + 0.1 * truth.iop)])
    >>> pairs = change_pairs(preds.assign(fold=preds.subject))
    >>> pairs.for_model("cnn")[["subject", "iop_step", "delta_measured", "delta_predicted"]]
      subject iop_step  delta_measured  delta_predicted
    0       A     15.0            14.8             14.8
    1       A     30.0            16.0             16.0
    2       B     15.0            14.8             14.8
    3       B     30.0            16.0             16.0
    """
    raw = pd.DataFrame(predictions)
    df = validate_predictions(raw, source=source)
    df["_row"] = np.arange(len(df)) + 1
    warnings = []
    models = list(dict.fromkeys(df["model"]))

    # one measured value per scan, the same pairs for every model: scans every model predicted
    per_model = df.groupby("scan_id")["model"].nunique()
    shared = per_model.index[per_model == len(models)]
    if len(shared) < len(per_model):
        warnings.append(f"Trending uses the {len(shared)} scans that all {len(models)} models "
                        f"predicted; {len(per_model) - len(shared)} scans lacking a model were left out.")
    df = df[df["scan_id"].isin(shared)]
    scans = df.drop_duplicates("scan_id")[["subject", "scan_id", "y_true", "_row"]
                                          + [c for c in ("iop", "iop_step", "icp_step") if c in df]]
    scans = scans.reset_index(drop=True)

    def rows_of(j):
        return int(scans["_row"].iloc[j])

    if steps is not None:
        st = pd.DataFrame(steps)
        missing = [c for c in ("scan_id", "iop_step", "icp_step") if c not in st.columns]
        if missing:
            raise InputError(f"steps table: missing column(s) {', '.join(missing)}; it needs "
                             f"scan_id, iop_step, icp_step")
        st = st[["scan_id", "iop_step", "icp_step"]].copy()
        st["scan_id"] = st["scan_id"].map(lambda v: str(v).strip())
        st["_steps_row"] = np.arange(len(st)) + 1
        dup = st["scan_id"].duplicated()
        if dup.any():
            j = int(np.flatnonzero(dup.to_numpy())[0])
            raise InputError(f"steps table row {j + 1}, column scan_id: scan {st['scan_id'].iloc[j]!r} "
                             f"appears twice")
        scans = scans.drop(columns=[c for c in ("iop_step", "icp_step") if c in scans])
        scans = scans.merge(st, on="scan_id", how="left")
        lacking = scans["iop_step"].isna() | scans["icp_step"].isna()
        if lacking.any():
            warnings.append(f"{int(lacking.sum())} scans have no step in the steps table and were "
                            f"left out of the change pairs.")
            scans = scans[~lacking].reset_index(drop=True)
        scans = _steps_from_columns(scans, "steps table", lambda j: int(scans["_steps_row"].iloc[j]))
        step_source = "steps table (iop_step, icp_step)"
    elif "iop_step" in scans and "icp_step" in scans:
        scans = _steps_from_columns(scans, source, rows_of)
        step_source = f"columns iop_step, icp_step of {source}"
    else:
        if "iop" not in scans:
            raise InputError(f"{source}: trending needs the pressure steps: an iop column (steps are "
                             f"then read from the pressures), columns iop_step and icp_step, or a "
                             f"steps table")
        no_iop = scans["iop"].isna()
        if no_iop.any():
            who = ", ".join(sorted(scans.loc[no_iop, "subject"].unique(), key=natural_key))
            warnings.append(f"{int(no_iop.sum())} scans without IOP (monkeys {who}) were left out of "
                            f"the change pairs.")
            scans = scans[~no_iop].reset_index(drop=True)
        scans = _steps_from_values(scans, iop_tolerance, icp_tolerance)
        step_source = (f"pressures (gap rule: a new IOP step after a gap > {iop_tolerance:g} mmHg, "
                       f"a new ICP step after a gap > {icp_tolerance:g} mmHg)")

    d = df.drop(columns=[c for c in ("iop_step", "icp_step") if c in df]).merge(
        scans[["scan_id", "iop_step", "icp_step"]], on="scan_id", how="inner")
    if "iop" not in d:
        d["iop"] = np.nan
    keys = ["model", "subject", "iop_step", "icp_step"]
    means = (d.groupby(keys, sort=False)
             .agg(measured=("y_true", "mean"), predicted=("y_pred", "mean"), n=("scan_id", "size"),
                  iop=("iop", "mean"))
             .reset_index())
    means = means.sort_values(["model", "subject", "iop_step", "measured", "icp_step"], kind="stable")
    nxt = means.groupby(["model", "subject", "iop_step"], sort=False).shift(-1)
    ok = nxt["measured"].notna()
    frame = pd.DataFrame({
        "model": means["model"][ok], "subject": means["subject"][ok],
        "iop_step": means["iop_step"][ok],
        "icp_step_from": means["icp_step"][ok], "icp_step_to": nxt["icp_step"][ok],
        "measured_from": means["measured"][ok], "measured_to": nxt["measured"][ok],
        "predicted_from": means["predicted"][ok], "predicted_to": nxt["predicted"][ok],
        "n_from": means["n"][ok].astype(int), "n_to": nxt["n"][ok].astype(int),
        "iop_from": means["iop"][ok], "iop_to": nxt["iop"][ok],
    })
    frame["delta_measured"] = frame["measured_to"] - frame["measured_from"]
    frame["delta_predicted"] = frame["predicted_to"] - frame["predicted_from"]
    frame["delta_iop"] = frame["iop_to"] - frame["iop_from"]
    subject_order = {s: i for i, s in enumerate(sorted(df["subject"].unique(), key=natural_key))}
    model_order = {m: i for i, m in enumerate(models)}
    frame = (frame.assign(_m=frame["model"].map(model_order), _s=frame["subject"].map(subject_order),
                          _i=pd.to_numeric(frame["iop_step"], errors="coerce"))
             .sort_values(["_m", "_s", "_i", "iop_step", "measured_from"], kind="stable")
             .drop(columns=["_m", "_s", "_i"]))
    cols = ["model", "subject", "iop_step", "icp_step_from", "icp_step_to", "measured_from",
            "measured_to", "delta_measured", "predicted_from", "predicted_to", "delta_predicted",
            "n_from", "n_to", "iop_from", "iop_to", "delta_iop"]
    frame = frame[cols].reset_index(drop=True)
    for m in models:
        if not (frame["model"] == m).any():
            warnings.append(f"Model {m} has no change pairs: no monkey has two ICP steps at one IOP step.")
    subjects = sorted(frame["subject"].unique(), key=natural_key)
    return ChangePairs(frame, scans[["subject", "scan_id", "iop_step", "icp_step"]], step_source,
                       subjects, warnings=warnings)


# --------------------------------------------------------------------------- concordance


def concordance_scores(delta_measured, delta_predicted):
    """Per pair: 1 concordant, 0 discordant, ½ when either change is zero (chance level).

    >>> concordance_scores([3, 3, -2, 4], [1, -1, -5, 0]).tolist()
    [1.0, 0.0, 1.0, 0.5]
    """
    dm = np.asarray(delta_measured, dtype=float)
    dp = np.asarray(delta_predicted, dtype=float)
    zero = (np.abs(dm) <= ZERO_CHANGE) | (np.abs(dp) <= ZERO_CHANGE)
    return np.where(zero, 0.5, (np.sign(dm) == np.sign(dp)).astype(float))


def retained_pairs(delta_measured, delta_predicted, exclusion_zone=DEFAULT_EXCLUSION_ZONE,
                   exclusion="measured"):
    """Boolean mask of the pairs outside the four-quadrant exclusion zone.

    ``"measured"``: kept when \\|Δy\\| ≥ z. ``"square"``: left out when \\|Δy\\| < z and \\|Δp\\| < z.

    >>> retained_pairs([1, 3, 1], [5, 0, 1], 2.0, "measured").tolist()
    [False, True, False]
    >>> retained_pairs([1, 3, 1], [5, 0, 1], 2.0, "square").tolist()
    [True, True, False]
    """
    if exclusion not in EXCLUSION_RULES:
        raise ValueError(f"unknown exclusion rule {exclusion!r}; choose from {', '.join(EXCLUSION_RULES)}")
    if not np.isfinite(exclusion_zone) or exclusion_zone < 0:
        raise ValueError(f"exclusion_zone must be a finite number >= 0, got {exclusion_zone}")
    dm = np.abs(np.asarray(delta_measured, dtype=float))
    dp = np.abs(np.asarray(delta_predicted, dtype=float))
    if exclusion == "measured":
        return dm >= exclusion_zone
    return (dm >= exclusion_zone) | (dp >= exclusion_zone)


def _subject_codes(subject, n):
    if subject is None:
        return np.zeros(n, dtype=int), ["all"]
    labels = np.asarray(subject).astype(str)
    order = sorted(set(labels), key=natural_key)
    code = {s: i for i, s in enumerate(order)}
    return np.array([code[s] for s in labels], dtype=int), order


def _rate_interval(c, n, ci_level, method, counts=None):
    """Monkey-level interval for Σc/Σn from per-monkey sums; ``(ci, note)``, ci None if not honest."""
    active = n > 0
    G = int(active.sum())
    C, N = float(c.sum()), float(n.sum())
    if G < 2:
        return None, f"{G} monkey{'' if G == 1 else 's'} with retained pairs: no monkey-level interval"
    if C == N or C == 0:
        word = "agrees" if C == N else "disagrees"
        return None, (f"every one of the {N:g} retained pairs {word} in direction, in all {G} monkeys: "
                      f"the monkeys show no spread to build an interval from")
    est = C / N
    c, n = c[active], n[active]
    if method == "logit_t":
        theta = logit((C + 0.5) / (N + 1))
        jack = logit((C - c + 0.5) / (N - n + 1))
        lo, hi = bootstrap.t_interval(theta, jack, ci_level)
        lo, hi = min(float(expit(lo)), est), max(float(expit(hi)), est)
    elif method == "t":
        with np.errstate(invalid="ignore", divide="ignore"):
            jack = (C - c) / (N - n)
        lo, hi = bootstrap.t_interval(est, jack, ci_level)
    elif method in ("percentile", "bca"):
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (counts[:, active] @ c) / (counts[:, active] @ n)
            jack = (C - c) / (N - n)
        lo, hi = (bootstrap.percentile_interval(est, boot, ci_level) if method == "percentile"
                  else bootstrap.bca_interval(est, boot, jack, ci_level))
    else:
        raise ValueError(f"unknown ci_method {method!r}; choose from {', '.join(RATE_CI_METHODS)}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None, "the interval could not be computed (undefined leave-one-monkey-out values)"
    return (float(lo), float(hi)), None


@dataclass
class ConcordanceResult:
    """Four-quadrant concordance rate (a proportion in [0, 1]) with its monkey-level interval."""

    rate: float
    ci: tuple | None
    ci_method: str
    ci_note: str | None
    ci_level: float
    n_pairs: int
    n_pairs_total: int
    n_concordant: int
    n_discordant: int
    n_ties: int
    n_subjects: int
    exclusion_zone: float
    exclusion: str
    per_subject: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return to_jsonable({
            "concordance_rate": {"estimate": self.rate, "ci": None if self.ci is None else list(self.ci),
                                 "method": self.ci_method, "ci_note": self.ci_note},
            "ci_level": self.ci_level, "n_pairs": self.n_pairs, "n_pairs_total": self.n_pairs_total,
            "n_excluded": self.n_pairs_total - self.n_pairs, "n_concordant": self.n_concordant,
            "n_discordant": self.n_discordant, "n_ties": self.n_ties, "n_subjects": self.n_subjects,
            "exclusion_zone": self.exclusion_zone, "exclusion": self.exclusion,
            "per_subject": self.per_subject, "notes": list(self.notes)})

    def summary(self) -> str:
        level = f"{round(self.ci_level * 100):g}%"
        ci = (f"{level} CI {_pct(self.ci[0])} to {_pct(self.ci[1])}" if self.ci is not None
              else f"no interval: {self.ci_note}")
        return (f"concordance rate {_pct(self.rate)} ({ci}); {self.n_pairs} of {self.n_pairs_total} "
                f"pairs outside the exclusion zone ({self.exclusion}, {self.exclusion_zone:g} mmHg), "
                f"{self.n_subjects} monkeys; concordant {self.n_concordant}, discordant "
                f"{self.n_discordant}, no change {self.n_ties}")


def _pct(x, digits=0):
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def _concordance_from_codes(dm, dp, codes, subjects, exclusion_zone, exclusion, ci_level, ci_method,
                            counts):
    keep = retained_pairs(dm, dp, exclusion_zone, exclusion)
    score = concordance_scores(dm, dp)
    G = len(subjects)
    c = np.bincount(codes[keep], weights=score[keep], minlength=G)
    n = np.bincount(codes[keep], minlength=G).astype(float)
    ties = int(np.sum(keep & (score == 0.5)))
    conc = int(np.sum(keep & (score == 1.0)))
    disc = int(np.sum(keep & (score == 0.0)))
    N = int(n.sum())
    rate = float(c.sum() / N) if N else float("nan")
    ci, note = _rate_interval(c, n, ci_level, ci_method, counts)
    if N and ties == N:
        ci, note = None, ("the prediction did not change between any two steps: the rate is the "
                          "chance level 50% by construction")
    notes = []
    minority = min(conc, disc) + ties / 2
    if N and ci is not None and minority < MIN_MINORITY_PAIRS:
        notes.append(f"Only {minority:g} {'discordant' if disc <= conc else 'concordant'} pairs: the "
                     f"interval undercovers near 0% or 100% (calibration: 73-77% coverage at a rate "
                     f"of 99%).")
    per = {}
    for i, s in enumerate(subjects):
        total = int(np.sum(codes == i))
        per[s] = {"n_pairs": int(n[i]), "n_pairs_total": total,
                  "concordance_rate": float(c[i] / n[i]) if n[i] else None}
    res = ConcordanceResult(rate, ci, ci_method, note, ci_level, N, int(dm.size), conc, disc, ties,
                            int(np.sum(n > 0)), float(exclusion_zone), exclusion, per, notes)
    return res, c, n


def concordance_rate(delta_measured, delta_predicted, subject=None, *,
                     exclusion_zone=DEFAULT_EXCLUSION_ZONE, exclusion="measured", ci_level=0.95,
                     ci_method=DEFAULT_RATE_CI_METHOD, n_boot=10000, seed=0) -> ConcordanceResult:
    """Four-quadrant concordance rate with a monkey-level interval (Critchley et al. 2010).

    A pair is concordant when measured change Δy and predicted change Δp have the same sign;
    pairs inside the exclusion zone z are left out (``"measured"``: \\|Δy\\| < z; ``"square"``:
    \\|Δy\\| < z and \\|Δp\\| < z). With a_g concordant, t_g zero-change and n_g retained pairs
    of subject g:

    .. math::

        CR = \\frac{\\sum_g (a_g + t_g/2)}{\\sum_g n_g}

    The interval is over subjects (module docstring): by default the jackknife over subjects on
    the logit scale with a ½ continuity correction and a t(G − 1) quantile; ``"percentile"`` and
    ``"bca"`` use ``n_boot`` subject-level bootstrap resamples drawn from ``seed``.

    Parameters
    ----------
    delta_measured, delta_predicted : array-like
        Measured and predicted change of each pair (mmHg).
    subject : array-like, optional
        Subject (monkey) of each pair; without it all pairs form one subject and no interval is
        given.
    exclusion_zone : float
        z in mmHg (default 2).
    exclusion : {"measured", "square"}
    ci_level : float
    ci_method : {"logit_t", "t", "percentile", "bca"}

    Returns
    -------
    ConcordanceResult
        ``rate`` (a proportion), ``ci`` (None with ``ci_note`` saying why when no honest interval
        exists), counts, ``per_subject``.

    References
    ----------
    Critchley LA, Lee A, Ho AM-H (2010). A critical review of the ability of continuous cardiac
    output monitors to measure trends in cardiac output. Anesth Analg 111:1180-1192.

    Examples
    --------
    >>> dm = [3, 4, 5, 3, 6, 1, 4, 5, 3, 4]
    >>> dp = [2, 3, -1, 4, 5, 9, 3, 1, -2, 2]
    >>> res = concordance_rate(dm, dp, subject=list("AABBCCDDEE"))
    >>> round(res.rate, 3), res.n_pairs, res.n_concordant, res.n_discordant
    (0.778, 9, 7, 2)
    >>> [round(x, 3) for x in res.ci]
    [0.348, 0.944]
    """
    if ci_method not in RATE_CI_METHODS:
        raise ValueError(f"unknown ci_method {ci_method!r}; choose from {', '.join(RATE_CI_METHODS)}")
    dm = np.asarray(delta_measured, dtype=float)
    dp = np.asarray(delta_predicted, dtype=float)
    if dm.shape != dp.shape:
        raise ValueError(f"delta_measured and delta_predicted differ in length ({dm.size} vs {dp.size})")
    codes, subjects = _subject_codes(subject, dm.size)
    counts = None
    if ci_method in ("percentile", "bca"):
        rng = np.random.default_rng(seed)
        counts = bootstrap.counts_from_indices(bootstrap.resample_indices(len(subjects), n_boot, rng),
                                               len(subjects))
    res, _, _ = _concordance_from_codes(dm, dp, codes, subjects, exclusion_zone, exclusion, ci_level,
                                        ci_method, counts)
    return res


# --------------------------------------------------------------------------- polar plot


def polar_coordinates(delta_measured, delta_predicted):
    """Radius (mean change, ≥ 0) and angle θ in degrees from the line of identity, in (−90°, 90°].

    Pairs with a negative mean change are turned by 180° first (Critchley et al. 2011).

    >>> import numpy as np
    >>> r, theta = polar_coordinates([2, 2, -2, 4], [2, 0, -4, -4])
    >>> r.tolist(), np.round(theta, 2).tolist()
    ([2.0, 1.0, 3.0, 0.0], [0.0, -45.0, 18.43, -90.0])
    """
    dm = np.asarray(delta_measured, dtype=float)
    dp = np.asarray(delta_predicted, dtype=float)
    mean_change = (dm + dp) / 2
    turn = np.where(mean_change < 0, -1.0, 1.0)
    theta = np.degrees(np.arctan2(turn * dp, turn * dm)) - 45.0
    theta = np.where(theta <= -90.0, -90.0, theta)  # a pair on the anti-identity line: one angle
    return np.abs(mean_change), theta


@dataclass
class PolarResult:
    """Polar-plot statistics (Critchley et al. 2011); angles in degrees."""

    n_pairs: int
    n_pairs_total: int
    exclusion_zone: float
    angular_bias: float
    angular_bias_ci: tuple | None
    angular_bias_ci_note: str | None
    angular_sd: float
    radial_loa: tuple
    radial_loa_empirical: tuple
    within_accept: float
    accept_deg: float = POLAR_ACCEPT_DEG
    multiplier: float = POLAR_MULTIPLIER
    ci_level: float = 0.95

    def to_dict(self) -> dict:
        return to_jsonable({
            "n_pairs": self.n_pairs, "n_pairs_total": self.n_pairs_total,
            "n_excluded": self.n_pairs_total - self.n_pairs, "exclusion_zone": self.exclusion_zone,
            "exclusion": "radius (mean change) below the zone",
            "angular_bias": {"estimate": self.angular_bias,
                             "ci": None if self.angular_bias_ci is None else list(self.angular_bias_ci),
                             "method": "t", "ci_note": self.angular_bias_ci_note},
            "angular_sd": self.angular_sd, "radial_loa": list(self.radial_loa),
            "radial_loa_empirical": list(self.radial_loa_empirical), "multiplier": self.multiplier,
            "within_accept": self.within_accept, "accept_deg": self.accept_deg, "unit": "degrees",
            "note": "radial_loa treats pairs as independent (no monkey-level interval)"})

    def summary(self) -> str:
        ci = ("" if self.angular_bias_ci is None else
              f" ({round(self.ci_level * 100):g}% CI {self.angular_bias_ci[0]:.1f} to "
              f"{self.angular_bias_ci[1]:.1f}°)")
        return (f"angular bias {self.angular_bias:.1f}°{ci}, radial limits of agreement "
                f"{self.radial_loa[0]:.1f}° to {self.radial_loa[1]:.1f}° (empirical "
                f"{self.radial_loa_empirical[0]:.1f}° to {self.radial_loa_empirical[1]:.1f}°), "
                f"{_pct(self.within_accept)} within ±{self.accept_deg:g}°; {self.n_pairs} of "
                f"{self.n_pairs_total} pairs with mean change ≥ {self.exclusion_zone:g} mmHg")


def _polar_from_codes(dm, dp, codes, exclusion_zone, ci_level, multiplier, accept_deg):
    radius, theta = polar_coordinates(dm, dp)
    keep = (radius >= exclusion_zone) & (radius > 0)
    th = theta[keep]
    n = int(th.size)
    nan2 = (float("nan"), float("nan"))
    if n == 0:
        return PolarResult(0, int(dm.size), float(exclusion_zone), float("nan"), None,
                           "no pair outside the exclusion zone", float("nan"), nan2, nan2, float("nan"),
                           accept_deg, multiplier, ci_level)
    bias = float(th.mean())
    sd = float(th.std(ddof=1)) if n > 1 else float("nan")
    loa = (bias - multiplier * sd, bias + multiplier * sd)
    emp = tuple(float(q) for q in np.quantile(th, [0.025, 0.975]))
    within = float(np.mean(np.abs(th) <= accept_deg))
    # angular bias: pooled mean over pairs, jackknife over monkeys
    G = int(codes.max()) + 1 if codes.size else 0
    s = np.bincount(codes[keep], weights=th, minlength=G)
    m = np.bincount(codes[keep], minlength=G).astype(float)
    active = m > 0
    ci, note = None, None
    if active.sum() < 2:
        note = "fewer than 2 monkeys with retained pairs: no monkey-level interval"
    else:
        jack = (s.sum() - s[active]) / (m.sum() - m[active])
        lo, hi = bootstrap.t_interval(bias, jack, ci_level)
        ci = (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None
        note = None if ci is not None else "the interval could not be computed"
    return PolarResult(n, int(dm.size), float(exclusion_zone), bias, ci, note, sd, loa, emp, within,
                       accept_deg, multiplier, ci_level)


def polar_statistics(delta_measured, delta_predicted, subject=None, *,
                     exclusion_zone=DEFAULT_EXCLUSION_ZONE, ci_level=0.95,
                     multiplier=POLAR_MULTIPLIER, accept_deg=POLAR_ACCEPT_DEG) -> PolarResult:
    """Angular bias and radial limits of agreement of the polar plot (Critchley et al. 2011).

    Each pair becomes (r, θ) by :func:`polar_coordinates`: r = \\|Δy + Δp\\|/2 and θ the angle
    between (Δy, Δp) and the line of identity after turning pairs with a negative mean change by
    180°. Pairs with r < z are left out. With the n retained angles θ_i:

    .. math::

        \\text{bias} = \\bar θ,\\qquad \\text{radial LoA} = \\bar θ \\pm 1.96\\,s_θ
        \\quad (s_θ \\text{ with } n-1),

    the empirical limits are the 2.5% and 97.5% quantiles of θ, and ``within_accept`` the share
    with \\|θ\\| ≤ 30°. The angular bias gets a jackknife-over-subjects t interval when
    ``subject`` is given.

    References
    ----------
    Critchley LA, Yang XX, Lee A (2011). Assessment of trending ability of cardiac output monitors
    by polar plot methodology. J Cardiothorac Vasc Anesth 25:536-546.
    Saugel B, Grothe O, Wagner JY (2015). Tracking changes in cardiac output: statistical
    considerations on the 4-quadrant plot and the polar plot methodology. Anesth Analg 121:514-524.

    Examples
    --------
    >>> import numpy as np
    >>> angle = np.radians([45 + 10, 45 - 10, 45 + 20, 45])   # 10°, -10°, 20°, 0° from identity
    >>> res = polar_statistics(4 * np.cos(angle), 4 * np.sin(angle), exclusion_zone=0)
    >>> round(res.angular_bias, 6), round(res.angular_sd, 4)
    (5.0, 12.9099)
    """
    dm = np.asarray(delta_measured, dtype=float)
    dp = np.asarray(delta_predicted, dtype=float)
    codes, _ = _subject_codes(subject, dm.size)
    return _polar_from_codes(dm, dp, codes, exclusion_zone, ci_level, multiplier, accept_deg)


# --------------------------------------------------------------------------- comparison


@dataclass
class ConcordanceComparison:
    """Concordance rate of a model minus the reference's, over monkeys (proportions)."""

    model: str
    reference: str
    difference: float
    ci: tuple | None
    ci_method: str
    ci_note: str | None
    p_signflip: float
    p_adjusted: float | None
    statistic: float
    n_subjects: int
    signflip_method: str
    ci_level: float = 0.95

    def to_dict(self) -> dict:
        return to_jsonable({
            "model": self.model, "reference": self.reference, "difference": self.difference,
            "ci": None if self.ci is None else list(self.ci), "ci_method": self.ci_method,
            "ci_note": self.ci_note, "p_signflip": self.p_signflip, "p_adjusted": self.p_adjusted,
            "signflip_statistic": self.statistic, "signflip_method": self.signflip_method,
            "n_subjects": self.n_subjects})

    def summary(self) -> str:
        ci = ("no interval" if self.ci is None else
              f"{round(self.ci_level * 100):g}% CI {100 * self.ci[0]:+.0f} to {100 * self.ci[1]:+.0f}")
        return (f"{self.model} − {self.reference}: {100 * self.difference:+.0f} percentage points ({ci}; "
                f"sign-flip p {_fmt_p(self.p_signflip)}, Holm-adjusted p {_fmt_p(self.p_adjusted)}; "
                f"{self.n_subjects} monkeys)")


def _fmt_p(p):
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def compare_concordance(c_model, n_model, c_reference, n_reference, *, model="model",
                        reference="reference", ci_level=0.95, ci_method="t", counts=None,
                        n_perm=100_000, seed=0) -> ConcordanceComparison:
    """Paired comparison of two concordance rates over the same subjects.

    Inputs are per-subject sums: c = concordant pairs (+ ½ per zero-change pair), n = retained
    pairs, subject by subject in the same order. The estimate is the pooled difference
    Σc_m/Σn_m − Σc_r/Σn_r with a jackknife-over-subjects t(G − 1) interval (``"t"``; or
    ``"percentile"``/``"bca"`` from the bootstrap ``counts``). The test is the exact sign-flip
    test of the per-subject differences D_g = c_m,g/n_m,g − c_r,g/n_r,g over subjects with
    retained pairs in both.

    Examples
    --------
    >>> res = compare_concordance([4, 5, 3, 6], [5, 5, 4, 6], [2, 3, 2, 3], [5, 5, 4, 6])
    >>> round(res.difference, 3), res.p_signflip, res.n_subjects
    (0.4, 0.125, 4)
    """
    cm, nm = np.asarray(c_model, float), np.asarray(n_model, float)
    cr, nr = np.asarray(c_reference, float), np.asarray(n_reference, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = cm.sum() / nm.sum() - cr.sum() / nr.sum()
        active = (nm > 0) | (nr > 0)
        jack = ((cm.sum() - cm[active]) / (nm.sum() - nm[active])
                - (cr.sum() - cr[active]) / (nr.sum() - nr[active]))
        both = (nm > 0) & (nr > 0)
        diffs = cm[both] / nm[both] - cr[both] / nr[both]
    ci, note = None, None
    if active.sum() < 2 or not np.isfinite(est):
        note = "fewer than 2 monkeys with retained pairs: no monkey-level interval"
    else:
        if ci_method == "t":
            lo, hi = bootstrap.t_interval(est, jack, ci_level)
        elif ci_method in ("percentile", "bca"):
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = (counts @ cm) / (counts @ nm) - (counts @ cr) / (counts @ nr)
            lo, hi = (bootstrap.percentile_interval(est, boot, ci_level) if ci_method == "percentile"
                      else bootstrap.bca_interval(est, boot, jack, ci_level))
        else:
            raise ValueError(f"unknown ci_method {ci_method!r} for a difference; choose t, "
                             f"percentile or bca")
        if np.isfinite(lo) and np.isfinite(hi):
            ci = (float(lo), float(hi))
        else:
            note = "the interval could not be computed (undefined leave-one-monkey-out values)"
    test = signflip_test(diffs, n_perm=n_perm, seed=seed)
    return ConcordanceComparison(model, reference, float(est), ci, ci_method, note, test["p"], None,
                                 test["statistic"], test["n_subjects"], test["method"], ci_level)


# --------------------------------------------------------------------------- all models


@dataclass
class ModelTrending:
    """Trending statistics of one model (the future ``stats.json`` → ``trending.models.<name>``)."""

    model: str
    n_pairs: int
    n_subjects: int
    concordance: ConcordanceResult
    polar: PolarResult
    comparison: ConcordanceComparison | None = None

    def to_dict(self) -> dict:
        out = {"n_pairs": self.n_pairs, "n_subjects": self.n_subjects}
        out.update(self.concordance.to_dict())
        out["polar"] = self.polar.to_dict()
        out["comparison"] = None if self.comparison is None else self.comparison.to_dict()
        return to_jsonable(out)


@dataclass
class TrendingResult:
    """Result of :func:`trending`; ``to_dict()`` is the block for ``stats.json`` key ``trending``."""

    models: dict
    reference: str
    pairs: ChangePairs
    exclusion_zone: float
    exclusion: str
    ci_level: float
    ci_method: str
    n_boot: int
    seed: object
    unit: str = "mmHg"
    warnings: list = field(default_factory=list)

    def __getitem__(self, model) -> ModelTrending:
        return self.models[model]

    @property
    def comparisons(self) -> list:
        return [t.comparison for t in self.models.values() if t.comparison is not None]

    def to_dict(self) -> dict:
        return to_jsonable({
            "pairs": self.pairs.definition, "step_source": self.pairs.step_source,
            "reference": self.reference, "unit": self.unit, "exclusion_zone": self.exclusion_zone,
            "exclusion": self.exclusion, "ci_level": self.ci_level,
            "ci_methods": {"concordance_rate": self.ci_method,
                           "difference": "t" if self.ci_method in ("logit_t", "t") else self.ci_method,
                           "angular_bias": "t"},
            "n_boot": self.n_boot if self.ci_method in ("percentile", "bca") else None,
            "seed": self.seed, "n_subjects": len(self.pairs.subjects),
            "n_pairs": int(len(self.pairs.frame) // max(1, len(self.models))),
            "subjects": list(self.pairs.subjects),
            "models": {m: t.to_dict() for m, t in self.models.items()},
            "sentence": self.sentence(), "warnings": list(self.warnings)})

    def summary(self) -> str:
        level = f"{round(self.ci_level * 100):g}%"
        head = (f"Trending: {self.pairs.definition}.\nSteps from {self.pairs.step_source}; exclusion "
                f"zone {self.exclusion_zone:g} {self.unit} ({self.exclusion}); {level} intervals over "
                f"monkeys.")
        cols = (f"{'model':<12} {'pairs':>5} {'kept':>5} {'monkeys':>7} {'concordance':>11} "
                f"{level + ' CI':>15} {'vs ref':>7} {'p':>7} {'ang.bias':>8} {'radial LoA':>16}")
        lines = [head, "", cols, "-" * len(cols)]
        for m, t in self.models.items():
            c, p, cmp_ = t.concordance, t.polar, t.comparison
            ci = "-" if c.ci is None else f"{_pct(c.ci[0])} to {_pct(c.ci[1])}"
            d = "ref" if m == self.reference else ("-" if cmp_ is None else f"{100 * cmp_.difference:+.0f}")
            pv = "" if cmp_ is None else _fmt_p(cmp_.p_adjusted).replace("= ", "")
            loa = "-" if not np.isfinite(p.radial_loa[0]) else f"{p.radial_loa[0]:.0f}° to {p.radial_loa[1]:.0f}°"
            bias = "-" if not np.isfinite(p.angular_bias) else f"{p.angular_bias:.1f}°"
            lines.append(f"{m:<12} {c.n_pairs_total:>5} {c.n_pairs:>5} {c.n_subjects:>7} "
                         f"{_pct(c.rate):>11} {ci:>15} {d:>7} {pv:>7} {bias:>8} {loa:>16}")
        lines += ["", "vs ref: concordance minus the reference's, percentage points; p: sign-flip "
                  "over monkeys, Holm-adjusted.", self.sentence()]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def sentence(self, model=None) -> str:
        """One sentence for the verdict section: the model with the highest concordance by default."""
        level = f"{round(self.ci_level * 100):g}%"
        others = {m: t for m, t in self.models.items() if m != self.reference}
        if not others:
            return f"Only the reference {self.reference} has change pairs; there is no trending comparison."
        if model is None:
            model = max(others, key=lambda m: -1 if not np.isfinite(others[m].concordance.rate)
                        else others[m].concordance.rate)
        t = self.models[model]
        c = t.concordance
        ci = (f"{level} CI {_pct(c.ci[0])} to {_pct(c.ci[1])}" if c.ci is not None else "no interval")
        head = (f"Within monkeys, at a fixed IOP step, the {model}'s predicted ICP moved in the measured "
                f"direction for {_pct(c.rate)} of ICP steps ({ci}; {c.n_pairs} steps of at least "
                f"{self.exclusion_zone:g} {self.unit}, {c.n_subjects} monkeys)")
        ref = self.models.get(self.reference)
        if ref is None or t.comparison is None:
            return head + "."
        cmp_ = t.comparison
        cci = ("no interval" if cmp_.ci is None else
               f"{level} CI {100 * cmp_.ci[0]:+.0f} to {100 * cmp_.ci[1]:+.0f} points")
        better = (cmp_.ci is not None and cmp_.ci[0] > 0 and cmp_.p_adjusted is not None
                  and cmp_.p_adjusted < 0.05)
        tail = (f", against {_pct(ref.concordance.rate)} for {self.reference} (difference "
                f"{100 * cmp_.difference:+.0f} points, {cci}; sign-flip p {_fmt_p(cmp_.p_signflip)}, "
                f"Holm-adjusted p {_fmt_p(cmp_.p_adjusted)})")
        verdict = (f"; it follows ICP changes better than {self.reference}." if better else
                   f"; there is no evidence that it follows ICP changes better than {self.reference}.")
        return head + tail + verdict


def trending(predictions, reference="ols_iop", *, exclusion_zone=DEFAULT_EXCLUSION_ZONE,
             exclusion="measured", ci_level=0.95, ci_method=DEFAULT_RATE_CI_METHOD, n_boot=10000,
             seed=0, steps=None, iop_tolerance=DEFAULT_IOP_TOLERANCE,
             icp_tolerance=DEFAULT_ICP_TOLERANCE, n_perm=100_000, unit="mmHg",
             source="predictions") -> TrendingResult:
    """Four-quadrant concordance and polar statistics of every model, within monkeys.

    Forms the change pairs with :func:`change_pairs` (consecutive ICP steps at one IOP step, per
    monkey, on per-step means), then for each model :func:`concordance_rate`,
    :func:`polar_statistics` and, for models other than ``reference``, the paired comparison of
    concordance rates over monkeys (:func:`compare_concordance`, Holm-adjusted across models).
    All models are judged on the same pairs and, with bootstrap intervals, on the same resampled
    monkeys. Formulas, interval methods and their calibration: module docstring.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Out-of-fold predictions (``fold, subject, scan_id, model, y_true, y_pred, iop``).
    reference : str
        Model every other model is compared with (default ``ols_iop``).
    exclusion_zone : float
        Changes smaller than this (mmHg) are left out (default 2).
    exclusion : {"measured", "square"}
        Four-quadrant exclusion rule (module docstring). The polar plot always leaves out pairs
        whose mean change is below the zone.
    ci_level : float
    ci_method : {"logit_t", "t", "percentile", "bca"}
        Interval for the concordance rates; differences use ``"t"`` with the jackknife methods
        and the same bootstrap method otherwise.
    n_boot, seed : int
        Bootstrap resamples (only for ``"percentile"``/``"bca"``) and the seed of those and of any
        Monte Carlo sign-flip test (more than 20 monkeys).
    steps, iop_tolerance, icp_tolerance :
        How the pressure steps are found (:func:`change_pairs`).

    Returns
    -------
    TrendingResult

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> rows = [(str(g), f"{g}-{i}-{k}-{r}", float(icp), float(iop))
    ...         for g in range(6) for i, iop in enumerate((10, 30))
    ...         for k, icp in enumerate((5, 12, 20, 30)) for r in range(2)]
    >>> t = pd.DataFrame(rows, columns=["subject", "scan_id", "y_true", "iop"]).assign(fold=lambda d: d.subject)
    >>> preds = pd.concat([t.assign(model="cnn", y_pred=t.y_true + rng.normal(0, 2, len(t))),
    ...                    t.assign(model="ols_iop", y_pred=15 + 0.1 * t.iop + rng.normal(0, 2, len(t)))])
    >>> res = trending(preds)
    >>> res["cnn"].n_pairs, res["cnn"].n_subjects, res["cnn"].concordance.rate
    (36, 6, 1.0)
    >>> round(res["ols_iop"].concordance.rate, 2), res["cnn"].comparison.p_signflip
    (0.42, 0.03125)
    """
    if exclusion not in EXCLUSION_RULES:
        raise ValueError(f"unknown exclusion rule {exclusion!r}; choose from {', '.join(EXCLUSION_RULES)}")
    if ci_method not in RATE_CI_METHODS:
        raise ValueError(f"unknown ci_method {ci_method!r}; choose from {', '.join(RATE_CI_METHODS)}")
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    pairs = change_pairs(predictions, steps=steps, iop_tolerance=iop_tolerance,
                         icp_tolerance=icp_tolerance, source=source)
    warnings = list(pairs.warnings)
    subjects = pairs.subjects
    G = len(subjects)
    code_of = {s: i for i, s in enumerate(subjects)}
    counts = None
    if ci_method in ("percentile", "bca") and G:
        rng = np.random.default_rng(seed)
        counts = bootstrap.counts_from_indices(bootstrap.resample_indices(G, n_boot, rng), G)
    diff_method = "t" if ci_method in ("logit_t", "t") else ci_method

    per_model = {}
    sums = {}
    for m in pairs.models:
        f = pairs.for_model(m)
        dm, dp = f["delta_measured"].to_numpy(float), f["delta_predicted"].to_numpy(float)
        codes = f["subject"].map(code_of).to_numpy(int)
        conc, c, n = _concordance_from_codes(dm, dp, codes, subjects, exclusion_zone, exclusion,
                                             ci_level, ci_method, counts)
        polar = _polar_from_codes(dm, dp, codes, exclusion_zone, ci_level, POLAR_MULTIPLIER,
                                  POLAR_ACCEPT_DEG)
        per_model[m] = ModelTrending(m, int(len(f)), int(f["subject"].nunique()), conc, polar)
        sums[m] = (c, n)
        warnings += [f"{m}: {note}" for note in conc.notes]
    if G and G < 10:
        warnings.append(f"Only {G} monkeys have change pairs (fewer than 10): the intervals and "
                        f"tests have little precision.")
    if reference in per_model:
        cr, nr = sums[reference]
        for i, m in enumerate(m for m in per_model if m != reference):
            cm, nm = sums[m]
            per_model[m].comparison = compare_concordance(
                cm, nm, cr, nr, model=m, reference=reference, ci_level=ci_level, ci_method=diff_method,
                counts=counts, n_perm=n_perm, seed=[int(seed) if np.isscalar(seed) else 0, i])
        comps = [t.comparison for t in per_model.values() if t.comparison is not None]
        for c, a in zip(comps, holm([c.p_signflip for c in comps])):
            c.p_adjusted = None if not np.isfinite(a) else float(a)
    elif per_model:
        warnings.append(f"Reference model {reference!r} has no change pairs (models: "
                        f"{', '.join(per_model)}); no trending comparisons were made.")
    return TrendingResult(per_model, reference, pairs, float(exclusion_zone), exclusion, float(ci_level),
                          ci_method, int(n_boot), seed, unit, warnings)


__all__ = [
    "trending", "TrendingResult", "ModelTrending", "change_pairs", "ChangePairs", "gap_levels",
    "concordance_rate", "concordance_scores", "retained_pairs", "ConcordanceResult",
    "polar_coordinates", "polar_statistics", "PolarResult", "compare_concordance",
    "ConcordanceComparison", "DEFAULT_EXCLUSION_ZONE", "PAIR_DEFINITION",
]
