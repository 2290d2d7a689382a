"""analyze() end to end, the CLI glue and the calibration study (tiny)."""

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error

from icpcv.commands import main as cli_main
from icpcv.commands.analyze import cmd_analyze, cmd_calibrate
from icpcv.stats import analyze, analyze_study, read_predictions, write_stats
from icpcv.stats.synthetic import synthetic_predictions

MODEL_KEYS = {"mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean", "bland_altman",
              "bland_altman_repeated", "rmcorr", "per_subject", "decomposition"}


@pytest.fixture(scope="module")
def preds():
    return synthetic_predictions(n_subjects=12, scans=(8, 40), seed=3)


@pytest.fixture(scope="module")
def result(preds):
    return analyze(preds, n_boot=400, seed=1)


def test_schema_and_json(result):
    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)  # plain JSON, no NaN, no numpy types
    assert json.loads(text) == d
    for key in ("n_subjects", "n_scans", "ci_level", "ci_method", "reference", "n_boot", "seed",
                "models", "comparisons", "verdict", "warnings"):
        assert key in d
    assert d["n_subjects"] == 12 and d["ci_method"] == "auto" and d["reference"] == "ols_iop"
    for name, m in d["models"].items():
        assert MODEL_KEYS <= set(m), name
        for metric in ("mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean"):
            lo, hi = m[metric]["ci"]
            assert lo <= m[metric]["estimate"] <= hi
        ba = m["bland_altman"]
        assert set(ba) >= {"bias", "sd", "loa", "loa_ci", "proportional_bias"}
        assert set(ba["proportional_bias"]) >= {"slope", "ci", "p"}
        assert set(m["bland_altman_repeated"]) >= {"bias", "sd", "loa", "sd_within", "sd_between"}
        assert set(m["rmcorr"]) >= {"r", "dof", "p", "ci"}
        assert all(isinstance(k, str) for k in m["per_subject"])
        assert set(next(iter(m["per_subject"].values()))) == {"mae", "bias", "n"}
    assert len(d["comparisons"]) == 4 * 2
    for c in d["comparisons"]:
        assert set(c) >= {"model", "reference", "metric", "delta", "ci", "p_signflip", "p_adjusted"}
        assert c["delta"] == pytest.approx(c["estimate_model"] - c["estimate_reference"])


def test_point_estimates_match_independent_computations(preds, result):
    for m, sub in preds.groupby("model"):
        r = result.models[m]
        assert r.mae.estimate == pytest.approx(mean_absolute_error(sub.y_true, sub.y_pred))
        per = (sub.y_pred - sub.y_true).abs().groupby(sub.subject).mean()
        assert r.mae_subject_mean.estimate == pytest.approx(per.mean())
        assert r.per_subject["3"].mae == pytest.approx(per.loc[3])
        e = (sub.y_pred - sub.y_true).to_numpy()
        dec = r.decomposition
        off = pd.Series(e).groupby(sub.subject.to_numpy()).transform("mean").to_numpy()
        assert dec.between_subject == pytest.approx(np.mean(off**2))
        assert dec.within_subject == pytest.approx(np.mean((e - off) ** 2))
        assert dec.between_fraction + dec.within_fraction == pytest.approx(1)
        assert dec.within_subject_correlation == r.rmcorr.r


def test_holm_applied_across_all_comparisons(result):
    from statsmodels.stats.multitest import multipletests

    p = [c.p_signflip for c in result.comparisons]
    adj = multipletests(p, method="holm")[1]
    assert [c.p_adjusted for c in result.comparisons] == pytest.approx(list(adj))


def _numbers(sentence):
    return [float(x) for x in re.findall(r"-?\d+\.\d+", sentence)]


def test_verdict_when_a_model_clearly_wins():
    preds = synthetic_predictions(
        n_subjects=14, scans=(10, 30), seed=4,
        models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 0.3), "weak": (0.0, 0.9)})
    res = analyze(preds, n_boot=1000)
    c = next(c for c in res.comparisons if c.model == "cnn" and c.metric == "mae")
    assert c.ci[1] < 0 and c.p_adjusted < 0.05
    v = res.verdict
    assert v.startswith("The cnn lowers MAE by") and "against ols_iop" in v and "14 monkeys" in v
    reduction, lo, hi = _numbers(v)[:3]
    assert reduction == pytest.approx(-c.delta, abs=0.051)
    assert lo == pytest.approx(-c.ci[1], abs=0.051)
    assert hi == pytest.approx(-c.ci[0], abs=0.051)


def test_verdict_when_no_model_beats_the_reference():
    preds = synthetic_predictions(
        n_subjects=11, scans=(10, 30), seed=5,
        models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 1.0)})
    res = analyze(preds, n_boot=500)
    c = next(c for c in res.comparisons if c.metric == "mae")
    assert c.ci[0] < 0 < c.ci[1] or c.p_adjusted >= 0.05
    v = res.verdict
    assert v.startswith("There is no evidence that any model beats ols_iop")
    delta, lo, hi = _numbers(v)[:3]
    assert delta == pytest.approx(c.delta, abs=0.051)
    assert (lo, hi) == pytest.approx(tuple(c.ci), abs=0.051)


def test_verdict_when_every_model_is_worse_than_the_reference():
    preds = synthetic_predictions(
        n_subjects=12, scans=(10, 30), seed=7,
        models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 1.6), "weak": (0.0, 1.3)})
    res = analyze(preds, n_boot=500)
    mae = {c.model: c for c in res.comparisons if c.metric == "mae"}
    assert mae["cnn"].delta > mae["weak"].delta > 0
    v = res.verdict
    assert v.startswith("There is no evidence that any model beats ols_iop on MAE: every model's MAE is at or "
                        "above ols_iop's; the closest, weak, changes MAE by +")
    delta, lo, hi = _numbers(v)[:3]
    assert delta == pytest.approx(mae["weak"].delta, abs=0.051)
    assert (lo, hi) == pytest.approx(tuple(mae["weak"].ci), abs=0.051)


def test_only_reference_and_missing_reference():
    preds = synthetic_predictions(n_subjects=10, scans=(5, 9), seed=6,
                                  models={"ols_iop": (0, 1)})
    res = analyze(preds, n_boot=200)
    assert res.comparisons == [] and "Only the reference model ols_iop" in res.verdict
    res = analyze(preds, reference="nope", n_boot=200)
    assert res.comparisons == []
    assert any("Reference model 'nope' not found" in w for w in res.warnings)


def test_warnings_and_paired_intersection():
    preds = synthetic_predictions(n_subjects=6, scans=(4, 8), seed=7,
                                  models={"ols_iop": (0, 1), "cnn": (0, 0.8)})
    # subject 2 keeps only 2 scans; cnn misses 3 scans of subject 1
    s2 = preds[preds.subject == 2].scan_id.unique()
    preds = preds[~preds.scan_id.isin(s2[2:])]
    gone = preds[(preds.model == "cnn") & (preds.subject == 1)].index[:3]
    preds = preds.drop(gone)
    res = analyze(preds, n_boot=200, audit_failed=True)
    w = " | ".join(res.warnings)
    assert "Only 6 subjects" in w
    assert "fewer than 3 scans: 2 (2)" in w
    assert "Model cnn has predictions for" in w and "(3 missing)" in w
    assert "leakage audit FAILED" in w
    n_cnn = (preds.model == "cnn").sum()
    for c in res.comparisons:
        assert c.n_scans == n_cnn  # intersection with the reference
    assert res.models["ols_iop"].n_scans == n_cnn + 3


def test_integer_and_string_subjects_give_the_same_result(preds):
    a = analyze(preds, n_boot=200, seed=2).to_dict()
    b = analyze(preds.assign(subject=preds.subject.astype(str)), n_boot=200, seed=2).to_dict()
    assert a == b


def test_cmd_analyze_and_cli(tmp_path, preds):
    path = tmp_path / "predictions.csv"
    preds.to_csv(path, index=False)
    args = SimpleNamespace(predictions=str(path), out=str(tmp_path / "run"), reference="ols_iop",
                           n_boot=200, seed=0, ci_level=0.9, ci_method="percentile")
    assert cmd_analyze(args) == 0
    d = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert d["ci_level"] == 0.9 and d["ci_method"] == "percentile" and d["n_boot"] == 200
    assert cli_main(["analyze", str(path), "--out", str(tmp_path / "cli"), "--n-boot", "100"]) == 0
    assert (tmp_path / "cli" / "stats.json").exists()
    # every analysis option of the CLI reaches stats.json, and the result equals the API's
    assert cli_main(["analyze", str(path), "--out", str(tmp_path / "opts"), "--reference", "cnn", "--n-boot", "150",
                     "--seed", "4", "--ci-level", "0.8"]) == 0
    d = json.loads((tmp_path / "opts" / "stats.json").read_text())
    assert (d["reference"], d["n_boot"], d["seed"], d["ci_level"]) == ("cnn", 150, 4, 0.8)
    assert {c["reference"] for c in d["comparisons"]} == {"cnn"}
    api = analyze_study(read_predictions(path), reference="cnn", n_boot=150, seed=4, ci_level=0.8).to_dict()
    assert d == json.loads(json.dumps(api))
    bad = tmp_path / "bad.csv"
    preds.drop(columns="y_true").to_csv(bad, index=False)
    assert cli_main(["analyze", str(bad), "--out", str(tmp_path / "bad")]) == 2


def test_write_stats_of_result(tmp_path, result):
    path = write_stats(result, tmp_path / "stats.json")
    assert json.loads(path.read_text()) == result.to_dict()


def test_calibration_truth_and_tiny_run(tmp_path):
    from icpcv.stats import calibrate

    # numerical-integral truth vs a large direct simulation of one scan's |e|
    em = calibrate.ErrorModel(mu=0.7, tau=1.2, sigma=2.5)
    rng = np.random.default_rng(0)
    n = 2_000_000
    c = math.sqrt((calibrate.T_DF - 2) / calibrate.T_DF)
    e = (em.mu + rng.normal(0, calibrate.SHARED_OFFSET, n) + rng.normal(0, em.tau, n)
         + rng.normal(0, calibrate.SHARED_SCAN, n) + em.sigma * c * rng.standard_t(calibrate.T_DF, n))
    assert calibrate.true_mae(em) == pytest.approx(np.abs(e).mean(), abs=4 * np.abs(e).std() / math.sqrt(n))
    assert calibrate.true_rmse(em) == pytest.approx(np.sqrt(np.mean(e**2)), rel=0.005)
    alt = calibrate.scaled_to_effect(em, -0.5)
    assert calibrate.true_mae(alt) - calibrate.true_mae(em) == pytest.approx(-0.5, abs=1e-9)

    out = tmp_path / "cal.md"
    args = SimpleNamespace(n_sim=4, n_subjects=14, seed=0, out=str(out), n_boot=50, workers=1)
    assert cmd_calibrate(args) == 0
    text = out.read_text()
    assert "| MAE difference | t |" in text and "sign-flip" in text.lower()
    table = calibrate.run_calibration(n_sim=3, n_subjects=8, n_boot=30, workers=1)
    assert set(table["method"]) >= {"percentile", "bca", "studentized", "t", "sign-flip"}
    assert ((table["rate"] >= 0) & (table["rate"] <= 1)).all()
    assert (table.loc[table.scenario == "null", "truth"].iloc[0]) == 0.0


def test_single_subject_gives_no_interval_and_no_overlap_does_not_crash():
    one = synthetic_predictions(n_subjects=1, scans=[6], seed=1,
                                models={"ols_iop": (0, 1), "cnn": (0, 1)})
    for method in ("percentile", "bca", "studentized", "t", "auto"):
        d = analyze(one, n_boot=100, ci_method=method).to_dict()
        assert d["models"]["cnn"]["mae"]["ci"] is None, method  # never zero-width: null, with a warning
        assert d["comparisons"][0]["ci"] is None
        assert any("No 95% interval (ci null) for model cnn: mae" in w and "fewer than 2 monkeys contribute" in w
                   for w in d["warnings"]), method
    apart = synthetic_predictions(n_subjects=4, scans=(3, 6), seed=2,
                                  models={"ols_iop": (0, 1), "cnn": (0, 1)})
    apart.loc[apart.model == "cnn", "scan_id"] += "x"
    d = analyze(apart, n_boot=100).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["comparisons"][0]["n_scans"] == 0 and d["comparisons"][0]["delta"] is None
    assert any("shares no scans with the reference" in w for w in d["warnings"])
