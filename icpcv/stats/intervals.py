"""Prediction intervals that hold for a new monkey, from a run's out-of-fold residuals.

A run's folds hold whole monkeys out, so every scan's out-of-fold residual comes from a model that
never saw its monkey: exactly what a monkey-level conformal interval needs. Scans of one monkey
are not exchangeable with each other's absence, but monkeys are: the G monkeys of the run and a
new one are taken as exchangeable draws from one population (the *hierarchical* exchangeability
of Lee, Barber & Willett 2023), with any number of scans each.

The rule (hierarchical split conformal with the CDF-pooling weights of Dunn, Wasserman & Ramdas
2022, as Lee et al. write it): give monkey g's n_g scores the weight 1 / ((G + 1) n_g) each, put
the remaining mass 1 / (G + 1) on +inf (the new monkey, whose score is unknown), and take the
level-(1 - alpha) quantile of that distribution::

    q = Q_{1-alpha}( sum_g 1/(G+1) * (1/n_g) sum_j delta_{R_gj}  +  1/(G+1) * delta_{+inf} )

    Q_p(F) = inf { t : F(t) >= p }

so q is finite only when 1 - alpha <= G / (G + 1); with 14 monkeys no finite interval is
distribution-free at 95% (q = inf there, and it is reported so). The prediction interval of a
new scan uses the fold models themselves (the hierarchical CV+ of Lee et al., section 4; with one
monkey per fold their hierarchical jackknife+): with mu_g(x) the prediction of the fold model that
held monkey g out and R_gj = |y_gj - mu_g(x_gj)| its absolute residuals::

    low(x)  = -Q_{1-alpha}( weights, -(mu_g(x) - R_gj) )      (the alpha lower quantile)
    high(x) =  Q_{1-alpha}( weights,   mu_g(x) + R_gj  )

which is the ensemble prediction +- q when the fold models agree, and wider when they do not.
For a new monkey's mean ICP over its scans, each run monkey gives one score, the mean of its
signed residuals, and the same rule runs with G scores of weight 1 / (G + 1) each.

References
----------
Dunn R, Wasserman L, Ramdas A (2022). Distribution-free prediction sets for two-layer hierarchical
models. J Am Stat Assoc 118:2491-2502. arXiv:1809.07441.
Lee Y, Barber RF, Willett R (2023). Distribution-free inference with hierarchical data.
arXiv:2306.06342.
Barber RF, Candes EJ, Ramdas A, Tibshirani RJ (2021). Predictive inference with the jackknife+.
Ann Stat 49:486-507.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: the levels the run's report and stats.json give
REPORT_LEVELS = (0.8, 0.9, 0.95)
METHOD = ("hierarchical split conformal (CDF pooling, weight 1/(G+1) per monkey, Dunn et al. 2022; Lee et al. "
          "2023) on the run's out-of-fold residuals; per scan the hierarchical CV+ with the fold models")
#: floating-point slack when a cumulative weight meets the level exactly
_TOL = 1e-12


def check_level(level) -> float:
    """``level`` as a float in (0, 1), else ValueError naming it."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"level {level!r} is not a number; give a coverage level in (0, 1), e.g. 0.9") from None
    if not 0.0 < value < 1.0 or not math.isfinite(value):
        raise ValueError(f"level {level!r} is outside (0, 1); give a coverage level such as 0.9 for 90%")
    return value


def group_weights(groups) -> np.ndarray:
    """Each score's weight 1 / ((G + 1) n_g): every monkey weighs the same, whatever its number of scans.

    >>> group_weights(["a", "a", "b"]).round(4).tolist()
    [0.1667, 0.1667, 0.3333]
    """
    g = pd.Series(np.asarray(groups)).astype(str)
    n_g = g.map(g.value_counts()).to_numpy(float)
    return 1.0 / ((g.nunique() + 1) * n_g)


def weighted_upper_quantile(values, weights, level: float) -> float:
    """``inf {t : sum_i w_i 1(v_i <= t) >= level}``; the mass the weights leave short of 1 sits at +inf.

    Returns ``inf`` when the weights of all finite values add up to less than ``level``.

    >>> weighted_upper_quantile([1.0, 2.0, 3.0], [0.25, 0.25, 0.25], 0.5)
    2.0
    >>> weighted_upper_quantile([1.0, 2.0, 3.0], [0.25, 0.25, 0.25], 0.8)
    inf
    """
    v = np.asarray(values, float)
    w = np.asarray(weights, float)
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    hit = np.nonzero(cum >= level - _TOL)[0]
    return float(v[order][hit[0]]) if len(hit) else math.inf


def hierarchical_quantile(scores, groups, level: float) -> float:
    """The monkey-level conformal quantile of ``scores`` (e.g. absolute out-of-fold residuals).

    Formula: ``Q_level( sum_g 1/(G+1) (1/n_g) sum_j delta(s_gj) + 1/(G+1) delta(+inf) )`` (Dunn et al.
    2022's CDF pooling with the finite-sample correction, as in Lee et al. 2023). For a new monkey
    exchangeable with the G monkeys, one of its scans, drawn at random, has a score at most this
    quantile with probability at least ``level`` (split conformal: scores of models that saw neither
    the new monkey nor the scored one). ``inf`` when ``level > G / (G + 1)``.

    Parameters
    ----------
    scores : array of n floats
    groups : array of n labels (the monkey of each score)
    level : float in (0, 1)

    Examples
    --------
    Two monkeys, one with three scans: each monkey carries 1/3 of the mass, +inf the last third.

    >>> hierarchical_quantile([1.0, 2.0, 3.0, 10.0], ["a", "a", "a", "b"], 0.3)
    3.0
    >>> hierarchical_quantile([1.0, 2.0, 3.0, 10.0], ["a", "a", "a", "b"], 0.6)
    10.0
    >>> hierarchical_quantile([1.0, 2.0, 3.0, 10.0], ["a", "a", "a", "b"], 0.7)
    inf
    """
    level = check_level(level)
    return weighted_upper_quantile(scores, group_weights(groups), level)


def scan_quantile(scores, level: float) -> float:
    """The naive scan-level split-conformal quantile: the ceil((n + 1) level)-th smallest of n scores.

    Right for exchangeable scans; scans of one monkey are not, so this is what an interval built
    as if they were (MAPIE on scans) would use. ``inf`` when ceil((n + 1) level) > n.

    >>> scan_quantile([4.0, 1.0, 3.0, 2.0], 0.6)
    3.0
    """
    level = check_level(level)
    s = np.sort(np.asarray(scores, float))
    k = math.ceil((len(s) + 1) * level - _TOL)
    return float(s[k - 1]) if k <= len(s) else math.inf


def cv_plus_interval(centres: np.ndarray, scores, groups, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical CV+ (Lee et al. 2023, section 4, with Barber et al. 2021's CV+ for the folds).

    ``centres`` is ``(n_new, n)``: for each new scan, the prediction of the fold model that held out
    the monkey of each of the n scored scans; ``scores`` their absolute out-of-fold residuals. Returns
    ``(low, high)`` arrays of n_new. With every centre equal to c, the interval is ``c -+ q`` with
    ``q = hierarchical_quantile(scores, groups, level)``.

    >>> lo, hi = cv_plus_interval(np.array([[5.0, 5.0, 5.0, 5.0]]), [1.0, 2.0, 3.0, 10.0], list("aaab"), 0.3)
    >>> float(lo[0]), float(hi[0])
    (2.0, 8.0)
    """
    level = check_level(level)
    w = group_weights(groups)
    r = np.asarray(scores, float)
    centres = np.atleast_2d(np.asarray(centres, float))
    low = np.array([-weighted_upper_quantile(-(c - r), w, level) for c in centres])
    high = np.array([weighted_upper_quantile(c + r, w, level) for c in centres])
    return low, high


def monkey_mean_scores(residuals, groups) -> pd.Series:
    """Each monkey's mean signed residual (one score per monkey), for the interval of a monkey's mean ICP.

    >>> monkey_mean_scores([1.0, -3.0, 2.0], ["a", "a", "b"]).to_dict()
    {'a': -1.0, 'b': 2.0}
    """
    return pd.Series(np.asarray(residuals, float)).groupby(pd.Series(np.asarray(groups)).astype(str),
                                                           sort=True).mean()


@dataclass
class ModelInterval:
    """One model's interval half-widths (mmHg) at one level: for one scan of a new monkey and for its mean ICP."""

    model: str
    level: float
    half_width: float  # hierarchical quantile of |out-of-fold residual| (inf: not attainable with G monkeys)
    half_width_mean: float  # the same over the G monkeys' mean residuals (a monkey's mean ICP over its scans)
    naive_half_width: float  # scan-level quantile of the same residuals, as if scans were exchangeable
    n_subjects: int
    n_scans: int
    finite: bool  # level <= G / (G + 1)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInterval":
        kw = dict(d)
        for k in ("half_width", "half_width_mean", "naive_half_width"):
            kw[k] = math.inf if kw.get(k) is None else float(kw[k])
        return cls(**kw)


@dataclass
class PredictionIntervals:
    """``stats.json["prediction_intervals"]``: per model and level, what a prediction for a new monkey is worth."""

    method: str = METHOD
    levels: list = field(default_factory=lambda: list(REPORT_LEVELS))
    max_finite_level: float = float("nan")  # G / (G + 1)
    models: dict = field(default_factory=dict)  # model -> [ModelInterval per level]

    def get(self, model: str, level: float) -> ModelInterval | None:
        return next((m for m in self.models.get(model, []) if abs(m.level - level) < 1e-9), None)

    def to_dict(self) -> dict:
        return dict(method=self.method, levels=list(self.levels), max_finite_level=self.max_finite_level,
                    models={m: [x.to_dict() for x in v] for m, v in self.models.items()})

    @classmethod
    def from_dict(cls, d: dict | None) -> "PredictionIntervals | None":
        if not d:
            return None
        return cls(method=d.get("method", METHOD), levels=list(d.get("levels") or []),
                   max_finite_level=float(d.get("max_finite_level") or float("nan")),
                   models={m: [ModelInterval.from_dict(x) for x in v] for m, v in (d.get("models") or {}).items()})


def prediction_intervals(predictions: pd.DataFrame, levels=REPORT_LEVELS) -> PredictionIntervals:
    """Half-widths per model and level from out-of-fold predictions (one row per model and scan:
    ``subject, model, y_true, y_pred``; with repeats, the seed ensemble)."""
    out = PredictionIntervals(levels=[float(x) for x in levels])
    for model, rows in predictions.groupby("model", sort=False):
        rows = rows[np.isfinite(rows["y_true"]) & np.isfinite(rows["y_pred"])]
        if rows.empty:
            continue
        resid = (rows["y_true"] - rows["y_pred"]).to_numpy(float)
        groups = rows["subject"].astype(str).to_numpy()
        n_g = len(set(groups))
        out.max_finite_level = n_g / (n_g + 1)
        means = monkey_mean_scores(resid, groups)
        out.models[str(model)] = [
            ModelInterval(model=str(model), level=float(lv),
                          half_width=hierarchical_quantile(np.abs(resid), groups, lv),
                          half_width_mean=hierarchical_quantile(np.abs(means.to_numpy()), means.index, lv),
                          naive_half_width=scan_quantile(np.abs(resid), lv),
                          n_subjects=n_g, n_scans=int(len(resid)), finite=bool(lv <= n_g / (n_g + 1) + _TOL))
            for lv in levels]
    return out
