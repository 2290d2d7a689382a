"""Calibration study: do our intervals cover and does the sign-flip test hold its size?

We simulate many cohorts of G monkeys whose truth we know and run the *same*
code that :func:`icpcv.stats.analyze` runs (``subject_sums`` ->
``run_bootstrap`` -> ``interval``, and ``signflip_test``).

Data-generating model (per cohort)
----------------------------------
* Scans per monkey: for G = 14 the 14 counts of the real label table
  (19 to 261 scans, :data:`REAL_SCANS_PER_SUBJECT`), shuffled; for other G
  drawn with replacement from them.
* Errors of model m on scan i of monkey g::

      e_mgi = mu_m + s_g + u_mg + w_gi + sigma_m * eps_mgi

  s_g ~ N(0, SHARED_OFFSET²) a monkey offset shared by both models,
  u_mg ~ N(0, tau_m²) a model-specific monkey offset, w_gi ~ N(0, SHARED_SCAN²)
  a scan effect shared by both models, eps ~ t(5) scaled to unit variance
  (heavy-ish tails). With the defaults the intra-class correlation of the
  errors is about 0.3 and the two models' errors correlate about 0.4.
* y_true ~ monkey mean N(15, 5²) + N(0, 6²) per scan; y_pred = y_true + e.
  (Only e matters for MAE/RMSE.)

Truth
-----
Scan sizes are independent of the errors, so the pooled MAE estimates
E|e| for one scan: with e = mu + Z sqrt(SHARED_OFFSET² + tau² + SHARED_SCAN²)
+ sigma eps, conditioning on eps gives a folded normal, whose mean is
closed-form; the remaining one-dimensional integral over the t(5) density is
done with ``scipy.integrate.quad`` (:func:`true_mae`). RMSE truth is
sqrt(mu² + SHARED_OFFSET² + tau² + SHARED_SCAN² + sigma²). Under the null
both models have the same parameters, so the true difference is exactly 0.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy import integrate, optimize
from scipy import stats as sps

from icpcv.stats import bootstrap
from icpcv.stats.analysis import AUTO_METHODS
from icpcv.stats.bootstrap import CI_METHODS, Estimand, K
from icpcv.stats.inference import signflip_test

REAL_SCANS_PER_SUBJECT = (101, 84, 104, 81, 253, 205, 36, 66, 35, 259, 261, 62, 184, 19)
SHARED_OFFSET = 2.0
SHARED_SCAN = 1.5
T_DF = 5
ALPHA = 0.05


@dataclass(frozen=True)
class ErrorModel:
    """Error distribution of one simulated model (mmHg).

    The model's error on scan i of monkey g is
    mu + s_g + u_g + w_gi + sigma eps_gi with u_g ~ N(0, tau²) its own
    monkey offset (s_g and w_gi are shared with the other model; see the
    module docstring).

    Attributes
    ----------
    mu : float, default 0.5
        Global bias.
    tau : float, default 1.0
        SD of the model-specific per-monkey offset.
    sigma : float, default 3.0
        SD of the heavy-tailed (t(5), scaled to unit variance) per-scan noise.
    """

    mu: float = 0.5      # global bias
    tau: float = 1.0     # model-specific per-monkey offset SD
    sigma: float = 3.0   # heavy-tailed per-scan noise SD


@dataclass(frozen=True)
class Scenario:
    """A named pair of error models: the candidate and the reference it is compared with."""

    name: str
    candidate: ErrorModel
    reference: ErrorModel


def _folded_normal_mean(m, s):
    """E|X| for X ~ N(m, s²) = s sqrt(2/pi) exp(-m²/2s²) + m (1 - 2 Phi(-m/s))."""
    phi = 0.5 * (1 + math.erf((-m / s) / math.sqrt(2)))
    return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * phi)


def _t_pdf(t, nu):
    const = math.exp(math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)) / math.sqrt(nu * math.pi)
    return const * (1 + t * t / nu) ** (-(nu + 1) / 2)


@functools.lru_cache(maxsize=256)
def true_mae(em: ErrorModel) -> float:
    """E|e| for one scan under :class:`ErrorModel` ``em`` (numerical integral).

    With e = mu + Z s + sigma c T, Z ~ N(0, 1), s² = SHARED_OFFSET² + tau² +
    SHARED_SCAN², T ~ t(5) and c = sqrt(3/5) (unit variance), conditioning
    on T leaves a folded normal:

        E|e| = ∫ FN(mu + sigma c t, s) f_5(t) dt,
        FN(m, s) = s sqrt(2/π) exp(-m²/2s²) + m (1 - 2Φ(-m/s)),

    integrated with ``scipy.integrate.quad`` (absolute and relative
    tolerance 1e-12).

    Parameters
    ----------
    em : ErrorModel
        The per-scan error model (its offset, spread and noise: mu, tau, sigma).

    Returns
    -------
    float
        The expected absolute error of one scan, mmHg.

    References
    ----------
    Leone FC, Nelson LS, Nottingham RB (1961). The folded normal
    distribution. Technometrics 3:543-550.

    Examples
    --------
    Without per-scan noise the error is normal with SD sqrt(2² + 1.5²) = 2.5,
    so E|e| = 2.5 sqrt(2/π):

    >>> import math
    >>> from icpcv.stats.calibrate import ErrorModel, true_mae
    >>> round(true_mae(ErrorModel(mu=0.0, tau=0.0, sigma=0.0)), 6)
    1.994711
    >>> round(2.5 * math.sqrt(2 / math.pi), 6)
    1.994711
    >>> round(true_mae(ErrorModel()), 4)
    3.1553
    """
    s = math.sqrt(SHARED_OFFSET**2 + em.tau**2 + SHARED_SCAN**2)
    c = math.sqrt((T_DF - 2) / T_DF)  # scales t(5) to unit variance

    def f(t):
        return _folded_normal_mean(em.mu + em.sigma * c * t, s) * _t_pdf(t, T_DF)

    val, _ = integrate.quad(f, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-12, limit=200)
    return float(val)


def true_rmse(em: ErrorModel) -> float:
    """sqrt(E e²) for one scan: sqrt(mu² + SHARED_OFFSET² + tau² + SHARED_SCAN² + sigma²).

    The four error components are independent with mean 0 (the t(5) noise
    is scaled to variance sigma²), so E e² = mu² plus their variances.

    Parameters
    ----------
    em : ErrorModel
        The per-scan error model.

    Returns
    -------
    float
        The root of the expected squared error of one scan, mmHg.

    Examples
    --------
    >>> from icpcv.stats.calibrate import ErrorModel, true_rmse
    >>> round(true_rmse(ErrorModel()), 4)      # sqrt(0.25 + 4 + 1 + 2.25 + 9)
    4.062
    """
    return math.sqrt(em.mu**2 + SHARED_OFFSET**2 + em.tau**2 + SHARED_SCAN**2 + em.sigma**2)


def scaled_to_effect(base: ErrorModel, effect: float) -> ErrorModel:
    """Scale tau and sigma of ``base`` so that true MAE = true_mae(base) + effect.

    Solves true_mae(base with tau, sigma multiplied by λ) = true_mae(base) +
    effect for λ in [0.001, 10] by Brent's method (``scipy.optimize.brentq``,
    xtol 1e-12); mu is kept.

    Parameters
    ----------
    base : ErrorModel
    effect : float
        Wanted change of the true MAE (negative: a better model).

    Returns
    -------
    ErrorModel

    Examples
    --------
    >>> from icpcv.stats.calibrate import ErrorModel, scaled_to_effect, true_mae
    >>> base = ErrorModel()
    >>> better = scaled_to_effect(base, -0.5)
    >>> round(true_mae(better) - true_mae(base), 9)
    -0.5
    >>> round(better.tau, 4), round(better.sigma, 4)
    (0.7005, 2.1016)
    """
    target = true_mae(base) + effect

    def g(lam):
        return true_mae(replace(base, tau=base.tau * lam, sigma=base.sigma * lam)) - target

    lam = optimize.brentq(g, 1e-3, 10.0, xtol=1e-12)
    return replace(base, tau=base.tau * lam, sigma=base.sigma * lam)


@functools.lru_cache(maxsize=8)
def _default_scenarios():
    base = ErrorModel()
    return (
        Scenario("null", base, base),
        Scenario("alt: MAE -0.5", scaled_to_effect(base, -0.5), base),
        Scenario("alt: MAE -1.0", scaled_to_effect(base, -1.0), base),
    )


def default_scenarios():
    """Null (equal models) and two alternatives (candidate lowers MAE by 0.5 / 1.0).

    The reference is ``ErrorModel()`` in all three; the alternatives'
    candidates come from :func:`scaled_to_effect`.

    Returns
    -------
    list of Scenario

    Examples
    --------
    >>> from icpcv.stats.calibrate import default_scenarios
    >>> [sc.name for sc in default_scenarios()]
    ['null', 'alt: MAE -0.5', 'alt: MAE -1.0']
    """
    return list(_default_scenarios())


def simulate_cohort(rng, n_subjects, candidate: ErrorModel, reference: ErrorModel):
    """One simulated cohort: (codes, y_true, pred_candidate, pred_reference).

    Draws the data-generating model of the module docstring: scans per
    monkey from :data:`REAL_SCANS_PER_SUBJECT`, y_true, and the two models'
    errors e = mu + s_g + u_mg + w_gi + sigma c eps_mgi.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_subjects : int
        G. For 14 the real scan counts are shuffled; otherwise G counts are
        drawn from them with replacement.
    candidate, reference : ErrorModel

    Returns
    -------
    (codes, y_true, pred_candidate, pred_reference) : tuple of numpy.ndarray
        Monkey codes 0..G-1 and three float arrays, one entry per scan.

    Examples
    --------
    >>> import numpy as np
    >>> from icpcv.stats.calibrate import ErrorModel, simulate_cohort
    >>> codes, y, pred_a, pred_b = simulate_cohort(np.random.default_rng(0), 14,
    ...                                            ErrorModel(), ErrorModel())
    >>> codes.size, y.shape == pred_a.shape == pred_b.shape, int(codes.max())
    (1750, True, 13)
    """
    if n_subjects == len(REAL_SCANS_PER_SUBJECT):
        sizes = rng.permutation(REAL_SCANS_PER_SUBJECT)
    else:
        sizes = rng.choice(REAL_SCANS_PER_SUBJECT, size=n_subjects, replace=True)
    codes = np.repeat(np.arange(n_subjects), sizes)
    n = codes.size
    c = math.sqrt((T_DF - 2) / T_DF)
    y = rng.normal(15, 5, n_subjects)[codes] + rng.normal(0, 6, n)
    shared = rng.normal(0, SHARED_OFFSET, n_subjects)[codes] + rng.normal(0, SHARED_SCAN, n)

    def err(em):
        return (em.mu + shared + rng.normal(0, em.tau, n_subjects)[codes]
                + em.sigma * c * rng.standard_t(T_DF, n))

    return codes, y, y + err(candidate), y + err(reference)


TARGETS = (
    # name, metric, difference?
    ("MAE difference", "mae", True),
    ("RMSE difference", "rmse", True),
    ("MAE (single model)", "mae", False),
    ("subject-mean MAE (single model)", "mae_subject_mean", False),
    ("RMSE (single model)", "rmse", False),
    ("bias (single model)", "bias", False),
    ("r2 (single model)", "r2", False),
    ("pearson_r (single model)", "pearson_r", False),
)

#: variance of y_true in the simulation: monkey means N(15, 5²) + scan N(0, 6²)
Y_VAR = 5.0**2 + 6.0**2


def true_values(sc: "Scenario") -> dict:
    """True value of every target (reference model for single-model targets).

    r2 and pearson_r are population quantities over monkeys and scans:
    r2 = 1 - E[e²]/Var(y); pearson_r = Var(y)/sqrt(Var(y) (Var(y) + Var(e))),
    because e is independent of y. Var(y) = 5² + 6² (:data:`Y_VAR`);
    MAE and RMSE come from :func:`true_mae` and :func:`true_rmse`, the bias
    is mu.

    Parameters
    ----------
    sc : Scenario

    Returns
    -------
    dict
        Target name (see :data:`TARGETS`) -> true value.

    Examples
    --------
    >>> from icpcv.stats.calibrate import default_scenarios, true_values
    >>> null, alt_half, _ = default_scenarios()
    >>> true_values(null)["MAE difference"]
    0.0
    >>> {k: round(v, 4) for k, v in true_values(alt_half).items()}
    {'MAE difference': -0.5, 'RMSE difference': -0.6846, 'MAE (single model)': 3.1553,
     'subject-mean MAE (single model)': 3.1553, 'RMSE (single model)': 4.062,
     'bias (single model)': 0.5, 'r2 (single model)': 0.7295,
     'pearson_r (single model)': 0.8886}
    """
    ref = sc.reference
    var_e = SHARED_OFFSET**2 + ref.tau**2 + SHARED_SCAN**2 + ref.sigma**2
    return {
        "MAE difference": true_mae(sc.candidate) - true_mae(ref),
        "RMSE difference": true_rmse(sc.candidate) - true_rmse(ref),
        "MAE (single model)": true_mae(ref),
        "subject-mean MAE (single model)": true_mae(ref),
        "RMSE (single model)": true_rmse(ref),
        "bias (single model)": ref.mu,
        "r2 (single model)": 1 - true_rmse(ref) ** 2 / Y_VAR,
        "pearson_r (single model)": Y_VAR / math.sqrt(Y_VAR * (Y_VAR + var_e)),
    }


NAIVE_TARGETS = ("MAE difference", "MAE (single model)")


def _one_sim(rng, n_subjects, sc: Scenario, n_boot):
    codes, y, pa, pb = simulate_cohort(rng, n_subjects, sc.candidate, sc.reference)
    G = n_subjects
    center = float(y.mean())
    S = np.hstack([bootstrap.subject_sums(codes, y, pa, G, center),
                   bootstrap.subject_sums(codes, y, pb, G, center)])
    # block 0 = candidate, block K = reference
    ests = [Estimand(name, metric, 0, K) if diff else Estimand(name, metric, K)
            for name, metric, diff in TARGETS]
    counts = bootstrap.counts_from_indices(bootstrap.resample_indices(G, n_boot, rng), G)
    out = bootstrap.run_bootstrap(S, ests, counts, studentized=True)
    res = {}
    for j, (name, _, _) in enumerate(TARGETS):
        for m in CI_METHODS:
            res[(name, m)] = bootstrap.interval(out, j, m, 1 - ALPHA)
    # naive scan-level normal interval (treats scans as independent) for contrast
    z = sps.norm.ppf(1 - ALPHA / 2)
    ea, eb = np.abs(pa - y), np.abs(pb - y)
    for name, v in (("MAE difference", ea - eb), ("MAE (single model)", eb)):
        half = z * v.std(ddof=1) / math.sqrt(v.size)
        res[(name, "naive scan-level")] = (v.mean() - half, v.mean() + half)
    cnt = np.bincount(codes, minlength=G)
    diff = np.bincount(codes, weights=ea - eb, minlength=G) / cnt
    res["p_signflip"] = signflip_test(diff)["p"]
    return res


def _run_chunk(seed, sc_index, sc, sim_ids, n_subjects, n_boot):
    rows = []
    for i in sim_ids:
        rng = np.random.default_rng([seed, sc_index, n_subjects, i])
        rows.append(_one_sim(rng, n_subjects, sc, n_boot))
    return rows


def run_calibration(n_sim=1000, n_subjects=14, seed=0, n_boot=999, workers=1, scenarios=None):
    """Simulate ``n_sim`` cohorts per scenario and summarise.

    Returns a DataFrame with one row per (scenario, target, method):
    ``scenario, n_subjects, target, method, truth, rate, mc_se, miss_low,
    miss_high, mean_width, n_sim`` where ``rate`` is the empirical coverage
    of the nominal 95% interval (for the sign-flip rows: the rejection rate
    at alpha = 0.05) and ``mc_se = sqrt(rate (1 - rate) / n_sim)``.
    ``miss_low``: share of intervals entirely above the truth (truth below
    lo); ``miss_high``: entirely below it. Results do not depend on
    ``workers``: every cohort has its own seed ``[seed, scenario, G, i]``.

    Each cohort goes through the same code as :func:`icpcv.stats.analyze`
    (:func:`~icpcv.stats.bootstrap.subject_sums`,
    :func:`~icpcv.stats.bootstrap.run_bootstrap`,
    :func:`~icpcv.stats.bootstrap.interval` for every method in
    :data:`~icpcv.stats.bootstrap.CI_METHODS`, and
    :func:`~icpcv.stats.inference.signflip_test` on the per-monkey MAE
    differences); a naive scan-level normal interval is added for contrast.

    Parameters
    ----------
    n_sim : int, default 1000
        Simulated cohorts per scenario.
    n_subjects : int, default 14
        Monkeys per cohort (G).
    seed : int, default 0
    n_boot : int, default 999
        Bootstrap resamples per cohort.
    workers : int, default 1
        Parallel processes (joblib); 1 runs in this process.
    scenarios : list of Scenario or None
        None for :func:`default_scenarios`.

    Returns
    -------
    pandas.DataFrame
        ``attrs`` holds ``seconds, n_boot, seed, workers``.

    Examples
    --------
    A tiny run (far too small to judge coverage, but it shows the shape):

    >>> from icpcv.stats.calibrate import run_calibration
    >>> table = run_calibration(n_sim=2, n_subjects=6, n_boot=49)
    >>> table.shape
    (105, 11)
    >>> list(table.columns)
    ['scenario', 'n_subjects', 'target', 'method', 'truth', 'rate', 'mc_se',
     'miss_low', 'miss_high', 'mean_width', 'n_sim']
    >>> table[["scenario", "target", "method"]].iloc[0].tolist()
    ['null', 'MAE difference', 'percentile']
    >>> table[table["method"] == "sign-flip"]["scenario"].tolist()
    ['null', 'alt: MAE -0.5', 'alt: MAE -1.0']
    """
    scenarios = default_scenarios() if scenarios is None else scenarios
    n_sim = int(n_sim)
    t0 = time.perf_counter()
    chunks = max(1, min(n_sim, 4 * max(1, int(workers))))
    split = [list(a) for a in np.array_split(np.arange(n_sim), chunks) if len(a)]
    jobs = [(k, sc, ids) for k, sc in enumerate(scenarios) for ids in split]
    if workers and int(workers) > 1:
        parts = Parallel(n_jobs=int(workers))(
            delayed(_run_chunk)(seed, k, sc, ids, n_subjects, n_boot) for k, sc, ids in jobs)
    else:
        parts = [_run_chunk(seed, k, sc, ids, n_subjects, n_boot) for k, sc, ids in jobs]
    by_sc = {}
    for (k, _, _), rows in zip(jobs, parts):
        by_sc.setdefault(k, []).extend(rows)

    out = []
    for k, sc in enumerate(scenarios):
        sims = by_sc[k]
        truths = true_values(sc)
        for name, _, _ in TARGETS:
            methods = list(CI_METHODS) + (["naive scan-level"] if name in NAIVE_TARGETS else [])
            for m in methods:
                ci = np.array([s[(name, m)] for s in sims], dtype=float)
                tr = truths[name]
                ok = np.all(np.isfinite(ci), axis=1)
                cover = (ci[:, 0] <= tr) & (tr <= ci[:, 1]) & ok
                rate = float(cover.mean())
                out.append({
                    "scenario": sc.name, "n_subjects": n_subjects, "target": name, "method": m,
                    "truth": tr, "rate": rate, "mc_se": math.sqrt(rate * (1 - rate) / len(sims)),
                    "miss_low": float(np.mean(ok & (ci[:, 0] > tr))),
                    "miss_high": float(np.mean(ok & (ci[:, 1] < tr))),
                    "mean_width": float(np.nanmean(ci[:, 1] - ci[:, 0])),
                    "n_sim": len(sims),
                })
        p = np.array([s["p_signflip"] for s in sims])
        rate = float(np.mean(p < ALPHA))
        out.append({
            "scenario": sc.name, "n_subjects": n_subjects, "target": "sign-flip test (MAE)",
            "method": "sign-flip", "truth": truths["MAE difference"], "rate": rate,
            "mc_se": math.sqrt(rate * (1 - rate) / len(sims)), "miss_low": np.nan,
            "miss_high": np.nan, "mean_width": np.nan, "n_sim": len(sims),
        })
    table = pd.DataFrame(out)
    table.attrs.update(seconds=time.perf_counter() - t0, n_boot=n_boot, seed=seed,
                       workers=workers)
    return table


def auto_method(target: str) -> str:
    """Method that ``ci_method="auto"`` (the default) uses for a calibration target.

    Looks the target's metric up in
    :data:`icpcv.stats.analysis.AUTO_METHODS` (differences under ``"delta"``).

    Parameters
    ----------
    target : str
        A target name of :data:`TARGETS`.

    Returns
    -------
    str
        One of :data:`~icpcv.stats.bootstrap.CI_METHODS`.

    Raises
    ------
    KeyError
        For an unknown target.

    Examples
    --------
    >>> from icpcv.stats.bootstrap import CI_METHODS
    >>> from icpcv.stats.calibrate import auto_method
    >>> auto_method("MAE difference") in CI_METHODS
    True
    """
    for name, metric, diff in TARGETS:
        if name == target:
            return AUTO_METHODS["delta" if diff else metric]
    raise KeyError(target)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per target: coverage of each method pooled over scenarios, the default's
    coverage, the method closest to 95% and whether the default is in 93-97%.

    Pooling over scenarios averages coverages (each scenario has its own
    truth); the MC SE uses the pooled number of cohorts:
    sqrt(d (1 - d) / n) with d the default's pooled coverage.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`run_calibration`.

    Returns
    -------
    pandas.DataFrame
        One row per target: ``target, default_method, default_coverage,
        default_mc_se, default_within_93_97, closest_method,
        closest_coverage, closest_gap`` and ``coverage_<method>`` for each
        method.

    Examples
    --------
    >>> from icpcv.stats.calibrate import TARGETS, run_calibration, summarize
    >>> summary = summarize(run_calibration(n_sim=2, n_subjects=6, n_boot=49))
    >>> summary["target"].tolist() == [name for name, _, _ in TARGETS]
    True
    >>> [c for c in summary.columns if c.startswith("coverage_")]
    ['coverage_percentile', 'coverage_bca', 'coverage_studentized', 'coverage_t']
    """
    rows = []
    cov = table[table["method"].isin(CI_METHODS)]
    for target in dict.fromkeys(cov["target"]):
        sub = cov[cov["target"] == target]
        rate = sub.groupby("method")["rate"].mean()
        n = sub.groupby("method")["n_sim"].sum()
        default = auto_method(target)
        closest = (rate - 0.95).abs().idxmin()
        d = float(rate[default])
        rows.append({
            "target": target, "default_method": default, "default_coverage": d,
            "default_mc_se": math.sqrt(d * (1 - d) / float(n[default])),
            "default_within_93_97": bool(0.93 <= d <= 0.97),
            "closest_method": closest, "closest_coverage": float(rate[closest]),
            "closest_gap": float(abs(rate[closest] - 0.95)),
            **{f"coverage_{m}": float(rate[m]) for m in CI_METHODS},
        })
    return pd.DataFrame(rows)


def _pct(x, se=None):
    return f"{100 * x:.1f}%" + (f" ({100 * se:.1f})" if se is not None else "")


def format_markdown(table: pd.DataFrame) -> str:
    """Markdown rendering of :func:`run_calibration`'s table, with a summary.

    A header line, the :func:`summarize` table, the per-scenario coverage
    table and the sign-flip rejection rates, as written by
    ``icpcv calibrate --out calibration.md``.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`run_calibration` (its ``attrs`` fill the header).

    Returns
    -------
    str

    Examples
    --------
    >>> from icpcv.stats.calibrate import format_markdown, run_calibration
    >>> text = format_markdown(run_calibration(n_sim=2, n_subjects=6, n_boot=49))
    >>> print(text.splitlines()[0])  # doctest: +ELLIPSIS
    Calibration: G = 6 subjects, 2 simulated cohorts per scenario (3 scenarios),
    49 bootstrap resamples each, seed 0, ... s.
    """
    lines = []
    G = int(table["n_subjects"].iloc[0])
    n_sim = int(table["n_sim"].iloc[0])
    attrs = table.attrs
    n_sc = table["scenario"].nunique()
    lines.append(f"Calibration: G = {G} subjects, {n_sim} simulated cohorts per scenario "
                 f"({n_sc} scenarios), {attrs.get('n_boot', '?')} bootstrap resamples each, "
                 f"seed {attrs.get('seed', '?')}"
                 + (f", {attrs['seconds']:.0f} s" if "seconds" in attrs else "") + ".")
    lines.append("")
    lines.append("**Summary** (coverage of nominal 95% intervals averaged over scenarios; "
                 "MC SE in brackets; default = `auto`):")
    lines.append("")
    lines.append("| target | default uses | default coverage | in 93-97%? | closest to 95% | "
                 + " | ".join(CI_METHODS) + " |")
    lines.append("| --- | --- | ---: | --- | --- | " + " | ".join("---:" for _ in CI_METHODS) + " |")
    summ = summarize(table)
    for _, r in summ.iterrows():
        lines.append(
            f"| {r.target} | {r.default_method} | {_pct(r.default_coverage, r.default_mc_se)} | "
            f"{'yes' if r.default_within_93_97 else 'NO'} | {r.closest_method} "
            f"({100 * r.closest_gap:.1f} points off) | "
            + " | ".join(_pct(r[f'coverage_{m}']) for m in CI_METHODS) + " |")
    lines.append("")
    lines.append("Per scenario (miss low / high = interval entirely above / below the truth):")
    lines.append("")
    lines.append("| scenario | target | method | truth | coverage | miss low | miss high | mean width |")
    lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    cov = table[table["method"] != "sign-flip"]
    for _, r in cov.iterrows():
        lines.append(f"| {r.scenario} | {r.target} | {r.method} | {r.truth:.3f} | "
                     f"{_pct(r.rate, r.mc_se)} | {_pct(r.miss_low)} | "
                     f"{_pct(r.miss_high)} | {r.mean_width:.3f} |")
    lines.append("")
    lines.append("Sign-flip test of the per-monkey MAE difference, two-sided, alpha = 0.05 "
                 "(null: type-I error; alternatives: power):")
    lines.append("")
    lines.append("| scenario | true MAE difference | rejection rate |")
    lines.append("| --- | ---: | ---: |")
    for _, r in table[table["method"] == "sign-flip"].iterrows():
        lines.append(f"| {r.scenario} | {r.truth:.3f} | {_pct(r.rate, r.mc_se)} |")
    return "\n".join(lines)
