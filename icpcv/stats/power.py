"""Power for the next study: how likely is a new study of G monkeys to get the verdict "better"?

The run's verdict calls a model better than the reference on MAE when both hold
(:func:`icpcv.stats.analysis.verdict`, docs/statistics.md):

* the monkey-level interval of the pooled MAE difference lies below 0. Its method is ``t``
  (``AUTO_METHODS["delta"]``): θ̂ ± t_{G−1, 1−α/2} · SE_jack with θ̂ = Σ_g Δ_g / Σ_g n_g, Δ_g the
  monkey's loss sum Σ|e_model| − Σ|e_reference| over its n_g shared scans, and the jackknife over
  monkeys SE_jack = sqrt((G−1)/G · Σ_g (θ_(g) − θ̄)²), θ_(g) = (ΣΔ − Δ_g)/(Σn − n_g);
* the sign-flip test of the per-monkey MAE differences D_g = Δ_g / n_g is significant after the
  Holm adjustment: p_adjusted < 0.05 (exact over all 2^G sign patterns up to G = 20, Monte Carlo
  above).

The planner (:func:`plan_power`) draws ``n_sim`` new studies of G monkeys by resampling the run's
monkeys with replacement (each drawn monkey brings its scan count n_g and loss difference Δ_g),
applies that rule to every simulated study at once, and reports the share called better: the
power. A hypothetical effect shifts every monkey's MAE difference by one constant so that the
population's pooled difference equals it: D_g → D_g + c, Δ_g → Δ_g + c·n_g. The jackknife SE
is unchanged by such a shift, so only the effect moves the interval.

Approximations, all stated in the result:

* Holm: a single comparison has p_adjusted = p. With ``n_comparisons = m`` the planner asks
  m·p < α (Bonferroni), which is Holm's adjustment of the smallest of m p-values and conservative
  for the others. The run's verdict adjusts across 2 metrics × (models − 1) comparisons.
* The verdict names, among the models the rule calls better, the one with the largest paired
  reduction (``analysis.verdict_comparison``); the planner studies one model against the reference.
* Above G = 20 the sign-flip p of every simulated study is estimated from ``n_perm`` random sign
  patterns shared by all studies of that G (p = (1 + hits)/(1 + n_perm), as the engine does with
  its 100,000 patterns per study).
* Resampling the run's monkeys treats them as the population: a new study can only meet monkeys
  like these (and meets the same monkey twice when drawn twice).

References
----------
Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap, ch. 25 (sample size and power by
resampling). Chapman & Hall.
MacKinnon JG, Nielsen MØ, Webb MD (2023). Cluster-robust inference: a guide to empirical practice.
J Econometrics 232:272-299.
Good PI (2005). Permutation, Parametric and Bootstrap Tests of Hypotheses, 3rd ed. Springer.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from icpcv.stats import bootstrap
from icpcv.stats.calibrate import REAL_SCANS_PER_SUBJECT
from icpcv.errors import InputError
from icpcv.stats.inference import MAX_EXACT, signflip_test
from icpcv.stats.io import read_predictions, validate_predictions
from icpcv.util import natural_key, to_jsonable

DEFAULT_MONKEYS = (6, 10, 14, 20, 30, 40)
DEFAULT_N_SIM = 2000
#: Random sign patterns per G above :data:`MAX_EXACT` monkeys (shared by that G's studies).
DEFAULT_N_PERM = 4000
TARGET_POWER = 0.8
#: The verdict's fixed threshold on the Holm-adjusted p (analysis.RULE_ALPHA).
VERDICT_ALPHA = 0.05
#: Bisection stops when the detectable effect is known to this many mmHg.
EFFECT_TOLERANCE = 0.005


# --------------------------------------------------------------------------- per-monkey differences


@dataclass
class PairedDifferences:
    """Per-monkey MAE difference of a model against the reference on the scans both have."""

    model: str
    reference: str
    subjects: list
    n_scans: np.ndarray
    loss_model: np.ndarray
    loss_reference: np.ndarray

    @property
    def loss_difference(self) -> np.ndarray:
        """Δ_g = Σ|e_model| − Σ|e_reference| over the monkey's shared scans (mmHg · scans)."""
        return self.loss_model - self.loss_reference

    @property
    def per_subject(self) -> np.ndarray:
        """D_g = MAE_g(model) − MAE_g(reference) (mmHg; negative: the model is better)."""
        return self.loss_difference / self.n_scans

    @property
    def pooled(self) -> float:
        """Pooled (scan-weighted) MAE difference ΣΔ_g / Σn_g, as stats.json's ``delta``."""
        return float(self.loss_difference.sum() / self.n_scans.sum())

    @property
    def n_subjects(self) -> int:
        return int(self.n_scans.size)

    def to_dict(self) -> dict:
        return to_jsonable({
            "model": self.model, "reference": self.reference, "metric": "mae",
            "n_subjects": self.n_subjects, "pooled_delta": self.pooled,
            "subject_mean_delta": float(self.per_subject.mean()),
            "per_subject": {s: {"n": int(n), "delta": float(d)}
                            for s, n, d in zip(self.subjects, self.n_scans, self.per_subject)}})


def paired_differences(predictions, model="cnn", reference="ols_iop", *,
                       source="predictions") -> PairedDifferences:
    """Per-monkey scan counts and absolute-error sums of ``model`` and ``reference``.

    The two models are paired on the (subject, scan_id) they share, as the run's comparisons
    are (docs/statistics.md, Comparisons).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"fold": [0, 0, 1], "subject": ["a", "a", "b"], "scan_id": ["1", "2", "3"],
    ...                   "y_true": [10.0, 20.0, 30.0]})
    >>> preds = pd.concat([t.assign(model="cnn", y_pred=[11.0, 18.0, 30.5]),
    ...                    t.assign(model="ols_iop", y_pred=[14.0, 15.0, 25.0])])
    >>> d = paired_differences(preds)
    >>> d.n_scans.tolist(), d.per_subject.tolist(), round(d.pooled, 4)
    ([2.0, 1.0], [-3.0, -4.5], -3.5)
    """
    df = validate_predictions(pd.DataFrame(predictions), source=source)
    models = set(df["model"])
    for name, role in ((model, "model"), (reference, "reference")):
        if name not in models:
            raise InputError(f"{source}: the {role} {name!r} is not among the models "
                             f"({', '.join(sorted(models))})")
    if model == reference:
        raise InputError(f"{source}: the model and the reference are both {model!r}")
    m = df[df["model"] == model]
    r = df[df["model"] == reference]
    j = m.merge(r[["subject", "scan_id", "y_true", "y_pred"]], on=["subject", "scan_id"],
                suffixes=("", "_ref"))
    if j.empty:
        raise InputError(f"{source}: {model} and {reference} share no scans")
    j = j.assign(abs_model=(j["y_pred"] - j["y_true"]).abs(),
                 abs_reference=(j["y_pred_ref"] - j["y_true_ref"]).abs())
    g = j.groupby("subject").agg(n=("scan_id", "size"), lm=("abs_model", "sum"),
                                 lr=("abs_reference", "sum"))
    order = sorted(g.index, key=natural_key)
    g = g.loc[order]
    return PairedDifferences(model, reference, list(order), g["n"].to_numpy(float),
                             g["lm"].to_numpy(float), g["lr"].to_numpy(float))


# --------------------------------------------------------------------------- the rule, vectorised


def _all_sign_sums(d):
    """(S, 2^h) sums Σ s_j d_j over every sign pattern, for each row of d (S, h)."""
    sums = np.zeros((d.shape[0], 1))
    for j in range(d.shape[1]):
        v = d[:, j:j + 1]
        sums = np.concatenate((sums + v, sums - v), axis=1)
    return sums


def signflip_pvalues(diffs, *, exact_max=MAX_EXACT, n_perm=DEFAULT_N_PERM, seed=0):
    """Two-sided sign-flip p of every row of ``diffs`` (S studies × G subjects).

    The same test as :func:`icpcv.stats.inference.signflip_test`, for many studies at once:
    statistic \\|Σ_g D_g\\|, ties within 1e-9·Σ\\|D_g\\|. Up to ``exact_max`` subjects the p is
    exact, counted by meeting in the middle: the sums of the first G/2 subjects' sign patterns
    (L) and of the rest (R, sorted) give #{\\|l + r\\| ≥ t} by binary search, 2^{G/2} work per
    study instead of 2^G. Above, ``n_perm`` random sign patterns from ``seed``, shared by all
    rows, give p = (1 + hits)/(1 + n_perm).

    Returns ``(p, method)`` with method ``"exact"`` or ``"monte_carlo"``.

    Examples
    --------
    >>> p, method = signflip_pvalues([[0.5, 1.0, 2.0, 3.5], [1, -2, 3, 4]])
    >>> p.tolist(), method
    ([0.125, 0.375], 'exact')
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=float))
    S, G = d.shape
    t = np.abs(d.sum(axis=1)) - 1e-9 * np.abs(d).sum(axis=1)
    if G <= exact_max:
        h = G // 2
        left = _all_sign_sums(d[:, :h])
        right = np.sort(_all_sign_sums(d[:, h:]), axis=1)
        n_right = right.shape[1]
        hits = np.empty(S)
        for i in range(S):
            if t[i] <= 0:  # T_obs = 0: every pattern is as extreme
                hits[i] = 2.0**G
                continue
            upper = n_right - np.searchsorted(right[i], t[i] - left[i], side="left")
            lower = np.searchsorted(right[i], -t[i] - left[i], side="right")
            hits[i] = upper.sum() + lower.sum()
        return hits / 2.0**G, "exact"
    rng = np.random.default_rng(seed)
    signs = (rng.integers(0, 2, size=(int(n_perm), G), dtype=np.int8) * 2 - 1).astype(float)
    hits = np.zeros(S)
    chunk = max(1, 4_000_000 // max(1, int(n_perm)))
    for a in range(0, S, chunk):
        sums = d[a:a + chunk] @ signs.T
        hits[a:a + chunk] = np.count_nonzero(np.abs(sums) >= t[a:a + chunk, None], axis=1)
    return (1 + hits) / (1 + n_perm), "monte_carlo"


@dataclass
class VerdictBatch:
    """The verdict rule applied to S simulated studies (arrays of length S)."""

    delta: np.ndarray          # pooled MAE difference
    ci_high: np.ndarray        # upper end of its interval
    p_signflip: np.ndarray     # two-sided, unadjusted
    better: np.ndarray         # interval below 0 and m·p < alpha
    better_interval: np.ndarray
    better_signflip: np.ndarray  # m·p < alpha with a negative mean difference
    signflip_method: str


def verdict_rule(n_scans, loss_difference, *, alpha=VERDICT_ALPHA, ci_level=0.95, n_comparisons=1,
                 exact_max=MAX_EXACT, n_perm=DEFAULT_N_PERM, seed=0) -> VerdictBatch:
    """Apply the verdict's "better" rule to every row (study) of S × G arrays.

    ``n_scans`` and ``loss_difference`` (Δ_g = Σ|e_model| − Σ|e_reference|) hold one column per
    monkey of the study. Better = (θ̂ + t_{G−1,(1+ci_level)/2}·SE_jack < 0) and
    (min(1, m·p) < alpha) (module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> n = np.full((1, 6), 10.0)
    >>> res = verdict_rule(n, -10 * np.array([[1.0, 2.0, 0.5, 1.5, 1.0, 2.5]]))
    >>> round(float(res.delta[0]), 4), float(res.p_signflip[0]), bool(res.better[0])
    (-1.4167, 0.03125, True)
    """
    n = np.atleast_2d(np.asarray(n_scans, dtype=float))
    dl = np.atleast_2d(np.asarray(loss_difference, dtype=float))
    S, G = n.shape
    if G < 2:
        raise ValueError(f"a study needs at least 2 monkeys for a monkey-level interval, got {G}")
    N = n.sum(axis=1)
    L = dl.sum(axis=1)
    delta = L / N
    jack = (L[:, None] - dl) / (N[:, None] - n)
    se = np.sqrt((G - 1) / G * np.sum((jack - jack.mean(axis=1, keepdims=True)) ** 2, axis=1))
    ci_high = delta + sps.t.ppf(1 - (1 - ci_level) / 2, G - 1) * se
    p, method = signflip_pvalues(dl / n, exact_max=exact_max, n_perm=n_perm, seed=seed)
    significant = np.minimum(1.0, n_comparisons * p) < alpha
    better_interval = ci_high < 0
    return VerdictBatch(delta, ci_high, p, better_interval & significant, better_interval,
                        significant & (delta < 0), method)


# --------------------------------------------------------------------------- the planner


@dataclass
class PowerRow:
    n_monkeys: int
    power: float
    mc_se: float
    power_interval: float
    power_signflip: float
    signflip_method: str

    def to_dict(self) -> dict:
        return to_jsonable(self.__dict__.copy())

    @classmethod
    def from_dict(cls, d: dict) -> "PowerRow":
        return cls(int(d["n_monkeys"]), float(d["power"]), float(d["mc_se"]), float(d["power_interval"]),
                   float(d["power_signflip"]), d["signflip_method"])


@dataclass
class DetectableEffect:
    """The smallest MAE reduction (mmHg) with power ≥ ``target`` at ``n_monkeys``; ``effect`` None
    with the reason in ``note`` when no effect reaches it."""

    n_monkeys: int
    target: float
    effect: float | None = None
    power: float | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return to_jsonable(self.__dict__.copy())

    @classmethod
    def from_dict(cls, d: dict | None) -> "DetectableEffect | None":
        if d is None:
            return None
        return cls(int(d["n_monkeys"]), float(d["target"]), d.get("effect"), d.get("power"), d.get("note"))


@dataclass
class PowerResult:
    """Result of :func:`plan_power`; ``to_dict()`` is the content of the future ``power.json``."""

    model: str
    reference: str
    run_subjects: int
    observed_reduction: float
    observed_subject_mean_reduction: float
    effect: float | None
    alpha: float
    ci_level: float
    n_comparisons: int
    n_sim: int
    n_perm: int
    seed: object
    rows: list
    detectable: DetectableEffect | None = None
    notes: list = field(default_factory=list)

    @property
    def assumed_reduction(self) -> float:
        return self.observed_reduction if self.effect is None else self.effect

    def power_at(self, n_monkeys) -> float:
        for r in self.rows:
            if r.n_monkeys == n_monkeys:
                return r.power
        raise KeyError(n_monkeys)

    def effect_text(self) -> str:
        """The effect the simulated studies assume, in words."""
        if self.effect is None:
            return f"the run's own, {reduction_text(self.observed_reduction)}"
        return f"{reduction_text(self.effect)} (the run: {reduction_text(self.observed_reduction)})"

    def rule_text(self) -> str:
        level = f"{round(self.ci_level * 100):g}%"
        adj = "" if self.n_comparisons == 1 else f" × {self.n_comparisons} comparisons"
        return f"{level} monkey-level interval below 0 and sign-flip p{adj} < {self.alpha:g}"

    def to_dict(self) -> dict:
        return to_jsonable({
            "model": self.model, "reference": self.reference, "metric": "mae", "unit": "mmHg",
            "rule": self.rule_text(), "alpha": self.alpha, "ci_level": self.ci_level,
            "ci_method": "t", "n_comparisons": self.n_comparisons,
            "run_subjects": self.run_subjects, "observed_reduction": self.observed_reduction,
            "observed_subject_mean_reduction": self.observed_subject_mean_reduction,
            "effect": self.effect, "assumed_reduction": self.assumed_reduction,
            "resampling": "monkeys of the run, with replacement, with their scan counts",
            "n_sim": self.n_sim, "n_perm": self.n_perm, "seed": self.seed,
            "table": [r.to_dict() for r in self.rows],
            "detectable": None if self.detectable is None else self.detectable.to_dict(),
            "notes": list(self.notes)})

    @classmethod
    def from_dict(cls, d: dict) -> "PowerResult":
        """The result as ``power.json`` holds it (what the report reads)."""
        effect = d.get("effect")
        return cls(d["model"], d["reference"], int(d["run_subjects"]), float(d["observed_reduction"]),
                   float(d["observed_subject_mean_reduction"]), None if effect is None else float(effect),
                   float(d["alpha"]), float(d["ci_level"]), int(d["n_comparisons"]), int(d["n_sim"]),
                   int(d["n_perm"]), d.get("seed"), [PowerRow.from_dict(r) for r in d.get("table") or []],
                   DetectableEffect.from_dict(d.get("detectable")), list(d.get("notes") or []))

    def summary(self) -> str:
        eff = self.effect_text()
        lines = [f"Power of a new study to find {self.model} better than {self.reference} on MAE",
                 f"rule: {self.rule_text()}",
                 f"effect: {eff}; {self.n_sim} simulated studies per size, resampling the run's "
                 f"{self.run_subjects} monkeys", "",
                 f"{'monkeys':>7} {'power':>6} {'MC SE':>6} {'interval':>8} {'sign-flip':>9}",
                 "-" * 40]
        for r in self.rows:
            lines.append(f"{r.n_monkeys:>7} {r.power:>6.3f} {r.mc_se:>6.3f} {r.power_interval:>8.3f} "
                         f"{r.power_signflip:>9.3f}")
        lines += ["", "interval / sign-flip: share of studies meeting that half of the rule alone."]
        det = self.detectable
        if det is not None:
            if det.effect is not None:
                lines.append(f"Smallest MAE reduction detected with {det.target:.0%} power by "
                             f"{det.n_monkeys} monkeys: {det.effect:.2f} mmHg.")
            else:
                lines.append(f"Smallest detectable reduction at {det.n_monkeys} monkeys: none ({det.note}).")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def reduction_text(reduction) -> str:
    """An MAE reduction in words ("MAE lower by 2.46 mmHg", or higher when negative)."""
    if not np.isfinite(reduction):
        return "MAE change n/a"
    if reduction >= 0:
        return f"MAE lower by {reduction:.2f} mmHg"
    return f"MAE higher by {-reduction:.2f} mmHg"


def _simulate(diffs, n_monkeys, shift, *, n_sim, seed, alpha, ci_level, n_comparisons, n_perm,
              exact_max, index=None):
    if index is None:
        index = np.random.default_rng([int(seed), int(n_monkeys)]).integers(
            0, diffs.n_subjects, size=(int(n_sim), int(n_monkeys)))
    n = diffs.n_scans[index]
    dl = diffs.loss_difference[index] + shift * n
    return verdict_rule(n, dl, alpha=alpha, ci_level=ci_level, n_comparisons=n_comparisons,
                        exact_max=exact_max, n_perm=n_perm, seed=[int(seed), int(n_monkeys), 1]), index


def plan_power(differences: PairedDifferences, monkeys=DEFAULT_MONKEYS, *, effect=None,
               alpha=VERDICT_ALPHA, ci_level=None, n_sim=DEFAULT_N_SIM, seed=0, n_comparisons=1,
               target_power=TARGET_POWER, detectable=True, detect_at=None, n_perm=DEFAULT_N_PERM,
               exact_max=MAX_EXACT) -> PowerResult:
    """Probability that a new study of G monkeys calls the model better than the reference.

    For each G in ``monkeys``: ``n_sim`` studies of G monkeys drawn with replacement from the
    run's monkeys (seed ``[seed, G]``, so a G's answer does not depend on the other G's), each
    judged by :func:`verdict_rule`. With ``effect`` (an MAE *reduction* in mmHg, positive =
    the model better) every monkey's difference is shifted by c = −effect − θ̂_run, so that the
    run's pooled difference becomes −effect; without it the run's own effect is kept.

    The smallest detectable effect (at the run's own number of monkeys unless ``detect_at``) is
    found by bisection on the effect with the same simulated studies throughout (common random
    numbers): the smallest reduction whose power reaches ``target_power``.

    .. math::

        \\text{power}(G) = \\frac{1}{S}\\sum_{s=1}^{S} 1\\{\\hat θ_s + t_{G-1}\\,SE_{jack,s} < 0
        \\ \\wedge\\ m\\,p_s < α\\},\\qquad MC\\ SE = \\sqrt{\\text{power}(1-\\text{power})/S}

    Parameters
    ----------
    differences : PairedDifferences
        From :func:`paired_differences`.
    monkeys : sequence of int
        Study sizes G (each ≥ 2).
    effect : float, optional
        MAE reduction to assume (mmHg); None keeps the run's.
    alpha : float
        Threshold of the (adjusted) sign-flip p, 0.05 in the verdict.
    ci_level : float, optional
        Interval level; default 1 − alpha (0.95, as the verdict).
    n_sim : int
        Simulated studies per G.
    n_comparisons : int
        m, the Bonferroni factor standing in for the run's Holm adjustment (1: no adjustment).
    target_power : float
        Power the detectable effect must reach (0.8).
    detectable : bool
        Also find the smallest effect detectable with ``target_power``.
    detect_at : int, optional
        Number of monkeys for that effect; default the run's own number of monkeys.

    Returns
    -------
    PowerResult

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> n = np.full(14, 30.0)
    >>> diffs = PairedDifferences("cnn", "ols_iop", [str(g) for g in range(14)], n,
    ...                           n * (10 + rng.normal(-1, 2, 14)), n * 10.0)
    >>> res = plan_power(diffs, [6, 14], n_sim=500, detectable=False)
    >>> [round(r.power, 2) for r in res.rows]
    [0.09, 0.55]
    """
    G0 = differences.n_subjects
    if G0 < 2:
        raise InputError(f"the run has {G0} monkey with both {differences.model} and "
                         f"{differences.reference}: at least 2 are needed")
    monkeys = [int(g) for g in monkeys]
    if not monkeys or min(monkeys) < 2:
        raise InputError(f"--monkeys must be whole numbers of at least 2, got {monkeys}")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be in (0, 1), got {alpha}")
    if effect is not None and not np.isfinite(effect):
        raise InputError(f"--effect must be a finite number of mmHg, got {effect}")
    ci_level = 1 - alpha if ci_level is None else ci_level
    observed = differences.pooled
    shift = 0.0 if effect is None else -float(effect) - observed
    common = dict(n_sim=n_sim, seed=seed, alpha=alpha, ci_level=ci_level,
                  n_comparisons=n_comparisons, n_perm=n_perm, exact_max=exact_max)
    rows = []
    for G in monkeys:
        res, _ = _simulate(differences, G, shift, **common)
        pw = float(res.better.mean())
        rows.append(PowerRow(G, pw, float(np.sqrt(pw * (1 - pw) / n_sim)),
                             float(res.better_interval.mean()), float(res.better_signflip.mean()),
                             res.signflip_method))
    notes = []
    if n_comparisons > 1:
        notes.append(f"The sign-flip p is multiplied by {n_comparisons} (Bonferroni), which is "
                     f"Holm's adjustment for the smallest of {n_comparisons} p-values and "
                     f"conservative otherwise.")
    smallest_p = {G: 2.0 / 2**G for G in monkeys if G <= exact_max}
    blocked = [G for G, p in smallest_p.items() if min(1.0, n_comparisons * p) >= alpha]
    if blocked:
        notes.append(f"With {', '.join(map(str, blocked))} monkeys the sign-flip test cannot reach "
                     f"p < {alpha:g}{'' if n_comparisons == 1 else ' after adjustment'} (its "
                     f"smallest p is 2/2^G): the power there is 0 whatever the effect.")
    if any(G > exact_max for G in monkeys):
        notes.append(f"Above {exact_max} monkeys the sign-flip p of each study is estimated from "
                     f"{n_perm} random sign patterns.")
    G_detect = G0 if detect_at is None else int(detect_at)
    det = _detectable(differences, G_detect, observed, target_power, common) if detectable else None
    return PowerResult(differences.model, differences.reference, G0, -observed,
                       -float(differences.per_subject.mean()), None if effect is None else float(effect),
                       float(alpha), float(ci_level), int(n_comparisons), int(n_sim), int(n_perm), seed,
                       rows, det, notes)


def _detectable(differences, G, observed, target, common):
    """Smallest MAE reduction with power ≥ target at G monkeys (bisection, common random numbers)."""
    out = DetectableEffect(int(G), float(target))
    alpha, m = common["alpha"], common["n_comparisons"]
    if G <= common["exact_max"] and min(1.0, m * 2.0 / 2**G) >= common["alpha"]:
        out.note = (f"the sign-flip test cannot reach p < {alpha:g} with {G} monkeys"
                    + ("" if m == 1 else f" once p is multiplied by {m} comparisons"))
        return out
    index = None

    def power(reduction):
        nonlocal index
        res, index = _simulate(differences, G, -reduction - observed, index=index, **common)
        return float(res.better.mean())

    scale = float(np.mean(np.abs(differences.per_subject))) or 1.0
    lo, hi = 0.0, max(scale, abs(observed))
    p_hi = power(hi)
    while p_hi < target:
        lo, hi = hi, 2 * hi
        if hi > 1e4 * scale:
            out.note = "the target power is not reached at any effect"
            return out
        p_hi = power(hi)
    while hi - lo > EFFECT_TOLERANCE:
        mid = (lo + hi) / 2
        p_mid = power(mid)
        if p_mid >= target:
            hi, p_hi = mid, p_mid
        else:
            lo = mid
    out.effect, out.power = float(hi), float(p_hi)
    return out


# --------------------------------------------------------------------------- benchmark


def _bench_workload(seed=0):
    """14 monkeys with the real study's scan counts, a clustered MAE difference of about -1 mmHg."""
    rng = np.random.default_rng(seed)
    n = np.asarray(REAL_SCANS_PER_SUBJECT, dtype=float)
    lr = n * rng.uniform(6, 12, n.size)
    lm = lr + n * rng.normal(-1.0, 1.5, n.size)
    return PairedDifferences("cnn", "ols_iop", [str(g + 1) for g in range(n.size)], n, lm, lr)


def naive_power(differences, n_monkeys, n_sim, seed=0, alpha=VERDICT_ALPHA, ci_level=0.95):
    """Yardstick: a plain loop over studies with the engine's own sign-flip test and t interval."""
    index = np.random.default_rng([int(seed), int(n_monkeys)]).integers(
        0, differences.n_subjects, size=(int(n_sim), int(n_monkeys)))
    better = 0
    for row in index:
        n = differences.n_scans[row]
        dl = differences.loss_difference[row]
        delta = dl.sum() / n.sum()
        jack = (dl.sum() - dl) / (n.sum() - n)
        _, hi = bootstrap.t_interval(delta, jack, ci_level)
        p = signflip_test(dl / n, seed=seed)["p"]
        better += bool(hi < 0 and p < alpha)
    return better / n_sim


def bench(n_sim=DEFAULT_N_SIM, monkeys=tuple(range(6, 46)), naive_sim=20, naive_monkeys=(6, 14, 20, 30, 45),
          n_perm=DEFAULT_N_PERM):
    """Time :func:`plan_power` on 40 study sizes and the naive loop on a subset; print both."""
    diffs = _bench_workload()
    print(f"workload: {diffs.n_subjects} monkeys (the real study's scan counts), study sizes "
          f"{monkeys[0]}-{monkeys[-1]} ({len(monkeys)} values) x {n_sim} simulated studies, "
          f"verdict rule (t interval + sign-flip: exact up to {MAX_EXACT} monkeys, "
          f"{n_perm} shared random patterns above; the engine draws 100,000 per study)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, machine {platform.machine()}")
    t0 = time.perf_counter()
    res = plan_power(diffs, monkeys, n_sim=n_sim, detectable=False, n_perm=n_perm)
    t_vec = time.perf_counter() - t0
    print(f"vectorised planner: {t_vec:.2f} s for {len(monkeys)} x {n_sim} studies")
    t0 = time.perf_counter()
    plan_power(diffs, (diffs.n_subjects,), n_sim=n_sim, detectable=True, n_perm=n_perm)
    print(f"power at {diffs.n_subjects} monkeys plus the detectable effect (bisection): "
          f"{time.perf_counter() - t0:.2f} s")
    per_study = []
    for G in naive_monkeys:
        t0 = time.perf_counter()
        naive_power(diffs, G, naive_sim)
        per_study.append((time.perf_counter() - t0) / naive_sim)
    # the subset's mean cost per study, for the same G mix as the full grid
    cost = np.interp(monkeys, naive_monkeys, per_study)
    scaled = float(np.sum(cost) * n_sim)
    print(f"naive loop (engine's signflip_test + t_interval per study): {naive_sim} studies at each "
          f"of G = {', '.join(map(str, naive_monkeys))}, "
          + ", ".join(f"{1000 * c:.1f} ms" for c in per_study)
          + f" per study; interpolated over G and scaled to {len(monkeys)} x {n_sim}: "
            f"{scaled:.0f} s (estimate, not run)")
    print(f"speed-up of the planner over the naive loop: {scaled / t_vec:.0f}x")
    print(f"power at 6/14/30/45 monkeys: " + ", ".join(f"{res.power_at(g):.3f}" for g in (6, 14, 30, 45)))
    return t_vec


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m icpcv.stats.power",
        description="Power of a new study (resampling the monkeys of a predictions table), or --bench.")
    p.add_argument("predictions", nargs="?", help="out-of-fold predictions table (.csv/.parquet)")
    p.add_argument("--model", default="cnn")
    p.add_argument("--reference", default="ols_iop")
    p.add_argument("--monkeys", default=",".join(map(str, DEFAULT_MONKEYS)))
    p.add_argument("--effect", type=float, default=None, help="MAE reduction to assume (mmHg)")
    p.add_argument("--alpha", type=float, default=VERDICT_ALPHA)
    p.add_argument("--n-sim", type=int, default=DEFAULT_N_SIM)
    p.add_argument("--n-comparisons", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-perm", type=int, default=DEFAULT_N_PERM,
                   help="random sign patterns per study size above 20 monkeys")
    p.add_argument("--bench", action="store_true", help="time 40 study sizes x 2,000 studies")
    args = p.parse_args(argv)
    if args.bench:
        bench(n_sim=args.n_sim, n_perm=args.n_perm)
        return 0
    if not args.predictions:
        p.error("give a predictions table or --bench")
    try:
        monkeys = [int(x) for x in args.monkeys.split(",") if x.strip()]
    except ValueError:
        p.error(f"--monkeys must be comma-separated whole numbers, got {args.monkeys!r}")
    try:
        diffs = paired_differences(read_predictions(args.predictions), args.model, args.reference,
                                   source=args.predictions)
        res = plan_power(diffs, monkeys, effect=args.effect, alpha=args.alpha, n_sim=args.n_sim,
                         seed=args.seed, n_comparisons=args.n_comparisons, n_perm=args.n_perm)
    except InputError as exc:
        print(f"error: {exc}")
        return 2
    print(res.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
