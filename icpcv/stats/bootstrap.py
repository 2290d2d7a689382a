"""Monkey-level (cluster) bootstrap, vectorised over resamples.

The unit of resampling is the subject (monkey): a resample draws G subjects
with replacement and keeps *all* scans of each drawn subject. Nothing here
resamples scans.

How it is fast
--------------
Every metric we report is a smooth function of a few sums over scans. For
each subject g and each model we store the vector of sufficient statistics
(:data:`COLS`)::

    n, Σ|e|, Σe, Σe², Σy, Σy², Σp, Σp², Σyp, MAE_g, 1[n_g > 0]

with e = y_pred - y_true, y = y_true and p = y_pred (y and p shifted by one
common constant for numerical stability; e is unchanged). A resample is a
vector of counts c_g (how often subject g was drawn), so its totals are
``c @ S``; for B resamples ``C @ S`` with C the B x G count matrix -- one
matrix product for all models and metrics. Paired comparisons put both
models' statistics (computed on the scans the two models share) side by side
in the same matrix, so the *same* resampled subjects enter both terms of a
difference.

Interval methods (``CI_METHODS``)
---------------------------------
``percentile``
    Quantiles of the bootstrap distribution (Efron & Tibshirani 1993, ch. 13).
``bca``
    Bias-corrected and accelerated (Efron 1987); bias correction
    :math:`z_0 = \\Phi^{-1}(\\#\\{\\theta^*<\\hat\\theta\\} + \\tfrac12\\#\\{\\theta^*=\\hat\\theta\\})/B`,
    acceleration from the leave-one-*subject*-out jackknife
    :math:`a = \\sum (\\bar\\theta_{(\\cdot)}-\\theta_{(g)})^3 /
    (6[\\sum(\\bar\\theta_{(\\cdot)}-\\theta_{(g)})^2]^{3/2})`.
``studentized``
    Cluster bootstrap-t (Efron & Tibshirani 1993, ch. 12.5; Cameron, Gelbach
    & Miller 2008). Each resample's standard error is the cluster-robust
    (sandwich / linearisation) SE :math:`\\sqrt{\\sum_g c_g (\\nabla f(T^*)\\cdot s_g)^2}`,
    where f is the metric as a function of the totals T and s_g subject g's
    statistics. All metrics are ratios of totals (homogeneous of degree 0),
    so :math:`\\nabla f\\cdot T = 0` and no centring term is needed.
    A resample that drew fewer than 2 distinct monkeys has an SE of 0 up to
    rounding, so its t* is undefined (as for an SE below ``SE_RTOL`` of the
    data's); see :func:`interval_with_reason` for when the interval is then
    not reported at all.
    Interval :math:`[\\hat\\theta - q^*_{1-\\alpha/2}\\,\\widehat{se},\\ \\hat\\theta - q^*_{\\alpha/2}\\,\\widehat{se}]`
    with :math:`q^*` quantiles of :math:`(\\theta^*-\\hat\\theta)/se^*`.
``t``
    Jackknife standard error over subjects with a t(G-1) quantile:
    :math:`\\hat\\theta \\pm t_{G-1,1-\\alpha/2}\\sqrt{\\tfrac{G-1}{G}\\sum_g(\\theta_{(g)}-\\bar\\theta_{(\\cdot)})^2}`.
    This is the CV3 / jackknife cluster-robust variance with G-1 degrees of
    freedom that MacKinnon, Nielsen & Webb (2023, J Econometrics 232:272-299)
    recommend when clusters are few and unequal in size. It uses no
    resamples (deterministic).

References
----------
Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap. Chapman & Hall.
Efron B (1987). Better bootstrap confidence intervals. JASA 82:171-185.
Cameron AC, Gelbach JB, Miller DL (2008). Bootstrap-based improvements for
inference with clustered errors. Rev Econ Stat 90:414-427.
Field CA, Welsh AH (2007). Bootstrapping clustered data. JRSS B 69:369-390.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

COLS = ("n", "sa", "se", "se2", "sy", "syy", "sp", "spp", "syp", "smae", "one")
K = len(COLS)
(N, SA, SE, SE2, SY, SYY, SP, SPP, SYP, SMAE, ONE) = range(K)

CI_METHODS = ("percentile", "bca", "studentized", "t")

#: A resample's cluster-robust SE below this fraction of the data's SE is degenerate
#: (:func:`run_bootstrap` sets it to NaN: that resample's t* is undefined).
SE_RTOL = 1e-6

#: A studentized interval wider than this many times the spread of the values the metric took
#: (on the data, the resamples and the leave-one-monkey-out samples) is not reported
#: (:func:`interval_with_reason`).
MAX_WIDTH_RATIO = 10.0

#: Metrics available from the sufficient statistics.
METRICS = ("mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean", "ba_slope")


# --------------------------------------------------------------------------
# sufficient statistics
# --------------------------------------------------------------------------

def subject_sums(codes, y_true, y_pred, n_groups, center=0.0):
    """Per-subject sufficient statistics, shape (n_groups, K).

    For subject g, with e = p - y, y = y_true - center, p = y_pred - center,
    sums over the subject's scans i (columns in the order of :data:`COLS`)::

        n_g, Σ|e_i|, Σe_i, Σe_i², Σy_i, Σy_i², Σp_i, Σp_i², Σy_i p_i,
        MAE_g = Σ|e_i| / n_g,  1[n_g > 0]

    Every metric in :data:`METRICS` is a function of the column totals
    (:func:`metric_value_grad`), so a resample's metrics need only
    ``counts @ S``.

    Parameters
    ----------
    codes : array_like of int, shape (n_scans,)
        Subject code 0..n_groups-1 of each scan.
    y_true, y_pred : array_like, shape (n_scans,)
        Truth and prediction of each scan.
    n_groups : int
        Number of subjects G (rows of the result).
    center : float, default 0.0
        Subtracted from y_true and y_pred before the sums of squares and
        products (shift-invariant metrics only; e is unaffected).

    Returns
    -------
    numpy.ndarray, shape (n_groups, K)
        Subjects without scans get a row of zeros.

    Examples
    --------
    >>> from icpcv.stats.bootstrap import COLS, subject_sums
    >>> S = subject_sums(codes=[0, 0, 1], y_true=[10.0, 12.0, 20.0],
    ...                  y_pred=[11.0, 15.0, 18.0], n_groups=3)
    >>> S.shape
    (3, 11)
    >>> dict(zip(COLS, S[0].tolist()))
    {'n': 2.0, 'sa': 4.0, 'se': 4.0, 'se2': 10.0, 'sy': 22.0, 'syy': 244.0,
     'sp': 26.0, 'spp': 346.0, 'syp': 290.0, 'smae': 2.0, 'one': 1.0}
    >>> S[2].tolist() == [0.0] * 11    # subject 2 has no scans
    True
    """
    codes = np.asarray(codes, dtype=np.intp)
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    e = p - y
    yc = y - center
    pc = p - center
    G = int(n_groups)
    S = np.zeros((G, K))

    def bc(w=None):
        return np.bincount(codes, weights=w, minlength=G)

    S[:, N] = bc()
    S[:, SA] = bc(np.abs(e))
    S[:, SE] = bc(e)
    S[:, SE2] = bc(e * e)
    S[:, SY] = bc(yc)
    S[:, SYY] = bc(yc * yc)
    S[:, SP] = bc(pc)
    S[:, SPP] = bc(pc * pc)
    S[:, SYP] = bc(yc * pc)
    has = S[:, N] > 0
    S[has, SMAE] = S[has, SA] / S[has, N]
    S[:, ONE] = has
    return S


# --------------------------------------------------------------------------
# metrics as functions of totals, with gradients
# --------------------------------------------------------------------------

def _moments(T):
    """Centred sums Syy, Spp, Syp and their gradients with respect to T."""
    n, sy, sp = T[..., N], T[..., SY], T[..., SP]
    z = np.zeros(T.shape)
    Syy = T[..., SYY] - sy**2 / n
    gyy = z.copy()
    gyy[..., SYY] = 1
    gyy[..., SY] = -2 * sy / n
    gyy[..., N] = sy**2 / n**2
    Spp = T[..., SPP] - sp**2 / n
    gpp = z.copy()
    gpp[..., SPP] = 1
    gpp[..., SP] = -2 * sp / n
    gpp[..., N] = sp**2 / n**2
    Syp = T[..., SYP] - sy * sp / n
    gyp = z
    gyp[..., SYP] = 1
    gyp[..., SY] = -sp / n
    gyp[..., SP] = -sy / n
    gyp[..., N] = sy * sp / n**2
    return (Syy, gyy), (Spp, gpp), (Syp, gyp)


def metric_value_grad(T, name, grad=True):
    """Value (and gradient d value / d T) of metric ``name`` at totals ``T``.

    ``T`` has shape (..., K). Formulas (pooled over scans):

    * mae  = Σ|e| / n;  bias = Σe / n;  rmse = sqrt(Σe² / n)
    * r2   = 1 - Σe² / Σ(y - ȳ)²   (scikit-learn's r2_score on the pooled scans)
    * pearson_r = Σ(y-ȳ)(p-p̄) / sqrt(Σ(y-ȳ)² Σ(p-p̄)²)
    * mae_subject_mean = mean over subjects of the per-subject MAE
    * ba_slope = OLS slope of d = p - y on a = (p + y)/2
      = 2(Spp - Syy) / (Syy + 2 Syp + Spp)

    with the centred sums Syy = Σy² - (Σy)²/n, Spp = Σp² - (Σp)²/n and
    Syp = Σyp - Σy Σp / n. The gradient is what the cluster-robust
    (linearisation) standard error of the ``studentized`` interval needs.

    Parameters
    ----------
    T : numpy.ndarray, shape (..., K)
        Column totals of :func:`subject_sums` (for B resamples: ``counts @ S``).
    name : str
        One of :data:`METRICS`.
    grad : bool, default True
        Also return the gradient.

    Returns
    -------
    value : numpy.ndarray or float, shape T.shape[:-1]
        NaN (no warning) where the metric is undefined, e.g. n = 0.
    gradient : numpy.ndarray, shape T.shape
        Only when ``grad`` is true.

    Examples
    --------
    >>> from icpcv.stats.bootstrap import metric_value_grad, subject_sums
    >>> y_true = [10.0, 12.0, 20.0, 14.0]
    >>> y_pred = [11.0, 15.0, 18.0, 14.0]         # errors 1, 3, -2, 0
    >>> T = subject_sums([0, 0, 0, 1], y_true, y_pred, n_groups=2).sum(axis=0)
    >>> for name in ("mae", "bias", "rmse", "r2", "pearson_r", "mae_subject_mean", "ba_slope"):
    ...     print(f"{name} {float(metric_value_grad(T, name, grad=False)):.4f}")
    mae 1.5000
    bias 0.5000
    rmse 1.8708
    r2 0.7500
    pearson_r 0.9087
    mae_subject_mean 1.0000
    ba_slope -0.4161
    >>> from sklearn.metrics import r2_score
    >>> round(r2_score(y_true, y_pred), 4)
    0.75

    The gradient of mae = Σ|e| / n with respect to (n, Σ|e|) is
    (-Σ|e| / n², 1 / n):

    >>> value, gradient = metric_value_grad(T, "mae")
    >>> gradient[:2].tolist()
    [-0.375, 0.25]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.zeros(T.shape) if grad else None
        n = T[..., N]
        if name in ("mae", "bias"):
            col = SA if name == "mae" else SE
            v = T[..., col] / n
            if grad:
                g[..., col] = 1 / n
                g[..., N] = -T[..., col] / n**2
        elif name == "rmse":
            mse = T[..., SE2] / n
            v = np.sqrt(mse)
            if grad:
                g[..., SE2] = 1 / (2 * v * n)
                g[..., N] = -mse / (2 * v * n)
        elif name == "mae_subject_mean":
            v = T[..., SMAE] / T[..., ONE]
            if grad:
                g[..., SMAE] = 1 / T[..., ONE]
                g[..., ONE] = -T[..., SMAE] / T[..., ONE] ** 2
        elif name in ("r2", "pearson_r", "ba_slope"):
            (Syy, gyy), (Spp, gpp), (Syp, gyp) = _moments(T)
            if name == "r2":
                v = 1 - T[..., SE2] / Syy
                if grad:
                    g[..., SE2] = -1 / Syy
                    g += (T[..., SE2] / Syy**2)[..., None] * gyy
            elif name == "pearson_r":
                v = Syp / np.sqrt(Syy * Spp)
                if grad:
                    g = ((1 / np.sqrt(Syy * Spp))[..., None] * gyp
                         - (v / (2 * Syy))[..., None] * gyy
                         - (v / (2 * Spp))[..., None] * gpp)
            else:
                num = 2 * (Spp - Syy)
                den = Syy + 2 * Syp + Spp
                v = num / den
                if grad:
                    g = (((2 * den - num) / den**2)[..., None] * gpp
                         + ((-2 * den - num) / den**2)[..., None] * gyy
                         + (-2 * num / den**2)[..., None] * gyp)
        else:
            raise ValueError(f"unknown metric {name!r}")
    return (v, g) if grad else v


# --------------------------------------------------------------------------
# estimands and the resampling engine
# --------------------------------------------------------------------------

@dataclass
class Estimand:
    """A metric of one block of statistics, or a difference of two blocks.

    ``block`` / ``minus`` are column offsets into the stacked statistics
    matrix (each block is K columns wide). value = f(T[block]) - f(T[minus]).

    Parameters
    ----------
    key : hashable
        A name for the estimand (not used in the computation).
    metric : str
        One of :data:`METRICS`.
    block : int
        Column offset of the model's block (0, K, 2K, ...).
    minus : int or None, default None
        Column offset of the block subtracted (a paired difference), or None.

    Examples
    --------
    Two models' statistics side by side; the difference uses the same
    subjects in both terms:

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import Estimand, K, subject_sums
    >>> codes, y = [0, 0, 1, 1], [10.0, 12.0, 20.0, 14.0]
    >>> S = np.hstack([subject_sums(codes, y, [11.0, 15.0, 18.0, 14.0], 2),   # MAE 1.5
    ...                subject_sums(codes, y, [10.0, 13.0, 21.0, 14.0], 2)])  # MAE 0.5
    >>> T = S.sum(axis=0)
    >>> float(Estimand("mae B", "mae", block=K).value(T))
    0.5
    >>> float(Estimand("mae A - B", "mae", block=0, minus=K).value(T))
    1.0
    """

    key: object
    metric: str
    block: int
    minus: int | None = None

    def cols(self, offset):
        return slice(offset, offset + K)

    def value(self, T, grad=False):
        a = T[..., self.cols(self.block)]
        if self.minus is None:
            return metric_value_grad(a, self.metric, grad=grad)
        b = T[..., self.cols(self.minus)]
        if not grad:
            return metric_value_grad(a, self.metric, False) - metric_value_grad(b, self.metric, False)
        va, ga = metric_value_grad(a, self.metric)
        vb, gb = metric_value_grad(b, self.metric)
        return va - vb, (ga, gb)

    def influence(self, T, S, grad):
        """∇f(T)·s_g for every subject g; shape (..., G)."""
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if self.minus is None:
                return grad @ S[:, self.cols(self.block)].T
            ga, gb = grad
            return ga @ S[:, self.cols(self.block)].T - gb @ S[:, self.cols(self.minus)].T


def resample_indices(n_groups, n_boot, rng):
    """B x G matrix of subject indices drawn with replacement.

    Row b is one cluster-bootstrap resample: G subjects drawn uniformly with
    replacement (Field & Welsh 2007; Cameron, Gelbach & Miller 2008).

    Parameters
    ----------
    n_groups : int
        Number of subjects G.
    n_boot : int
        Number of resamples B.
    rng : numpy.random.Generator
        Source of randomness (seeded by the caller).

    Returns
    -------
    numpy.ndarray of int, shape (n_boot, n_groups)
        Row b lists the subjects drawn for resample b (with replacement).

    Examples
    --------
    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import resample_indices
    >>> idx = resample_indices(n_groups=4, n_boot=3, rng=np.random.default_rng(0))
    >>> idx.shape, bool(((idx >= 0) & (idx < 4)).all())
    ((3, 4), True)
    """
    return rng.integers(0, n_groups, size=(int(n_boot), int(n_groups)))


def counts_from_indices(idx, n_groups):
    """B x G matrix of how many times each subject was drawn (float64).

    C[b, g] = #{j : idx[b, j] = g}, so a resample's totals are ``C[b] @ S``.
    Each row sums to the number of draws.

    Parameters
    ----------
    idx : array_like of int, shape (B, G)
        Subject indices, e.g. from :func:`resample_indices`.
    n_groups : int
        Number of subjects G.

    Returns
    -------
    numpy.ndarray of float64, shape (B, n_groups)
        The draw counts; a subject not drawn has 0.

    Examples
    --------
    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import counts_from_indices
    >>> counts_from_indices(np.array([[0, 0, 2], [1, 2, 2]]), n_groups=3)
    array([[2., 0., 1.],
           [0., 1., 2.]])
    """
    idx = np.asarray(idx)
    B = idx.shape[0]
    flat = (idx + (np.arange(B) * n_groups)[:, None]).ravel()
    return np.bincount(flat, minlength=B * n_groups).reshape(B, n_groups).astype(float)


@dataclass
class BootstrapOutput:
    """Everything needed to form intervals for each estimand (columns).

    Made by :func:`run_bootstrap`, read by :func:`interval`. E is the number
    of estimands, B of resamples.

    Attributes
    ----------
    estimate : numpy.ndarray, shape (E,)
        Each estimand on the data.
    boot : numpy.ndarray, shape (B, E)
        Each estimand on each resample.
    jack : list of numpy.ndarray
        Per estimand, its leave-one-subject-out values (subjects with scans).
    se_hat, se_boot : numpy.ndarray or None
        Cluster-robust SE on the data (E,) and on each resample (B, E);
        only with ``studentized=True``.
    n_boot : int
        B.
    n_active : numpy.ndarray of int, shape (E,)
        Subjects contributing to each estimand.
    extra : dict
        Free for callers.
    """

    estimate: np.ndarray          # (E,)
    boot: np.ndarray              # (B, E)
    jack: list                    # E arrays of leave-one-subject-out values (active subjects)
    se_hat: np.ndarray | None = None   # (E,) cluster-robust SE on the data
    se_boot: np.ndarray | None = None  # (B, E)
    n_boot: int = 0
    n_active: np.ndarray | None = None  # (E,) subjects contributing to each estimand
    extra: dict = field(default_factory=dict)


def run_bootstrap(S, estimands, counts, studentized=False):
    """Evaluate all estimands on the data, its jackknife and the resamples.

    With T̂ = Σ_g s_g the totals of the data, every estimand f is evaluated at

    * the data: θ̂ = f(T̂);
    * every resample b: θ*_b = f(C_b S), one matrix product for all;
    * every leave-one-subject-out sample: θ_(g) = f(T̂ - s_g), for the subjects
      with scans (the BCa acceleration and the jackknife SE use these);
    * with ``studentized``, the cluster-robust SE sqrt(Σ_g c_g (∇f(T)·s_g)²)
      at the data (c_g = 1) and at every resample (Cameron, Gelbach & Miller
      2008).

    Parameters
    ----------
    S : numpy.ndarray, shape (G, K * n_blocks)
        Per-subject statistics (:func:`subject_sums`), blocks stacked side by side.
    estimands : list of :class:`Estimand`
    counts : numpy.ndarray, shape (B, G)
        Resample count matrix (see :func:`counts_from_indices`).
    studentized : bool, default False
        Also compute the per-resample cluster-robust SE.

    Returns
    -------
    BootstrapOutput

    Examples
    --------
    The law school data (15 schools, mean LSAT and GPA; Efron & Tibshirani
    1993), each school one cluster: published r = 0.776; the
    leave-one-out correlations average 0.7759, a jackknife bias of -0.0065.

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import (Estimand, counts_from_indices, jackknife_se,
    ...                                    resample_indices, run_bootstrap, subject_sums)
    >>> lsat = [576, 635, 558, 578, 666, 580, 555, 661, 651, 605, 653, 575, 545, 572, 594]
    >>> gpa = [3.39, 3.30, 2.81, 3.03, 3.44, 3.07, 3.00, 3.43, 3.36, 3.13,
    ...        3.12, 2.74, 2.76, 2.88, 2.96]
    >>> S = subject_sums(np.arange(15), lsat, gpa, n_groups=15)
    >>> counts = counts_from_indices(resample_indices(15, 2000, np.random.default_rng(0)), 15)
    >>> out = run_bootstrap(S, [Estimand("r", "pearson_r", block=0)], counts)
    >>> print(f"{out.estimate[0]:.3f}")
    0.776
    >>> jack = out.jack[0]
    >>> print(f"{jack.mean():.4f} {14 * (jack.mean() - out.estimate[0]):.4f}")
    0.7759 -0.0065
    >>> print(f"{jackknife_se(jack):.3f}")
    0.143
    >>> out.boot.shape, int(out.n_active[0])
    ((2000, 1), 15)
    """
    S = np.asarray(S, dtype=float)
    T_hat = S.sum(axis=0)
    T_boot = counts @ S                       # (B, K * blocks): the whole bootstrap
    T_jack = T_hat[None, :] - S               # (G, ...): leave one subject out
    E = len(estimands)
    B = counts.shape[0]
    est = np.empty(E)
    boot = np.empty((B, E))
    jack = []
    n_active = np.empty(E, dtype=int)
    se_hat = np.empty(E) if studentized else None
    se_boot = np.empty((B, E)) if studentized else None
    for j, em in enumerate(estimands):
        active = S[:, em.block + N] > 0
        n_active[j] = int(active.sum())
        if studentized:
            v, g = em.value(T_hat, grad=True)
            est[j] = v
            infl = em.influence(T_hat, S, g)
            se_hat[j] = np.sqrt(np.sum(infl**2))
            vb, gb = em.value(T_boot, grad=True)
            boot[:, j] = vb
            infl_b = em.influence(T_boot, S, gb)          # (B, G)
            with np.errstate(invalid="ignore"):
                se_b = np.sqrt(np.einsum("bg,bg->b", counts, infl_b**2))
                # Fewer than 2 distinct contributing monkeys drawn: no between-monkey variation,
                # the linearised SE is 0 up to rounding (~1e-16) and t* is undefined, as it is
                # for an SE below SE_RTOL of the data's.
                drawn = (counts[:, active] > 0).sum(axis=1)
                se_b[(drawn < 2) | ~(se_b > SE_RTOL * se_hat[j])] = np.nan
            se_boot[:, j] = se_b
        else:
            est[j] = em.value(T_hat)
            boot[:, j] = em.value(T_boot)
        jack.append(np.asarray(em.value(T_jack[active]), dtype=float))
    return BootstrapOutput(est, boot, jack, se_hat, se_boot, n_boot=B, n_active=n_active)


# --------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------

def _finite(x):
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def _degenerate(theta, boot):
    return boot.size > 0 and np.all(boot == theta)


def percentile_interval(theta, boot, ci_level=0.95):
    """Percentile interval: quantiles α/2 and 1-α/2 of the resampled values.

    [θ*_(α/2), θ*_(1-α/2)] with α = 1 - ci_level (Efron & Tibshirani 1993,
    ch. 13), quantiles by ``numpy.quantile`` (linear interpolation).
    Non-finite resamples are dropped; none left, or θ̂ not finite, gives
    (NaN, NaN).

    Parameters
    ----------
    theta : float
        The estimate θ̂ (only checked for finiteness).
    boot : array_like, shape (B,)
        Resampled values θ*.
    ci_level : float, default 0.95

    Returns
    -------
    (lo, hi) : tuple of float
        The ``ci_level`` quantiles' interval of the resampled values.

    Examples
    --------
    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import percentile_interval
    >>> lo, hi = percentile_interval(50.5, np.arange(1.0, 101.0), ci_level=0.90)
    >>> round(lo, 2), round(hi, 2)
    (5.95, 95.05)
    """
    b = _finite(boot)
    if b.size == 0 or not np.isfinite(theta):
        return (np.nan, np.nan)
    alpha = 1 - ci_level
    lo, hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def bca_interval(theta, boot, jack, ci_level=0.95):
    """BCa interval with jackknife acceleration (see module docstring).

    Efron (1987): with bias correction z0 = Φ⁻¹(#{θ* < θ̂}/B) and
    acceleration a = Σ(θ̄_(·) - θ_(g))³ / (6 [Σ(θ̄_(·) - θ_(g))²]^(3/2)),
    the interval is the quantiles α_1, α_2 of θ* with

        α_j = Φ(z0 + (z0 + z_j) / (1 - a (z0 + z_j))),  z_1,2 = Φ⁻¹(α/2), Φ⁻¹(1 - α/2).

    With z0 = a = 0 it is the percentile interval.

    The proportion for z0 counts ties as one half and is clipped to
    [0.5/B, 1 - 0.5/B] so that z0 stays finite. If every resample equals
    the estimate the interval is [θ̂, θ̂].

    Parameters
    ----------
    theta : float
        The estimate θ̂.
    boot : array_like, shape (B,)
        Resampled values θ*.
    jack : array_like, shape (G,)
        Leave-one-subject-out values θ_(g), for the acceleration a.
    ci_level : float, default 0.95

    Returns
    -------
    (lo, hi) : tuple of float
        The bias-corrected and accelerated interval.

    References
    ----------
    Efron B (1987). Better bootstrap confidence intervals. JASA 82:171-185.
    Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap, ch. 14.

    Examples
    --------
    A symmetric bootstrap distribution centred on θ̂ and a symmetric
    jackknife give z0 = a = 0, hence the percentile interval; a θ̂ above the
    bootstrap median (111 of 201 resamples below it, z0 = 0.13) shifts the
    interval up.

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import bca_interval, percentile_interval
    >>> boot = np.linspace(-1.0, 1.0, 201)
    >>> [round(v, 3) for v in bca_interval(0.0, boot, jack=[-1.0, 0.0, 1.0])]
    [-0.95, 0.95]
    >>> [round(v, 3) for v in percentile_interval(0.0, boot)]
    [-0.95, 0.95]
    >>> [round(v, 2) for v in bca_interval(0.105, boot, jack=[-1.0, 0.0, 1.0])]
    [-0.91, 0.97]
    """
    b = _finite(boot)
    if b.size == 0 or not np.isfinite(theta):
        return (np.nan, np.nan)
    if _degenerate(theta, b):
        return (float(theta), float(theta))
    B = b.size
    prop = (np.sum(b < theta) + 0.5 * np.sum(b == theta)) / B
    prop = min(max(prop, 0.5 / B), 1 - 0.5 / B)
    z0 = sps.norm.ppf(prop)
    jk = _finite(jack)
    d = jk.mean() - jk if jk.size else np.zeros(1)
    den = 6.0 * np.sum(d**2) ** 1.5
    a = float(np.sum(d**3) / den) if den > 0 else 0.0
    alpha = 1 - ci_level
    z = sps.norm.ppf([alpha / 2, 1 - alpha / 2])
    adj = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(b, adj)
    return (float(lo), float(hi))


def studentized_interval(theta, se_hat, boot, se_boot, ci_level=0.95):
    """Bootstrap-t interval from t* = (θ* - θ̂)/se* (see module docstring).

    [θ̂ - q*_(1-α/2) se, θ̂ - q*_(α/2) se] with q* the quantiles of t*
    (Efron & Tibshirani 1993, ch. 12.5). Resamples with a non-finite t* are
    dropped. If every resample equals θ̂ the interval is [θ̂, θ̂]; a zero or
    non-finite ``se_hat`` otherwise gives (NaN, NaN).

    Parameters
    ----------
    theta : float
        The estimate θ̂.
    se_hat : float
        Its standard error on the data.
    boot, se_boot : array_like, shape (B,)
        Resampled values θ* and their standard errors se*.
    ci_level : float, default 0.95

    Returns
    -------
    (lo, hi) : tuple of float
        The bootstrap-t interval.

    Examples
    --------
    With se* = 0.5 throughout, t* runs evenly from -2 to 2, its 2.5% and
    97.5% quantiles are -1.9 and 1.9, and the interval is 1 ± 1.9 × 0.5:

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import studentized_interval
    >>> boot = 1.0 + 0.5 * np.linspace(-2.0, 2.0, 401)
    >>> lo, hi = studentized_interval(1.0, 0.5, boot, np.full(401, 0.5))
    >>> round(lo, 4), round(hi, 4)
    (0.05, 1.95)
    """
    if not np.isfinite(theta):
        return (np.nan, np.nan)
    boot = np.asarray(boot, dtype=float)
    se_boot = np.asarray(se_boot, dtype=float)
    if se_hat == 0 or _degenerate(theta, _finite(boot)):
        if _degenerate(theta, _finite(boot)):
            return (float(theta), float(theta))
        return (np.nan, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (boot - theta) / se_boot
    t = _finite(t)
    if t.size == 0 or not np.isfinite(se_hat):
        return (np.nan, np.nan)
    alpha = 1 - ci_level
    q_lo, q_hi = np.quantile(t, [alpha / 2, 1 - alpha / 2])
    return (float(theta - q_hi * se_hat), float(theta - q_lo * se_hat))


def jackknife_se(jack):
    """Leave-one-subject-out jackknife SE: sqrt((G-1)/G Σ(θ_(g) - θ̄)²).

    θ_(g) is the estimate without subject g and θ̄ their mean (Efron &
    Tibshirani 1993, ch. 11). Non-finite values are dropped; fewer than 2
    left gives NaN.

    Parameters
    ----------
    jack : array_like, shape (G,)
        Leave-one-subject-out values θ_(g).

    Returns
    -------
    float

    Examples
    --------
    For the mean the jackknife SE is exactly the textbook s / sqrt(n):

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import jackknife_se
    >>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> jack = (x.sum() - x) / 4                  # leave-one-out means
    >>> round(jackknife_se(jack), 6), round(float(x.std(ddof=1) / np.sqrt(5)), 6)
    (0.707107, 0.707107)
    """
    jk = _finite(jack)
    G = jk.size
    if G < 2:
        return np.nan
    return float(np.sqrt((G - 1) / G * np.sum((jk - jk.mean()) ** 2)))


def t_interval(theta, jack, ci_level=0.95):
    """θ̂ ± t_{G-1} · jackknife SE (G = subjects contributing to θ̂).

    θ̂ ± t_(G-1, 1-α/2) sqrt((G-1)/G Σ(θ_(g) - θ̄)²): the CV3 / jackknife
    cluster-robust variance with G - 1 degrees of freedom (MacKinnon,
    Nielsen & Webb 2023). Deterministic: it uses no resamples. Fewer than 2
    finite jackknife values, or a non-finite θ̂, give (NaN, NaN).

    Parameters
    ----------
    theta : float
        The estimate θ̂.
    jack : array_like, shape (G,)
        Leave-one-subject-out values θ_(g).
    ci_level : float, default 0.95

    Returns
    -------
    (lo, hi) : tuple of float
        θ̂ ∓ t(G-1) × the jackknife SE.

    References
    ----------
    MacKinnon JG, Nielsen MØ, Webb MD (2023). Cluster-robust inference: a
    guide to empirical practice. J Econometrics 232:272-299.

    Examples
    --------
    For a mean it is the one-sample Student t interval:

    >>> import numpy as np
    >>> from scipy import stats
    >>> from icpcv.stats.bootstrap import t_interval
    >>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> [round(v, 4) for v in t_interval(x.mean(), (x.sum() - x) / 4)]
    [1.0368, 4.9632]
    >>> [round(float(v), 4) for v in stats.t.interval(0.95, 4, loc=3.0, scale=stats.sem(x))]
    [1.0368, 4.9632]
    """
    jk = _finite(jack)
    G = jk.size
    if G < 2 or not np.isfinite(theta):
        return (np.nan, np.nan)
    se = jackknife_se(jk)
    q = sps.t.ppf(1 - (1 - ci_level) / 2, G - 1)
    return (float(theta - q * se), float(theta + q * se))


def interval(out: BootstrapOutput, j, method, ci_level=0.95):
    """Interval for estimand ``j`` of a :class:`BootstrapOutput`.

    Dispatches to :func:`percentile_interval`, :func:`bca_interval`,
    :func:`studentized_interval` or :func:`t_interval` (formulas in the
    module docstring and there).

    With fewer than 2 contributing subjects there is no between-subject
    variation to learn from: the interval is (NaN, NaN), never a zero-width
    interval.

    Parameters
    ----------
    out : BootstrapOutput
        From :func:`run_bootstrap` (with ``studentized=True`` for
        ``"studentized"``).
    j : int
        Index of the estimand.
    method : str
        One of :data:`CI_METHODS`.
    ci_level : float, default 0.95

    Returns
    -------
    (lo, hi) : tuple of float
        NaN where the method has no interval (e.g. every resample undefined).

    Raises
    ------
    ValueError
        For an unknown method, or ``"studentized"`` without the SEs.

    Examples
    --------
    The correlation of the law school data (see :func:`run_bootstrap`) by
    each method; with 15 pairs the methods disagree, and neither ``t`` nor
    ``studentized`` respects the range [-1, 1]:

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import (CI_METHODS, Estimand, counts_from_indices,
    ...                                    interval, resample_indices, run_bootstrap,
    ...                                    subject_sums)
    >>> lsat = [576, 635, 558, 578, 666, 580, 555, 661, 651, 605, 653, 575, 545, 572, 594]
    >>> gpa = [3.39, 3.30, 2.81, 3.03, 3.44, 3.07, 3.00, 3.43, 3.36, 3.13,
    ...        3.12, 2.74, 2.76, 2.88, 2.96]
    >>> S = subject_sums(np.arange(15), lsat, gpa, n_groups=15)
    >>> counts = counts_from_indices(resample_indices(15, 2000, np.random.default_rng(0)), 15)
    >>> out = run_bootstrap(S, [Estimand("r", "pearson_r", block=0)], counts, studentized=True)
    >>> for method in CI_METHODS:
    ...     lo, hi = interval(out, 0, method)
    ...     print(f"{method:12s} {lo:5.2f} {hi:5.2f}")
    percentile    0.47  0.96
    bca           0.35  0.94
    studentized  -0.41  0.99
    t             0.47  1.08
    """
    return interval_with_reason(out, j, method, ci_level)[0]


def _spread(*arrays) -> float:
    x = np.concatenate([_finite(np.atleast_1d(a)) for a in arrays])
    return float(x.max() - x.min()) if x.size else float("nan")


def interval_with_reason(out: BootstrapOutput, j, method, ci_level=0.95):
    """:func:`interval`, and why there is none: ``((lo, hi), reason)``.

    ``reason`` is None when the interval is reported, else a phrase saying why it is
    ``(NaN, NaN)``. An interval is not reported (rather than reported wrong) when

    * the estimate is undefined, or fewer than 2 monkeys contribute to it;
    * (``percentile``, ``bca``, ``studentized``) a share of at least α/2 of the resamples
      (α = 1 - ci_level) is undefined -- for ``studentized`` a resample is undefined also when
      it drew fewer than 2 distinct contributing monkeys or its SE is degenerate
      (:func:`run_bootstrap`): dropping them conditions the bootstrap distribution on the
      other resamples, and with that much mass missing its α/2 tail is not determined;
    * the interval has a non-finite end;
    * (``studentized``) it is more than :data:`MAX_WIDTH_RATIO` times as wide as the spread
      (max - min) of the values the metric took on the data, the resamples and the
      leave-one-monkey-out samples: the ratio (θ* - θ̂)/se* exploded on resamples whose SE
      was tiny but not degenerate, so the interval reflects the SEs, not the data.

    Examples
    --------
    Three monkeys: one resample in nine draws a single monkey three times, whose
    bootstrap-t is undefined (its SE is 0 up to rounding), far more than α/2 = 2.5%:

    >>> import numpy as np
    >>> from icpcv.stats.bootstrap import (Estimand, counts_from_indices, interval_with_reason,
    ...                                    resample_indices, run_bootstrap, subject_sums)
    >>> S = subject_sums([0, 0, 1, 1, 2, 2], [10.0, 12, 20, 14, 9, 11], [11.0, 15, 18, 14, 9.5, 13], 3)
    >>> counts = counts_from_indices(resample_indices(3, 1000, np.random.default_rng(0)), 3)
    >>> out = run_bootstrap(S, [Estimand("mae", "mae", block=0)], counts, studentized=True)
    >>> (lo, hi), why = interval_with_reason(out, 0, "studentized")
    >>> bool(np.isnan(lo)), why.split(" (")[0]
    (True, '117 of 1000 resamples')
    >>> interval_with_reason(out, 0, "t")[1] is None
    True
    """
    nan = (np.nan, np.nan)
    if method not in CI_METHODS:
        raise ValueError(f"unknown ci_method {method!r}; choose from {', '.join(CI_METHODS)}")
    if method == "studentized" and out.se_boot is None:
        raise ValueError("run_bootstrap(..., studentized=True) is needed for this method")
    theta = out.estimate[j]
    if not np.isfinite(theta):
        return nan, "the estimate is undefined"
    if out.n_active is not None and out.n_active[j] < 2:
        return nan, f"fewer than 2 monkeys contribute ({int(out.n_active[j])})"
    alpha = 1 - ci_level
    boot = np.asarray(out.boot[:, j], dtype=float)
    if method != "t" and not (boot.size and np.all(boot == theta)):  # all equal: [θ̂, θ̂] below
        if method == "studentized":
            with np.errstate(divide="ignore", invalid="ignore"):
                bad = ~np.isfinite((boot - theta) / out.se_boot[:, j])
            what = ("no defined value or standard error (fewer than 2 distinct monkeys drawn, "
                    "or a degenerate standard error)")
        else:
            bad = ~np.isfinite(boot)
            what = "an undefined value"
        u, B = int(bad.sum()), bad.size
        if B == 0 or u >= alpha / 2 * B:
            return nan, (f"{u} of {B} resamples ({100 * u / max(B, 1):.1f}%) have {what}, at least "
                         f"α/2 = {100 * alpha / 2:.3g}% of them, so the interval's tails are not "
                         f"determined")
    if method == "percentile":
        lo, hi = percentile_interval(theta, boot, ci_level)
    elif method == "bca":
        lo, hi = bca_interval(theta, boot, out.jack[j], ci_level)
    elif method == "studentized":
        lo, hi = studentized_interval(theta, out.se_hat[j], boot, out.se_boot[:, j], ci_level)
    else:
        lo, hi = t_interval(theta, out.jack[j], ci_level)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return nan, "the interval is not finite"
    if method == "studentized":
        spread = _spread([theta], boot, out.jack[j])
        if hi - lo > MAX_WIDTH_RATIO * spread:
            return nan, (f"the interval ({lo:.3g} to {hi:.3g}) is more than {MAX_WIDTH_RATIO:g} "
                         f"times as wide as the spread of the values the metric took on the "
                         f"resamples ({spread:.3g}): the bootstrap-t's standard errors are unstable")
    return (float(lo), float(hi)), None
