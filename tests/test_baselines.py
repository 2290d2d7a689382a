"""Baselines: OLS against numpy's independent fit, MixedLM against lme4's published fit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icpcv.models import check_models, make_model
from icpcv.errors import InputError

DATA = Path(__file__).parent / "data"


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    iop = rng.uniform(5, 50, n)
    subject = np.repeat([str(i) for i in range(6)], n // 6)
    icp = 3 + 0.2 * iop + 0.01 * iop**2 + rng.normal(0, 2, n)
    return pd.DataFrame(dict(iop=iop, icp=icp, subject=subject))


def test_mean_and_ols_match_independent_fits():
    f = _frame()
    assert make_model("mean").fit_scans(f).predict_scans(f.iloc[:3]) == pytest.approx([f.icp.mean()] * 3)
    slope, intercept = np.polyfit(f.iop, f.icp, 1)
    np.testing.assert_allclose(make_model("ols_iop").fit_scans(f).predict_scans(f), intercept + slope * f.iop, rtol=1e-9)
    c2 = np.polyfit(f.iop, f.icp, 2)
    np.testing.assert_allclose(make_model("ols_iop2").fit_scans(f).predict_scans(f), np.polyval(c2, f.iop), rtol=1e-9)


def test_mixedlm_matches_lme4_sleepstudy():
    """lme4: lmer(Reaction ~ Days + (1 | Subject), sleepstudy), REML. Published (Bates et al., lme4):
    fixed effects 251.4051 and 10.4673; Subject intercept variance 1378.2 (SD 37.12); residual
    variance 960.5 (SD 30.99)."""
    d = pd.read_csv(DATA / "sleepstudy.csv", comment="#")
    frame = pd.DataFrame(dict(icp=d.Reaction, iop=d.Days.astype(float), subject=d.Subject.astype(str)))
    m = make_model("mixedlm_iop").fit_scans(frame)
    assert m.fe_[0] == pytest.approx(251.4051, abs=1e-3)
    assert m.fe_[1] == pytest.approx(10.4673, abs=1e-3)
    assert np.sqrt(m.group_var_) == pytest.approx(37.12, abs=0.01)
    assert np.sqrt(m.scale_) == pytest.approx(30.99, abs=0.01)
    # a held-out subject is predicted from the fixed effects alone
    assert m.predict_scans(pd.DataFrame(dict(iop=[0.0, 9.0]))) == pytest.approx([251.4051, 251.4051 + 9 * 10.4673], abs=1e-2)


def test_ridge_scan_reads_a_linear_signal_from_volumes():
    rng = np.random.default_rng(0)
    n = 80
    depth = rng.integers(4, 12, n)
    vols = rng.normal(0, 0.1, (n, 8, 8, 16)).astype(np.float32)
    for i, z in enumerate(depth):
        vols[i, :, :, z] += 3.0
    f = pd.DataFrame(dict(iop=rng.uniform(5, 50, n), icp=2.0 * depth + rng.normal(0, 0.5, n), subject="1"))
    m = make_model("ridge_scan").fit_scans(f.iloc[:60], vols[:60])
    pred = m.predict_scans(f.iloc[60:], vols[60:])
    assert np.mean(np.abs(pred - f.icp[60:])) < 0.5 * np.mean(np.abs(f.icp[60:] - f.icp[:60].mean()))


def test_model_names_are_checked():
    assert check_models(["mean", " cnn"]) == ["mean", "cnn"]
    with pytest.raises(InputError, match="unknown model"):
        check_models(["mean", "gpt"])
