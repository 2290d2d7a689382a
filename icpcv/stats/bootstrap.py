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

#: Metrics available from the sufficient statistics.
METRICS = ("mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean", "ba_slope")


# --------------------------------------------------------------------------
# sufficient statistics
# --------------------------------------------------------------------------

def subject_sums(codes, y_true, y_pred, n_groups, center=0.0):
    """Per-subject sufficient statistics, shape (n_groups, K).

    ``codes`` are integer subject codes 0..n_groups-1 (one per scan).
    ``center`` is subtracted from y_true and y_pred before the sums of
    squares and products (shift-invariant metrics only; e is unaffected).
    Subjects without scans get a row of zeros.
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
    """B x G matrix of subject indices drawn with replacement."""
    return rng.integers(0, n_groups, size=(int(n_boot), int(n_groups)))


def counts_from_indices(idx, n_groups):
    """B x G matrix of how many times each subject was drawn (float64)."""
    idx = np.asarray(idx)
    B = idx.shape[0]
    flat = (idx + (np.arange(B) * n_groups)[:, None]).ravel()
    return np.bincount(flat, minlength=B * n_groups).reshape(B, n_groups).astype(float)


@dataclass
class BootstrapOutput:
    """Everything needed to form intervals for each estimand (columns)."""

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

    Parameters
    ----------
    S : (G, K * n_blocks) array of per-subject statistics (blocks stacked).
    estimands : list of :class:`Estimand`.
    counts : (B, G) resample count matrix (see :func:`counts_from_indices`).
    studentized : also compute the per-resample cluster-robust SE.
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
                se_boot[:, j] = np.sqrt(np.einsum("bg,bg->b", counts, infl_b**2))
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
    """Percentile interval: quantiles α/2 and 1-α/2 of the resampled values."""
    b = _finite(boot)
    if b.size == 0 or not np.isfinite(theta):
        return (np.nan, np.nan)
    alpha = 1 - ci_level
    lo, hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def bca_interval(theta, boot, jack, ci_level=0.95):
    """BCa interval with jackknife acceleration (see module docstring).

    The proportion for z0 counts ties as one half and is clipped to
    [0.5/B, 1 - 0.5/B] so that z0 stays finite. If every resample equals
    the estimate the interval is [θ̂, θ̂].
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
    """Bootstrap-t interval from t* = (θ* - θ̂)/se* (see module docstring)."""
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
    """Leave-one-subject-out jackknife SE: sqrt((G-1)/G Σ(θ_(g) - θ̄)²)."""
    jk = _finite(jack)
    G = jk.size
    if G < 2:
        return np.nan
    return float(np.sqrt((G - 1) / G * np.sum((jk - jk.mean()) ** 2)))


def t_interval(theta, jack, ci_level=0.95):
    """θ̂ ± t_{G-1} · jackknife SE (G = subjects contributing to θ̂)."""
    jk = _finite(jack)
    G = jk.size
    if G < 2 or not np.isfinite(theta):
        return (np.nan, np.nan)
    se = jackknife_se(jk)
    q = sps.t.ppf(1 - (1 - ci_level) / 2, G - 1)
    return (float(theta - q * se), float(theta + q * se))


def interval(out: BootstrapOutput, j, method, ci_level=0.95):
    """Interval for estimand ``j`` of a :class:`BootstrapOutput`.

    With fewer than 2 contributing subjects there is no between-subject
    variation to learn from: the interval is (NaN, NaN), never a zero-width
    interval.
    """
    theta = out.estimate[j]
    if out.n_active is not None and out.n_active[j] < 2:
        return (np.nan, np.nan)
    if method == "percentile":
        return percentile_interval(theta, out.boot[:, j], ci_level)
    if method == "bca":
        return bca_interval(theta, out.boot[:, j], out.jack[j], ci_level)
    if method == "studentized":
        if out.se_boot is None:
            raise ValueError("run_bootstrap(..., studentized=True) is needed for this method")
        return studentized_interval(theta, out.se_hat[j], out.boot[:, j], out.se_boot[:, j], ci_level)
    if method == "t":
        return t_interval(theta, out.jack[j], ci_level)
    raise ValueError(f"unknown ci_method {method!r}; choose from {', '.join(CI_METHODS)}")
