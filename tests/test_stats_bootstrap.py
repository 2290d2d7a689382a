"""Cluster bootstrap engine against independent, slow implementations."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from icpcv.stats import analyze, bootstrap
from icpcv.stats.bootstrap import Estimand, K


def _clustered(G=6, seed=0, models=("ref", "a", "b")):
    """Small long table with per-subject error offsets."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, G)
    subj = np.repeat(np.arange(G), sizes)
    y = rng.normal(15, 5, G)[subj] + rng.normal(0, 4, subj.size)
    rows = []
    for k, m in enumerate(models):
        e = rng.normal(0, 2, G)[subj] + rng.normal(k * 0.3, 1.5, subj.size)
        rows.append(pd.DataFrame({"subject": subj, "scan": np.arange(subj.size), "model": m,
                                  "y_true": y, "y_pred": y + e}))
    return pd.concat(rows, ignore_index=True), G


def _slow_metrics(d):
    """Metrics of a resampled table, one model at a time, with sklearn/scipy/pandas."""
    yt, yp = d["y_true"].to_numpy(), d["y_pred"].to_numpy()
    e = yp - yt
    subj_mae = d.assign(ae=np.abs(e)).groupby("draw")["ae"].mean()
    a = (yt + yp) / 2
    return {
        "mae": mean_absolute_error(yt, yp),
        "rmse": np.sqrt(mean_squared_error(yt, yp)),
        "bias": e.mean(),
        "r2": r2_score(yt, yp),
        "pearson_r": sps.pearsonr(yt, yp)[0],
        "mae_subject_mean": subj_mae.mean(),
        "ba_slope": sps.linregress(a, e).slope,
    }


def test_counts_from_indices_matches_bincount_per_row():
    rng = np.random.default_rng(1)
    idx = bootstrap.resample_indices(7, 50, rng)
    counts = bootstrap.counts_from_indices(idx, 7)
    for row, c in zip(idx, counts):
        np.testing.assert_array_equal(np.bincount(row, minlength=7), c)
    assert counts.sum(axis=1).tolist() == [7] * 50


def test_vectorised_bootstrap_equals_slow_pandas_loop_same_indices():
    df, G = _clustered()
    models = list(df["model"].unique())
    center = df["y_true"].mean()
    blocks, ests = [], []
    for i, m in enumerate(models):
        sub = df[df["model"] == m]
        blocks.append(bootstrap.subject_sums(sub["subject"], sub["y_true"], sub["y_pred"], G, center))
        for metric in bootstrap.METRICS:
            ests.append(Estimand((m, metric), metric, i * K))
    for i, m in enumerate(models[1:], start=1):
        for metric in ("mae", "rmse"):
            ests.append(Estimand((m, "delta_" + metric), metric, i * K, 0))
    S = np.hstack(blocks)
    rng = np.random.default_rng(42)
    idx = bootstrap.resample_indices(G, 40, rng)
    out = bootstrap.run_bootstrap(S, ests, bootstrap.counts_from_indices(idx, G))

    for b, row in enumerate(idx):
        parts = [df[df["subject"] == g].assign(draw=j) for j, g in enumerate(row)]
        res = pd.concat(parts, ignore_index=True)
        slow = {m: _slow_metrics(res[res["model"] == m]) for m in models}
        for j, em in enumerate(ests):
            m, what = em.key
            if what.startswith("delta_"):
                metric = what[len("delta_"):]
                expect = slow[m][metric] - slow[models[0]][metric]
            else:
                expect = slow[m][what]
            assert out.boot[b, j] == pytest.approx(expect, rel=1e-9, abs=1e-10), (b, em.key)
    # and the full-sample estimate
    for j, em in enumerate(ests[: len(bootstrap.METRICS)]):
        full = _slow_metrics(df[df["model"] == models[0]].assign(draw=lambda t: t["subject"]))
        assert out.estimate[j] == pytest.approx(full[em.metric], rel=1e-10)


def test_jackknife_values_equal_leave_one_subject_out_loop():
    df, G = _clustered(G=7, seed=5)
    sub = df[df["model"] == "a"]
    S = bootstrap.subject_sums(sub["subject"], sub["y_true"], sub["y_pred"], G)
    out = bootstrap.run_bootstrap(S, [Estimand("mae", "mae", 0)], np.ones((1, G)))
    loo = [mean_absolute_error(sub.y_true[sub.subject != g], sub.y_pred[sub.subject != g])
           for g in range(G)]
    np.testing.assert_allclose(out.jack[0], loo, rtol=1e-12)
    se = np.sqrt((G - 1) / G * np.sum((np.array(loo) - np.mean(loo)) ** 2))
    q = sps.t.ppf(0.975, G - 1)
    lo, hi = bootstrap.interval(out, 0, "t")
    theta = mean_absolute_error(sub.y_true, sub.y_pred)
    assert (lo, hi) == pytest.approx((theta - q * se, theta + q * se), rel=1e-12)


def test_studentized_se_equals_statsmodels_cluster_robust_se():
    """se_hat for a pooled MAE = CR0 cluster-robust SE of an intercept-only OLS of |e|."""
    df, G = _clustered(G=8, seed=9)
    sub = df[df["model"] == "b"]
    S = bootstrap.subject_sums(sub["subject"], sub["y_true"], sub["y_pred"], G)
    out = bootstrap.run_bootstrap(S, [Estimand("mae", "mae", 0)], np.ones((3, G)),
                                  studentized=True)
    ae = np.abs(sub["y_pred"] - sub["y_true"]).to_numpy()
    fit = sm.OLS(ae, np.ones((ae.size, 1))).fit(
        cov_type="cluster", cov_kwds={"groups": sub["subject"].to_numpy(), "use_correction": False})
    assert out.se_hat[0] == pytest.approx(fit.bse[0], rel=1e-10)
    # a resample that draws every subject once is the data itself
    assert out.se_boot[0, 0] == pytest.approx(fit.bse[0], rel=1e-10)


def test_studentized_gradients_match_finite_differences():
    df, G = _clustered(G=6, seed=2)
    sub = df[df["model"] == "a"]
    S = bootstrap.subject_sums(sub["subject"], sub["y_true"], sub["y_pred"], G, 14.0)
    T = S.sum(axis=0)
    for metric in bootstrap.METRICS:
        _, g = bootstrap.metric_value_grad(T, metric)
        for k in range(K):
            h = 1e-6 * max(1.0, abs(T[k]))
            tp, tm = T.copy(), T.copy()
            tp[k] += h
            tm[k] -= h
            fd = (bootstrap.metric_value_grad(tp, metric, False)
                  - bootstrap.metric_value_grad(tm, metric, False)) / (2 * h)
            assert g[k] == pytest.approx(fd, rel=1e-5, abs=1e-9), (metric, k)


def test_identical_models_give_delta_exactly_zero_for_every_method():
    df, G = _clustered(G=9, seed=4, models=("ols_iop", "x"))
    twin = df[df["model"] == "ols_iop"].assign(model="twin")
    preds = pd.concat([df, twin], ignore_index=True).rename(columns={"scan": "scan_id"})
    preds["fold"] = preds["subject"]
    for method in ("percentile", "bca", "studentized", "t", "auto"):
        res = analyze(preds, n_boot=300, ci_method=method)
        for c in res.comparisons:
            if c.model == "twin":
                assert c.delta == 0.0
                assert c.ci == [0.0, 0.0], (method, c)
                assert c.p_signflip == 1.0


def test_pairs_share_resampled_subjects():
    """A model that is the reference plus a tiny scan-level perturbation: the
    paired CI of the difference must be far narrower than the single-model
    CIs (unpaired resampling would give roughly sqrt(2) times their width)."""
    df, G = _clustered(G=12, seed=8, models=("ols_iop",))
    rng = np.random.default_rng(0)
    near = df.assign(model="near", y_pred=df["y_pred"] + rng.normal(0, 0.05, len(df)))
    preds = pd.concat([df, near], ignore_index=True).rename(columns={"scan": "scan_id"})
    preds["fold"] = preds["subject"]
    res = analyze(preds, n_boot=2000, ci_method="percentile")
    c = next(c for c in res.comparisons if c.metric == "mae")
    single = res.models["near"].mae.ci
    assert (c.ci[1] - c.ci[0]) < 0.1 * (single[1] - single[0])


def test_scan_level_resampling_is_narrower_than_subject_level_on_clustered_data():
    """The reason this project exists: treating scans as independent
    understates the uncertainty when errors are clustered by monkey."""
    rng = np.random.default_rng(12)
    G = 14
    subj = np.repeat(np.arange(G), rng.integers(19, 250, G))
    y = rng.normal(15, 6, subj.size)
    p = y + rng.normal(0, 3, G)[subj] + rng.normal(0, 2, subj.size)
    est = [Estimand("mae", "mae", 0)]
    B = 2000
    S_subj = bootstrap.subject_sums(subj, y, p, G)
    cnt = bootstrap.counts_from_indices(bootstrap.resample_indices(G, B, rng), G)
    by_subject = bootstrap.interval(bootstrap.run_bootstrap(S_subj, est, cnt), 0, "percentile")
    n = subj.size  # every scan its own "subject"
    S_scan = bootstrap.subject_sums(np.arange(n), y, p, n)
    cnt = bootstrap.counts_from_indices(bootstrap.resample_indices(n, B, rng), n)
    by_scan = bootstrap.interval(bootstrap.run_bootstrap(S_scan, est, cnt), 0, "percentile")
    w_subj = by_subject[1] - by_subject[0]
    w_scan = by_scan[1] - by_scan[0]
    assert w_scan < 0.5 * w_subj


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_bca_and_percentile_match_scipy_when_clusters_are_single_observations(method):
    """With one scan per subject the cluster bootstrap is the ordinary
    bootstrap, so our intervals must agree with scipy.stats.bootstrap up to
    Monte Carlo error."""
    rng = np.random.default_rng(2024)
    n = 25
    x = rng.lognormal(0, 1.2, n)  # skewed, so BCa differs from percentile
    B = 40_000
    # ours: y_true = 0, y_pred = x  ->  MAE = mean(x)
    S = bootstrap.subject_sums(np.arange(n), np.zeros(n), x, n)
    counts = bootstrap.counts_from_indices(bootstrap.resample_indices(n, B, rng), n)
    out = bootstrap.run_bootstrap(S, [Estimand("mae", "mae", 0)], counts)
    ours = bootstrap.interval(out, 0, "bca" if method == "BCa" else "percentile")
    ref = sps.bootstrap((x,), np.mean, n_resamples=B, method=method, confidence_level=0.95,
                        random_state=np.random.default_rng(7)).confidence_interval
    other = sps.bootstrap((x,), np.mean, n_resamples=B,
                          method="percentile" if method == "BCa" else "BCa",
                          confidence_level=0.95,
                          random_state=np.random.default_rng(7)).confidence_interval
    width = ref.high - ref.low
    tol = 0.025 * width  # MC error of a 40,000-resample endpoint: about 1% of the width
    assert ours[0] == pytest.approx(ref.low, abs=tol)
    assert ours[1] == pytest.approx(ref.high, abs=tol)
    # the check can tell the two methods apart
    assert max(abs(ref.low - other.low), abs(ref.high - other.high)) > 2.5 * tol


def test_studentized_interval_formula():
    theta, se_hat = 2.0, 0.5
    boot = np.array([1.0, 2.0, 3.0, 2.5, 1.5])
    se_b = np.array([0.5, 1.0, 0.5, 0.25, 0.5])
    t = (boot - theta) / se_b
    q_lo, q_hi = np.quantile(t, [0.025, 0.975])
    assert bootstrap.studentized_interval(theta, se_hat, boot, se_b) == pytest.approx(
        (theta - q_hi * se_hat, theta - q_lo * se_hat))
