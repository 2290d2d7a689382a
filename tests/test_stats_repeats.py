"""Training randomness (issue 10): the repeat table, the seed ensemble and training_variance.

The variance decomposition is checked on simulated cohorts where monkey sampling and training
noise are known by construction, against statsmodels' REML fit on balanced data, and against
the variance of the single-seed estimate itself; every per-repeat number against analyze() on
a subset built here; the table checks against their error messages (row and column).
"""

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from icpcv.stats import analyze, read_predictions, validate_predictions
from icpcv.errors import InputError
from icpcv.stats.repeats import (ensemble, single_seed_table, training_variance, validate_repeats,
                                 variance_components)

#: Scans per monkey in the range of the real study (19-261), fixed for the simulations.
SCANS = np.array([19, 35, 52, 60, 74, 88, 95, 110, 126, 140, 163, 190, 224, 261], dtype=float)
N_SIM = 20_000
N_SE = 4  # Monte Carlo tolerance: |mean - truth| < 4 standard errors


# ---------------------------------------------------------------------------------------------
# Variance components on simulations where both parts are known
# ---------------------------------------------------------------------------------------------

def _simulate(monkey_share, heteroscedastic, R=5, seed=1):
    """Per-monkey differences D (N_SIM x G x R) whose single-seed variance is 1 by construction."""
    w = SCANS / SCANS.sum()
    sum_w2 = np.sum(w**2)
    # Fewer scans, noisier per-monkey MAE: training noise that differs between monkeys.
    shape = 1 + 60 / SCANS if heteroscedastic else np.ones_like(SCANS)
    sigma2_a = monkey_share / sum_w2
    sigma2_g = (1 - monkey_share) / np.sum(w**2 * shape) * shape
    rng = np.random.default_rng(seed)
    a = rng.normal(0, np.sqrt(sigma2_a), (N_SIM, SCANS.size))
    eps = rng.normal(0, 1, (N_SIM, SCANS.size, R)) * np.sqrt(sigma2_g)[:, None]
    truth = {"monkey": sigma2_a * sum_w2, "training": float(np.sum(w**2 * sigma2_g))}
    return 0.3 + a[..., None] + eps, w, truth


def _close_in_mc_error(values, truth):
    se = values.std(ddof=1) / np.sqrt(values.size)
    return abs(values.mean() - truth) < N_SE * se, (values.mean(), truth, se)


@pytest.mark.parametrize("monkey_share,heteroscedastic",
                         [(0.2, False), (0.8, False), (0.2, True), (0.8, True)])
def test_decomposition_recovers_known_shares(monkey_share, heteroscedastic):
    D, w, truth = _simulate(monkey_share, heteroscedastic)
    assert truth["monkey"] == pytest.approx(monkey_share)
    assert truth["monkey"] + truth["training"] == pytest.approx(1.0)
    vc = variance_components(D, SCANS)
    ok, info = _close_in_mc_error(vc["monkey_sampling_raw"], truth["monkey"])
    assert ok, info
    ok, info = _close_in_mc_error(vc["training_noise"], truth["training"])
    assert ok, info
    # The known parts add up to the variance of what a single-seed study reports ...
    single = np.sum(w * D[..., 0], axis=-1)
    assert single.var(ddof=1) == pytest.approx(1.0, abs=N_SE * np.sqrt(2 / N_SIM))
    # ... and the ensemble's estimate has variance M + T/R.
    R = D.shape[-1]
    ens_truth = truth["monkey"] + truth["training"] / R
    ens = np.sum(w * D.mean(axis=-1), axis=-1)
    assert ens.var(ddof=1) == pytest.approx(ens_truth, rel=N_SE * np.sqrt(2 / N_SIM))
    ok, info = _close_in_mc_error(vc["monkey_sampling_raw"] + vc["training_noise"] / R, ens_truth)
    assert ok, info
    # Truncation: reported value = max(raw, 0), flagged exactly when raw < 0.
    assert np.array_equal(vc["truncated"], vc["monkey_sampling_raw"] < 0)
    assert np.array_equal(vc["monkey_sampling"], np.maximum(vc["monkey_sampling_raw"], 0))
    if monkey_share == 0.2:
        assert vc["truncated"].any()  # small monkey parts do come out negative sometimes


def test_decomposition_test_has_power_against_a_naive_estimator():
    """Without the training-noise correction the between-monkey spread overstates monkeys."""
    D, w, truth = _simulate(0.2, False)
    d_bar = D.mean(axis=-1)
    q = np.sum(w * (d_bar - np.sum(w * d_bar, axis=-1)[:, None]) ** 2, axis=-1)
    naive = q / (1 - np.sum(w**2)) * np.sum(w**2)
    assert not _close_in_mc_error(naive, truth["monkey"])[0]


def test_decomposition_with_folds_that_share_networks():
    """Two monkeys per fold share each repeat's network: correlated training noise within a fold."""
    R, G = 4, SCANS.size
    w = SCANS / SCANS.sum()
    units = np.arange(G) // 2
    sigma2_a, sigma2_shared, sigma2_own = 0.5, 0.6, 0.4
    rng = np.random.default_rng(7)
    a = rng.normal(0, np.sqrt(sigma2_a), (N_SIM, G))
    shared = rng.normal(0, np.sqrt(sigma2_shared), (N_SIM, G // 2, R))[:, units, :]
    own = rng.normal(0, np.sqrt(sigma2_own), (N_SIM, G, R))
    D = a[..., None] + shared + own
    w_unit = np.bincount(units, weights=w)
    truth_t = sigma2_shared * np.sum(w_unit**2) + sigma2_own * np.sum(w**2)
    truth_m = sigma2_a * np.sum(w**2)
    vc = variance_components(D, SCANS, units=units)
    assert vc["n_training_units"] == G // 2
    for key, truth in (("training_noise", truth_t), ("monkey_sampling_raw", truth_m)):
        ok, info = _close_in_mc_error(vc[key], truth)
        assert ok, (key, info)
    single = np.sum(w * D[..., 0], axis=-1)
    assert single.var(ddof=1) == pytest.approx(truth_m + truth_t, rel=N_SE * np.sqrt(2 / N_SIM))
    # Ignoring the shared networks misses the within-fold covariance of the noise.
    ignored = variance_components(D, SCANS)
    assert not _close_in_mc_error(ignored["training_noise"], truth_t)[0]


def test_equal_weights_match_reml_one_way_random_effects():
    """Balanced data: ANOVA = REML (when positive); statsmodels MixedLM as the independent fit."""
    rng = np.random.default_rng(3)
    G, R = 12, 4
    D = rng.normal(0, 1.0, G)[:, None] + rng.normal(0, 0.7, (G, R))
    frame = pd.DataFrame({"d": D.ravel(), "monkey": np.repeat(np.arange(G), R)})
    fit = smf.mixedlm("d ~ 1", frame, groups=frame["monkey"]).fit(reml=True)
    vc = variance_components(D, np.ones(G))
    sigma2_a, sigma2_e = float(fit.cov_re.iloc[0, 0]), float(fit.scale)
    assert vc["sigma2_monkey"] == pytest.approx(sigma2_a, rel=1e-4)
    assert vc["monkey_sampling"] == pytest.approx(sigma2_a / G, rel=1e-4)
    assert vc["training_noise"] == pytest.approx(sigma2_e / G, rel=1e-4)
    assert vc["estimate"] == pytest.approx(D.mean())


def test_hand_computed_balanced_anova():
    D = np.array([[-1.0, -0.6], [0.2, 0.6], [-0.4, 0.0], [0.8, 1.0]])
    # MS_b = R/(G-1) Σ(D̄_g - D̄)² = 2/3 * 1.6275; MS_w = mean of s²_g = (0.08*3 + 0.02)/4
    ms_b, ms_w = 2 / 3 * 1.6275, 0.065
    vc = variance_components(D, [5, 5, 5, 5])
    assert vc["sigma2_monkey"] == pytest.approx((ms_b - ms_w) / 2)
    assert vc["training_noise"] == pytest.approx(ms_w / 4)
    assert vc["monkey_share"] + vc["training_share"] == pytest.approx(1)


def test_scan_level_simulation_with_the_real_scan_counts():
    """Issue 22: scans carry sampling noise that stays the same in every repeat and shrinks with a
    monkey's scan count. On cohorts simulated scan by scan (monkey effects, per-scan effects,
    training noise per repeat and per scan; the real study's 13 scan counts, 19 to 251), the
    estimator with the scan part finds every known part within Monte Carlo error; without it the
    monkey part comes out biased upward (the 20,000-cohort figures: python -m icpcv bench variance,
    docs/statistics.md)."""
    from icpcv.stats.repeats_bench import REAL_TRAINING_COUNTS, SCENARIOS, estimates, simulate, truth

    sc = SCENARIOS[0]
    assert sc.counts == REAL_TRAINING_COUNTS and sum(sc.counts) == 1243
    n_sim, R = 1500, 5
    est = estimates(simulate(np.random.default_rng(11), sc, n_sim, R), sc.counts)
    tr = truth(sc)
    new, old = est["new"], est["old"]
    for key in ("monkey_sampling", "between_monkeys", "scans_within_monkeys", "training_noise"):
        got = new["monkey_sampling_raw"] if key == "monkey_sampling" else new[key]
        ok, info = _close_in_mc_error(got, tr[key])
        assert ok, (key, info)
    ok, info = _close_in_mc_error(new["sigma2_monkey"], sc.sigma2_monkey)
    assert ok, info
    # The simulation is what its truth says: M + T is the variance of a single-seed estimate.
    assert est["single"].var(ddof=1) == pytest.approx(tr["single_seed_total"], rel=N_SE * np.sqrt(2 / n_sim))
    # Without the scan part the monkey part absorbs the scans' noise: biased upward, well outside MC error.
    ok, (mean, truth_m, se) = _close_in_mc_error(old["monkey_sampling_raw"], tr["monkey_sampling"])
    assert not ok and mean > truth_m and (mean - truth_m) / truth_m > 0.08, (mean, truth_m, se)


def test_variance_components_rejects_too_few_repeats_or_monkeys():
    with pytest.raises(ValueError, match="R >= 2"):
        variance_components(np.zeros((5, 1)), np.ones(5))
    with pytest.raises(ValueError, match="G >= 2"):
        variance_components(np.zeros((1, 3)), np.ones(1))


# ---------------------------------------------------------------------------------------------
# A repeated predictions table
# ---------------------------------------------------------------------------------------------

CNN_SCALE = (0.4, 0.4, 1.3, 1.3)  # repeats 0-1 clearly better than ols_iop, 2-3 worse


def repeated_table(n_subjects=10, seed=0, per_fold=1, cnn_scale=CNN_SCALE):
    """ols_iop and mean (deterministic), cnn and cnn2 trained 4 times per fold."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 13, n_subjects)
    subj = np.repeat(np.arange(1, n_subjects + 1), sizes)
    n = subj.size
    fold = (subj - 1) // per_fold
    n_folds = fold.max() + 1
    y = np.round(rng.normal(15, 5, n), 2)
    iop = np.round(rng.normal(20, 5, n))
    e_ref = 2 * rng.normal(0, 1, n_subjects)[subj - 1] + rng.normal(0, 3, n)
    base = pd.DataFrame({"fold": fold, "subject": subj, "scan_id": [f"s{i:04d}" for i in range(n)],
                         "y_true": y, "iop": iop})
    frames = [base.assign(model="ols_iop", y_pred=y + e_ref, repeat=np.nan),
              base.assign(model="mean", y_pred=y + 1.2 * e_ref + rng.normal(0, 1, n), repeat=np.nan)]
    for r, scale in enumerate(cnn_scale):
        for model, s in (("cnn", scale), ("cnn2", 0.95)):
            shift = rng.normal(0, 0.5, n_folds)[fold]  # this (fold, repeat)'s network
            frames.append(base.assign(model=model, repeat=r,
                                      y_pred=y + s * e_ref + shift + rng.normal(0, 0.3, n)))
    cols = ["fold", "subject", "scan_id", "model", "repeat", "y_true", "y_pred", "iop"]
    return pd.concat(frames, ignore_index=True)[cols]


@pytest.fixture(scope="module")
def table():
    return repeated_table()


@pytest.fixture(scope="module")
def tv(table):
    return training_variance(table, n_boot=300, seed=5)


@pytest.fixture(scope="module")
def single_seed_stats(table):
    """analyze() of each repeat's table, built here without the module under test."""
    out = []
    for r in range(len(CNN_SCALE)):
        sub = table[table["repeat"].isna() | (table["repeat"] == r)].drop(columns="repeat")
        out.append(analyze(sub, n_boot=300, seed=5).to_dict())
    return out


def test_ensemble_is_the_mean_of_the_repeats(table):
    ens = ensemble(table)
    assert list(ens.columns) == ["fold", "subject", "scan_id", "model", "y_true", "y_pred", "iop"]
    expected = {}
    for row in table.itertuples():
        expected.setdefault((row.model, row.scan_id), []).append(row.y_pred)
    assert len(ens) == len(expected)
    for row in ens.itertuples():
        assert row.y_pred == pytest.approx(np.mean(expected[(row.model, row.scan_id)]), abs=1e-12)
    det = table[table["repeat"].isna()].reset_index(drop=True)
    ens_det = ens[ens["model"].isin(["ols_iop", "mean"])].reset_index(drop=True)
    assert np.array_equal(ens_det["y_pred"].to_numpy(), det["y_pred"].to_numpy())
    # The ensemble is a plain table: the default validation (and so analyze) accepts it.
    assert len(validate_predictions(ens)) == len(ens)


def test_table_without_repeats_is_read_as_before(table):
    plain = table[table["repeat"].isna()].drop(columns="repeat")
    assert validate_repeats(plain)["repeat"].isna().all()
    ens = ensemble(plain)
    pd.testing.assert_frame_equal(ens, validate_predictions(plain)[list(ens.columns)])
    tv = training_variance(plain, n_boot=50)
    assert not tv.measured and "not measured" in tv.reason and tv.models == {}
    assert tv.n_repeats == 1 and tv.verdict_suffix is None
    assert "not measured" in tv.summary()


def test_one_repeat_is_not_measured(table):
    one = table[table["repeat"].isna() | (table["repeat"] == 0)]
    tv = training_variance(one, n_boot=50)
    assert not tv.measured and tv.n_repeats == 1 and "one repeat" in tv.reason
    d = tv.to_dict()
    assert d["measured"] is False and d["models"] == {} and d["n_agree"] is None


def test_single_seed_table_is_the_subset(table):
    sub = single_seed_table(table, 2)
    expected = table[table["repeat"].isna() | (table["repeat"] == 2)]
    assert len(sub) == len(expected) and "repeat" not in sub.columns
    assert np.array_equal(sub["y_pred"].to_numpy(), expected["y_pred"].to_numpy())
    with pytest.raises(InputError, match="no repeat 9"):
        single_seed_table(table, 9)


def test_per_repeat_numbers_are_those_of_a_single_seed_study(tv, single_seed_stats):
    assert tv.measured and tv.n_repeats == 4 and tv.repeats == [0, 1, 2, 3]
    assert tv.repeated_models == ["cnn", "cnn2"] and tv.deterministic_models == ["ols_iop", "mean"]
    assert set(tv.models) == {"cnn", "cnn2"}
    for name, m in tv.models.items():
        for r, (c, stats) in enumerate(zip(m.per_repeat, single_seed_stats)):
            ref = next(x for x in stats["comparisons"] if x["model"] == name and x["metric"] == "mae")
            assert c.repeat == r
            assert (c.delta, c.ci, c.p_signflip, c.p_adjusted) == (
                ref["delta"], ref["ci"], ref["p_signflip"], ref["p_adjusted"])
            assert c.n_subjects == ref["n_subjects"] == 10
        deltas = np.array([next(x["delta"] for x in s["comparisons"]
                                if x["model"] == name and x["metric"] == "mae")
                           for s in single_seed_stats])
        assert m.delta_mean == pytest.approx(deltas.mean())
        assert m.delta_sd == pytest.approx(np.std(deltas, ddof=1))
        assert (m.delta_min, m.delta_max) == (deltas.min(), deltas.max())


def test_count_of_repeats_called_better_follows_the_rule(tv, single_seed_stats):
    for name, m in tv.models.items():
        independent = 0
        for stats in single_seed_stats:
            c = next(x for x in stats["comparisons"] if x["model"] == name and x["metric"] == "mae")
            independent += int(c["ci"][1] < 0 and c["p_adjusted"] < 0.05)
        assert m.n_called_better == independent
        assert [c.called_better for c in m.per_repeat].count(True) == independent
    # The simulated cnn is better alone with two of its four seeds: the count is not trivial.
    assert tv.models["cnn"].n_called_better == 2
    assert [c.called_better for c in tv.models["cnn"].per_repeat] == [True, True, False, False]


def test_ensemble_comparison_and_verdict_agreement(table, tv, single_seed_stats):
    ens_stats = analyze(ensemble(table), n_boot=300, seed=5).to_dict()
    c = next(x for x in ens_stats["comparisons"] if x["model"] == "cnn" and x["metric"] == "mae")
    e = tv.models["cnn"].ensemble
    assert e.repeat is None and (e.delta, e.ci, e.p_adjusted) == (c["delta"], c["ci"], c["p_adjusted"])
    for m in tv.models.values():  # triangle inequality: the ensemble beats the average seed
        assert m.ensemble.delta <= m.delta_mean + 1e-12
    assert tv.ensemble_verdict == ens_stats["verdict"]

    assert tv.ensemble_winner == winner(ens_stats) == "cnn"
    assert [s["winner"] for s in tv.single_seed] == [winner(s) for s in single_seed_stats]
    # "The cnn lowers MAE": a seed agrees when cnn alone passes the rule in it.
    agree = [c["ci"][1] < 0 and c["p_adjusted"] < 0.05
             for s in single_seed_stats for c in s["comparisons"]
             if c["model"] == "cnn" and c["metric"] == "mae"]
    assert [s["agrees"] for s in tv.single_seed] == agree and tv.n_agree == sum(agree) == 2
    assert tv.verdict_suffix == "(2 of 4 training seeds alone agree)"


def winner(stats):
    """The model a verdict sentence calls better, read off the sentence itself."""
    for m in stats["models"]:
        if stats["verdict"].startswith(f"The {m} lowers MAE"):
            return m
    return None


def test_agreement_when_the_ensemble_finds_no_evidence():
    """Only seed 0 of cnn is clearly better; the ensemble is not: seeds agree when they find none."""
    table = repeated_table(cnn_scale=(0.4, 1.3, 1.3, 1.3))
    tv = training_variance(table, n_boot=300, seed=5)
    ens_stats = analyze(ensemble(table), n_boot=300, seed=5).to_dict()
    assert winner(ens_stats) is None and tv.ensemble_winner is None
    winners = []
    for r in range(4):
        sub = table[table["repeat"].isna() | (table["repeat"] == r)].drop(columns="repeat")
        winners.append(winner(analyze(sub, n_boot=300, seed=5).to_dict()))
    assert winners[0] == "cnn"  # the seed a single-seed study might have been lucky with
    assert [s["agrees"] for s in tv.single_seed] == [w is None for w in winners]
    assert tv.n_agree == sum(w is None for w in winners) < 4


def _per_monkey_differences(table, model, reference="ols_iop"):
    ref = table[table["model"] == reference].set_index("scan_id")
    cols, scans = [], []
    for r in range(len(CNN_SCALE)):
        rows = table[(table["model"] == model) & (table["repeat"] == r)].set_index("scan_id")
        loss = (rows["y_pred"] - rows["y_true"]).abs() - (ref.loc[rows.index, "y_pred"]
                                                         - ref.loc[rows.index, "y_true"]).abs()
        cols.append(loss.groupby(rows["subject"]).mean())
        scans.append(pd.DataFrame({"subject": rows["subject"], "scan": rows.index, "repeat": r,
                                   "d": loss.to_numpy()}))
    D = pd.concat(cols, axis=1).sort_index()
    n = table[table["model"] == reference].groupby("subject").size().sort_index()
    return D.to_numpy(), n.to_numpy(dtype=float), pd.concat(scans, ignore_index=True)


def _scan_variance_by_anova(long):
    """Per monkey (MS_scan - MS_res) / (n R) from statsmodels' two-way ANOVA d ~ scan + repeat."""
    from statsmodels.stats.anova import anova_lm

    out = {}
    for subject, sub in long.groupby("subject"):
        aov = anova_lm(smf.ols("d ~ C(scan) + C(repeat)", sub).fit())
        ms = aov["sum_sq"] / aov["df"]
        out[subject] = (ms["C(scan)"] - ms["Residual"]) / (sub["scan"].nunique() * sub["repeat"].nunique())
    return pd.Series(out).sort_index().to_numpy()


def test_decomposition_of_the_table_recomputed_independently(tv):
    table = repeated_table()
    for name in ("cnn", "cnn2"):
        D, n, long = _per_monkey_differences(table, name)
        S = _scan_variance_by_anova(long)
        w = n / n.sum()
        # The decomposed numbers are the reported ones: Σ_g w_g D_gr is repeat r's delta.
        assert w @ D == pytest.approx([c.delta for c in tv.models[name].per_repeat], abs=1e-12)
        R = D.shape[1]
        s2 = D.var(axis=1, ddof=1)
        d_bar = D.mean(axis=1)
        q = np.sum(w * (d_bar - w @ d_bar) ** 2)
        training = np.sum(w**2 * s2)
        sigma2_a = (q - np.sum(w * (1 - w) * s2) / R - np.sum(w * (1 - w) * S)) / (1 - np.sum(w**2))
        monkey = sigma2_a * np.sum(w**2) + np.sum(w**2 * S)
        v = tv.models[name].variance
        assert v.n_subjects == 10 and v.n_training_units == 10 and v.n_repeats == 4
        assert v.training_noise == pytest.approx(training)
        assert v.between_monkeys == pytest.approx(sigma2_a * np.sum(w**2))
        assert v.scans_within_monkeys == pytest.approx(np.sum(w**2 * S))
        assert v.monkey_sampling_raw == pytest.approx(monkey)
        assert v.monkey_sampling == pytest.approx(max(monkey, 0))
        assert v.ensemble_total == pytest.approx(v.monkey_sampling + training / R)
        assert v.truncated == (monkey < 0)


def test_folds_with_several_monkeys_are_one_training_unit():
    table = repeated_table(per_fold=2)
    tv = training_variance(table, n_boot=50)
    D, n, _ = _per_monkey_differences(table, "cnn")
    w = n / n.sum()
    fold_sums = np.stack([w[2 * f] * D[2 * f] + w[2 * f + 1] * D[2 * f + 1] for f in range(5)])
    v = tv.models["cnn"].variance
    assert v.n_training_units == 5
    assert v.training_noise == pytest.approx(fold_sums.var(axis=1, ddof=1).sum())


def test_per_fold_spread_of_the_repeats(tv, table):
    m = tv.models["cnn"]
    assert [f.fold for f in m.per_fold] == [str(k) for k in range(10)]
    for f in m.per_fold:
        rows = table[(table["model"] == "cnn") & (table["fold"].astype(str) == f.fold)]
        maes = [(g["y_pred"] - g["y_true"]).abs().mean() for _, g in rows.groupby("repeat")]
        assert f.mae == pytest.approx(maes) and f.mae_sd == pytest.approx(np.std(maes, ddof=1))
        ens = rows.groupby("scan_id").agg(y=("y_true", "first"), p=("y_pred", "mean"))
        assert f.ensemble_mae == pytest.approx((ens["p"] - ens["y"]).abs().mean())
        ref = table[(table["model"] == "ols_iop") & (table["fold"].astype(str) == f.fold)]
        assert f.reference_mae == pytest.approx((ref["y_pred"] - ref["y_true"]).abs().mean())
        assert f.subjects == [str(int(f.fold) + 1)] and f.n_scans == len(ens)


def test_to_dict_is_plain_json_and_summary_names_everything(tv):
    d = tv.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert set(d) >= {"measured", "reason", "n_repeats", "repeats", "models", "single_seed",
                      "ensemble_verdict", "n_agree", "verdict_suffix", "rule", "reference"}
    m = d["models"]["cnn"]
    assert set(m) >= {"per_repeat", "delta_mean", "delta_sd", "n_called_better", "ensemble",
                      "variance", "per_fold"}
    assert set(m["per_repeat"][0]) >= {"repeat", "delta", "ci", "p_signflip", "p_adjusted",
                                       "called_better"}
    assert set(m["variance"]) >= {"monkey_sampling", "training_noise", "monkey_share",
                                  "training_share", "truncated", "estimator"}
    text = tv.summary()
    assert "ensemble" in text and "training noise" in text and tv.verdict_suffix in text


def test_ensemble_result_is_reused_only_when_it_matches(table, tv):
    ens = analyze(ensemble(table), n_boot=300, seed=5)
    again = training_variance(table, n_boot=300, seed=5, ensemble_result=ens)
    assert again.to_dict() == tv.to_dict()
    with pytest.raises(ValueError, match="ensemble_result"):
        training_variance(table, n_boot=300, seed=6, ensemble_result=ens)


def test_repeated_reference_compares_every_model_per_repeat():
    table = repeated_table(n_subjects=6)
    tv = training_variance(table, reference="cnn2", n_boot=50)
    assert set(tv.models) == {"ols_iop", "mean", "cnn"}
    for r, c in enumerate(tv.models["ols_iop"].per_repeat):
        sub = table[table["repeat"].isna() | (table["repeat"] == r)].drop(columns="repeat")
        ref = next(x for x in analyze(sub, reference="cnn2", n_boot=50).comparisons
                   if x.model == "ols_iop" and x.metric == "mae")
        assert c.delta == ref.delta


# ---------------------------------------------------------------------------------------------
# Validation: every error names the row and the column
# ---------------------------------------------------------------------------------------------

def small():
    """Two monkeys, two scans each: ols_iop (rows 1-4) and cnn with repeats 0, 1 (rows 5-12)."""
    rows = []
    scans = [("s1", "m1", 0), ("s2", "m1", 0), ("s3", "m2", 1), ("s4", "m2", 1)]
    for scan, subject, fold in scans:
        rows.append([fold, subject, scan, "ols_iop", "", 10.0, 11.0, 20.0])
    for r in (0, 1):
        for scan, subject, fold in scans:
            rows.append([fold, subject, scan, "cnn", str(r), 10.0, 10.5 + r, 20.0])
    return pd.DataFrame(rows, columns=["fold", "subject", "scan_id", "model", "repeat",
                                       "y_true", "y_pred", "iop"])


def test_small_table_is_valid():
    df = validate_repeats(small())
    assert df["repeat"].isna().sum() == 4 and list(df["repeat"].dropna()) == [0] * 4 + [1] * 4


def test_duplicate_model_scan_repeat():
    df = pd.concat([small(), small().iloc[[6]]], ignore_index=True)
    with pytest.raises(InputError, match=r"predictions rows 7, 13, columns model/scan_id/repeat: "
                                         r"duplicate \(model='cnn', scan_id='s3', repeat 0\)"):
        validate_repeats(df)


def test_a_scan_missing_a_repeat():
    df = small().drop(index=10).reset_index(drop=True)  # cnn, s3, repeat 1
    with pytest.raises(InputError, match=r"row 7, column repeat: model 'cnn', scan_id 's3' has no "
                                         r"row for repeat 1"):
        validate_repeats(df)


def test_unequal_repeats_between_models():
    extra = small().iloc[4:].assign(model="cnn2")
    extra = pd.concat([extra, extra.iloc[:4].assign(repeat="2")])
    df = pd.concat([small(), extra], ignore_index=True)
    with pytest.raises(InputError, match=r"row 13, column repeat: model 'cnn2' has repeats 0-2 but "
                                         r"'cnn' has 0, 1"):
        validate_repeats(df)


def test_repeat_missing_on_some_rows_of_a_repeated_model():
    df = small()
    df.loc[8, "repeat"] = ""
    with pytest.raises(InputError, match=r"row 9, column repeat: empty, but model 'cnn' has repeat 0 "
                                         r"in row 5"):
        validate_repeats(df)


@pytest.mark.parametrize("column,value", [("y_true", 12.0), ("fold", 7), ("iop", 25.0)])
def test_values_that_must_not_change_between_repeats(column, value):
    df = small()
    df.loc[10, column] = value  # cnn, s3, repeat 1 (row 11)
    with pytest.raises(InputError, match=rf"predictions row 11, column {column}: .*s3"):
        validate_repeats(df)


@pytest.mark.parametrize("value", ["1.5", "-1", "abc"])
def test_repeat_must_be_a_whole_number(value):
    df = small()
    df.loc[5, "repeat"] = value
    with pytest.raises(InputError, match=rf"predictions row 6, column repeat: '{value}' is not a "
                                         r"repeat number"):
        validate_repeats(df)


def test_plain_validation_and_analyze_refuse_repeats_with_a_pointer_to_ensemble():
    with pytest.raises(InputError, match=r"rows 5, 9, column repeat: \(model='cnn', scan_id='s1'\) "
                                         r"has one row per training repeat \(0, 1\); combine the "
                                         r"repeats with icpcv.stats.repeats.ensemble\(\)"):
        validate_predictions(small())
    with pytest.raises(InputError, match="ensemble"):
        analyze(small(), n_boot=10)


def test_csv_round_trip(tmp_path, table):
    path = tmp_path / "predictions.csv"
    table.to_csv(path, index=False)
    assert "repeat" in path.read_text().splitlines()[0]
    back = read_predictions(path, allow_repeats=True)
    pd.testing.assert_frame_equal(ensemble(back), ensemble(table))
    with pytest.raises(InputError, match="predictions.csv rows"):
        read_predictions(path)


def test_a_repeat_column_empty_on_every_row_is_a_plain_table(tmp_path, table):
    """Issue 22: read back from CSV (nullable <NA>) or as given ("", " ", None), an all-empty repeat
    column is a plain table: no training_variance key, the same statistics as without the column."""
    from icpcv.stats.study import analyze_study, has_repeats

    plain = table[table["repeat"].isna()].drop(columns=["repeat", "iop"]).reset_index(drop=True)
    path = tmp_path / "predictions.csv"
    plain.assign(repeat="").to_csv(path, index=False)
    back = read_predictions(path, allow_repeats=True)
    assert back["repeat"].isna().all()
    for blank in ("", " ", None):
        assert not has_repeats(plain.assign(repeat=blank))
    assert not has_repeats(back)
    assert has_repeats(table) and has_repeats(table.assign(repeat=table["repeat"].astype("Int64")))
    expected = analyze_study(plain, n_boot=30).to_dict()
    got = analyze_study(back, n_boot=30).to_dict()
    assert "training_variance" not in got and "training_variance" not in expected
    assert got["verdict"] == expected["verdict"] and got["comparisons"] == expected["comparisons"]


def test_seed_agreement_that_is_guaranteed_says_so(tv):
    """Issue 22: with 5 monkeys the exact sign-flip p cannot fall below 2/2^5 = 0.0625, so no single
    seed can be called better and all seeds "agree" with an ensemble that finds no evidence: the
    verdict says that, not "(3 of 3 training seeds alone agree)"."""
    from icpcv.stats.repeats import TrainingVariance
    from icpcv.stats.study import analyze_study

    table = repeated_table(n_subjects=5, cnn_scale=(0.4, 0.4, 0.4))
    res = analyze_study(table, n_boot=50)
    five = TrainingVariance.from_dict(res.extra["training_variance"])
    assert five.measured and five.n_agree == 3 and five.agreement_guaranteed
    assert five.verdict_suffix == ("(all 3 training seeds alone agree, as they must: with 5 monkeys "
                                   "no single seed can be called better)")
    # every repeat of cnn passes the interval half of the rule; only the p floor holds it back
    assert all(c.ci[1] < 0 for c in five.models["cnn"].per_repeat)
    assert "5 monkeys) (all 3 training seeds alone agree, as they must:" in res.verdict
    assert res.verdict.count("training seeds") == 1 and "cannot reach p < 0.05" in res.verdict
    # one placement everywhere (issue 22, statistics 5): the analysis's verdict, the section's own, its summary
    assert five.verdict_with_agreement == res.verdict
    assert five.summary().endswith(f"Verdict on the seed ensemble: {res.verdict}")
    # with 10 monkeys a seed can be called better: the count is evidence and is said as before
    assert not tv.agreement_guaranteed and tv.verdict_suffix == f"({tv.n_agree} of 4 training seeds alone agree)"


def test_docs_and_code_place_the_seed_agreement_alike():
    """Issue 22: the verdict's seed agreement sits inside the first sentence, before its period, in
    docs/statistics.md's examples as in the analysis (with_seed_agreement)."""
    from pathlib import Path

    from icpcv.stats.repeats import with_seed_agreement

    docs = (Path(__file__).resolve().parents[1] / "docs" / "statistics.md").read_text()
    assert "). (4 of 5 training seeds" not in docs
    assert "14 monkeys) (4 of 5 training seeds alone agree)." in docs
    assert with_seed_agreement(["The cnn lowers MAE (...; 14 monkeys)."], "(4 of 5 training seeds alone agree)") \
        == "The cnn lowers MAE (...; 14 monkeys) (4 of 5 training seeds alone agree)."
