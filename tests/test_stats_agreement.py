"""Bland-Altman and rmcorr against published values and independent computations."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as sps

from icpcv.stats.agreement import bland_altman, bland_altman_repeated, rmcorr

REF = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _ref(name):
    path = REF / name
    if not path.exists():
        pytest.skip(f"reference data {path} not available")
    return pd.read_csv(path)


# ---------------------------------------------------------------- BA 1986 ---

def test_ba1986_pefr_published_values():
    """Bland & Altman (1986) Lancet: first Wright vs first mini-Wright reading.

    Published: mean difference -2.1 l/min, SD 38.8, limits -79.7 to 75.5
    (the paper uses mean ± 2 SD). The published sign is Wright minus mini.
    """
    d = _ref("ba1986_pefr.csv")
    res = bland_altman(d["wright1"], d["mini1"], multiplier=2)
    assert res["n"] == 17
    assert res["bias"] == pytest.approx(-2.1, abs=0.05)
    assert res["sd"] == pytest.approx(38.8, abs=0.05)
    # the paper rounds d̄ and s before forming the limits, hence 0.1 tolerance
    assert res["loa"][0] == pytest.approx(-79.7, abs=0.1)
    assert res["loa"][1] == pytest.approx(75.5, abs=0.1)
    # the other orientation gives +2.1: confirms which way 'd' points
    assert bland_altman(d["mini1"], d["wright1"])["bias"] == pytest.approx(2.1, abs=0.05)


def test_ba1986_loa_ci_formula():
    """LoA CI = limit ± t(n-1) sqrt(3 s²/n), built here from the published
    rounded s = 38.8 and n = 17 (SE ≈ 16.3 l/min, t16 = 2.12)."""
    d = _ref("ba1986_pefr.csv")
    res = bland_altman(d["wright1"], d["mini1"], multiplier=2)
    se = np.sqrt(3 * 38.8**2 / 17)
    assert se == pytest.approx(16.3, abs=0.05)
    half = sps.t.ppf(0.975, 16) * se
    for (lo, hi), limit in zip(res["loa_ci"], res["loa"]):
        assert lo == pytest.approx(limit - half, abs=0.1)
        assert hi == pytest.approx(limit + half, abs=0.1)
    # SD convention: n - 1
    diff = (d["wright1"] - d["mini1"]).to_numpy(float)
    assert res["sd"] == pytest.approx(np.sqrt(((diff - diff.mean()) ** 2).sum() / 16), rel=1e-12)


def test_ba_proportional_bias_matches_statsmodels_ols():
    d = _ref("ba1986_pefr.csv")
    x, r = d["wright1"].to_numpy(float), d["mini1"].to_numpy(float)
    res = bland_altman(x, r)["proportional_bias"]
    fit = sm.OLS(x - r, sm.add_constant((x + r) / 2)).fit()
    assert res["slope"] == pytest.approx(fit.params[1], rel=1e-10)
    assert res["p"] == pytest.approx(fit.pvalues[1], rel=1e-8)
    lo, hi = fit.conf_int(0.05)[1]
    assert res["ci"] == pytest.approx([lo, hi], rel=1e-10)


# ---------------------------------------------------------------- BA 2007 ---

def test_ba2007_repeated_published_values():
    """Bland & Altman (2007) J Biopharm Stat 17:571, section 3 (RV - IC,
    true value varying): mean difference 0.6021667, SD 0.99062408, limits
    -1.3394565 to 2.5437899 (as quoted, to these digits, in E. Huizinga's
    MATLAB BA toolbox demo, which reproduces the paper)."""
    d = _ref("ba2007_cardiac_output.csv")
    res = bland_altman_repeated(d["rv"], d["ic"], d["subject"])
    assert res["n"] == 60 and res["n_subjects"] == 12
    assert res["bias"] == pytest.approx(0.6021667, abs=1e-7)
    assert res["sd"] == pytest.approx(0.99062408, abs=1e-7)
    assert res["loa"][0] == pytest.approx(-1.3394565, abs=1e-6)
    assert res["loa"][1] == pytest.approx(2.5437899, abs=1e-6)


def test_ba2007_anova_components_match_statsmodels():
    d = _ref("ba2007_cardiac_output.csv").assign(diff=lambda t: t.rv - t.ic)
    res = bland_altman_repeated(d["rv"], d["ic"], d["subject"])
    table = sm.stats.anova_lm(smf.ols("diff ~ C(subject)", data=d).fit())
    ms_b, ms_w = table["mean_sq"].iloc[0], table["mean_sq"].iloc[1]
    m = d.groupby("subject").size().to_numpy(float)
    n, k = m.sum(), m.size
    var_b = (ms_b - ms_w) / ((n**2 - (m**2).sum()) / ((k - 1) * n))
    assert res["sd_within"] ** 2 == pytest.approx(ms_w, rel=1e-10)
    assert res["sd_between"] ** 2 == pytest.approx(var_b, rel=1e-10)


def test_ba_repeated_close_to_classic_without_subject_effect():
    # with equal, large within-subject variation and no subject effect the
    # repeated-measures SD approaches the plain SD of all differences
    rng = np.random.default_rng(3)
    subj = np.repeat(np.arange(40), 50)
    ref = rng.normal(10, 3, subj.size)
    meth = ref + rng.normal(0.5, 1.0, subj.size)
    rep = bland_altman_repeated(meth, ref, subj)
    cls = bland_altman(meth, ref)
    assert rep["bias"] == pytest.approx(cls["bias"], rel=1e-12)
    assert rep["sd"] == pytest.approx(cls["sd"], rel=0.03)


# ----------------------------------------------------------------- rmcorr ---

def test_rmcorr_bland1995_published_values():
    """Bakdash & Marusich (2017); rmcorr R package output for bland1995:
    r = -0.5067697, df = 38, p = 0.0008471081, 95% CI -0.7067146 to -0.2318631."""
    d = _ref("ba1995_ph_paco2.csv")
    res = rmcorr(d["PaCO2"], d["pH"], d["subject"])
    assert res["r"] == pytest.approx(-0.5067697, abs=1e-7)
    assert res["dof"] == 38
    assert res["p"] == pytest.approx(0.0008471081, rel=1e-6)
    assert res["ci"][0] == pytest.approx(-0.7067146, abs=1e-6)
    assert res["ci"][1] == pytest.approx(-0.2318631, abs=1e-6)
    # symmetric in its two variables
    assert rmcorr(d["pH"], d["PaCO2"], d["subject"])["r"] == pytest.approx(res["r"], rel=1e-12)


def test_rmcorr_matches_ancova_with_statsmodels():
    rng = np.random.default_rng(11)
    subj = np.repeat(np.arange(9), rng.integers(3, 12, 9))
    x = rng.normal(size=subj.size) + subj
    y = 0.4 * x + rng.normal(size=subj.size) - 2 * subj
    res = rmcorr(x, y, subj)
    fit = smf.ols("y ~ C(s) + x", data=pd.DataFrame({"x": x, "y": y, "s": subj})).fit()
    table = sm.stats.anova_lm(fit, typ=2)
    ss_x, ss_res = table.loc["x", "sum_sq"], table.loc["Residual", "sum_sq"]
    r = np.sign(fit.params["x"]) * np.sqrt(ss_x / (ss_x + ss_res))
    assert res["r"] == pytest.approx(r, rel=1e-9)
    assert res["dof"] == int(fit.df_resid)
    assert res["p"] == pytest.approx(fit.pvalues["x"], rel=1e-6)
