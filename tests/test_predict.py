"""icpcv predict (issue 20): kept models, the ensemble, the monkey-level interval, coverage, bad input.

One tiny run (3 folds, mean/ols_iop/ridge_scan/cnn, 1 epoch) is shared by the module.
"""
from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv
from icpcv import cohort as cohort_mod
from icpcv.cohort import ScanSet
from icpcv.errors import InputError
from icpcv.folds import FoldPlan
from icpcv.models import FitContext, make_model
from icpcv.rundir import RunDir
from icpcv.stats import intervals as I

MODELS = "mean,ols_iop,ridge_scan,cnn"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    rc, _, err = icpcv("run", "--phantom", "tiny", "--folds", "3", "--models", MODELS, "--epochs", "1", "--threads",
                       "1", "--n-boot", "200", "--out", out)
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def predicted(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "pred"
    rc, stdout, err = icpcv("predict", run_dir, "--new-subjects", "2", "--out", out, "--level", "0.8", "--threads", "1")
    assert rc == 0, err
    return out


def _exact_floats(path, column):
    """A CSV column parsed by Python's float (shortest repr round-trips exactly)."""
    return pd.read_csv(path, dtype=str)[column].map(float).to_numpy()


# ---------------------------------------------------------------- the quantile rule, against independent computations

def _expanded_quantile(scores, groups, level):
    """The same rule by brute force: copy each monkey's scores so every monkey has L = lcm(n_g) of them, add
    L copies of +inf for the new monkey, and take the ceil(level * (G + 1) * L)-th smallest (exact fractions)."""
    by = {}
    for s, g in zip(scores, groups):
        by.setdefault(g, []).append(s)
    L = math.lcm(*(len(v) for v in by.values()))
    pool = sorted(x for v in by.values() for x in v * (L // len(v))) + [math.inf] * L
    k = math.ceil(Fraction(level).limit_denominator(10**6) * len(pool))
    return pool[k - 1]


@pytest.mark.parametrize("seed", range(5))
def test_hierarchical_quantile_matches_expansion(seed):
    rng = np.random.default_rng(seed)
    G = int(rng.integers(3, 20))
    sizes = rng.integers(1, 7, G)
    groups = np.repeat([f"m{g}" for g in range(G)], sizes)
    scores = np.round(rng.gamma(2.0, 3.0, len(groups)), 2)
    for level in (0.5, 0.8, 0.9, 0.95, G / (G + 1), 0.99):
        assert I.hierarchical_quantile(scores, groups, level) == _expanded_quantile(scores, groups, level), (G, level)


def test_scan_quantile_and_cv_plus_by_definition():
    rng = np.random.default_rng(3)
    s = rng.normal(size=23)
    for level in (0.5, 0.8, 0.9, 0.95):  # smallest t among the scores with #(s <= t) >= (n + 1) level
        want = min((t for t in s if np.sum(s <= t) >= (len(s) + 1) * level), default=math.inf)
        assert I.scan_quantile(s, level) == want
    # CV+ with every fold model agreeing is the centre -+ the quantile; the lower end by its own definition
    groups = np.repeat(["a", "b", "c", "d", "e"], [1, 4, 2, 3, 5])
    r = np.abs(rng.normal(size=15))
    centres = 10 + rng.normal(size=15)
    lo, hi = I.cv_plus_interval(centres[None, :], r, groups, 0.8)
    w = I.group_weights(groups)
    vals = centres - r  # lower end: the largest t with weight(values < t) <= 1 - level ... i.e. -Q(-values)
    want_lo = max(t for t in vals if w[vals >= t].sum() >= 0.8 - 1e-12)
    assert lo[0] == want_lo
    assert hi[0] == I.weighted_upper_quantile(centres + r, w, 0.8)
    flat_lo, flat_hi = I.cv_plus_interval(np.full((1, 15), 7.0), r, groups, 0.8)
    q = I.hierarchical_quantile(r, groups, 0.8)
    assert (flat_lo[0], flat_hi[0]) == (7.0 - q, 7.0 + q)


def test_level_outside_unit_interval_refused():
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="level"):
            I.check_level(bad)


# ---------------------------------------------------------------- kept models

def test_kept_models_reload_bit_for_bit(run_dir):
    run = RunDir(run_dir)
    rec = run.read_record()
    coh = cohort_mod.load(run.cohort)
    store = cohort_mod.VolumeStore(coh)
    plan = FoldPlan.from_dict(run.read_plan_dict())
    scans = coh.scans.set_index("scan_id", drop=False)
    for k in range(rec.n_folds):
        fold = run.fold(k)
        table = pd.read_csv(fold.predictions_csv, dtype=str)
        test = ScanSet(scans.loc[list(plan.folds[k].test_scans)], store.get)
        for name in MODELS.split(","):
            state = json.loads(fold.model_state(name).read_text())  # plain JSON: no pickle anywhere
            model = make_model(name, FitContext(train=rec.config.train, shape=coh.shape, device="cpu",
                                                weights=fold.weights(name))).load_state(state)
            got = model.predict(test)
            want = table[table["model"] == name].set_index("scan_id").loc[test.ids, "y_pred"].map(float).to_numpy()
            assert np.array_equal(got, want), (k, name, np.abs(got - want).max())


@pytest.fixture(scope="module")
def nuisance_run(tmp_path_factory):
    """The nuisance baselines (issue 19) on the realistic tiny phantom: they read protocol, eye, session minutes
    and each volume's intensity statistics. 2 folds, no network: a few seconds."""
    out = tmp_path_factory.mktemp("predict") / "nuisance"
    rc, _, err = icpcv("run", "--phantom", "tiny", "--acquisition", "realistic", "--folds", "2", "--models",
                       "mean,acq,image_stats", "--threads", "1", "--n-boot", "200", "--out", out)
    assert rc == 0, err
    return out


def test_nuisance_baselines_kept_and_reloaded_bit_for_bit(nuisance_run, tmp_path):
    run = RunDir(nuisance_run)
    rec = run.read_record()
    coh = cohort_mod.load(run.cohort)
    plan = FoldPlan.from_dict(run.read_plan_dict())
    scans = coh.scans.set_index("scan_id", drop=False)
    for k in range(rec.n_folds):
        fold = run.fold(k)
        table = pd.read_csv(fold.predictions_csv, dtype=str)
        test = ScanSet(scans.loc[list(plan.folds[k].test_scans)])  # no volumes: the kept state is all they need
        for name in ("acq", "image_stats"):
            state = json.loads(fold.model_state(name).read_text())  # plain JSON: no pickle anywhere
            model = make_model(name).load_state(state)  # no context: acq's columns come from the state
            got = model.predict(test)
            want = table[table["model"] == name].set_index("scan_id").loc[test.ids, "y_pred"].map(float).to_numpy()
            assert np.array_equal(got, want), (k, name, np.abs(got - want).max())
            features = state["fitted"]["encoder"]
            if name == "acq":
                assert {"protocol", "eye"} <= set(features["categorical"]) and "session_minutes" in features["numeric"]
            else:
                assert features["categorical"] == [] and "intensity_mean" in features["numeric"]
            # a scan table without a column the model was fitted on: refused, with the column's name
            with pytest.raises(InputError, match=features["numeric"][-1]):
                model.predict(ScanSet(test.frame.drop(columns=[features["numeric"][-1]])))
    # icpcv predict: new phantom monkeys get image_stats predictions (their volumes' statistics, computed anew)
    out = tmp_path / "pred"
    rc, _, err = icpcv("predict", nuisance_run, "--new-subjects", "2", "--models", "image_stats", "--out", out,
                       "--level", "0.8", "--threads", "1")
    assert rc == 0, err
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) and (rows["model"] == "image_stats").all() and (rows["n_fold_models"] == rec.n_folds).all()
    assert np.isfinite(rows["prediction"]).all() and rows["prediction"].nunique() > 1
    # the new phantom monkeys are scanned as the run's were (they had no acquisition fields, and acq refused them):
    # protocol, eye and time are in their table, and acq predicts them
    rc, _, err = icpcv("predict", nuisance_run, "--new-subjects", "2", "--models", "acq", "--out", tmp_path / "p2",
                       "--threads", "1")
    assert rc == 0, err
    new = pd.read_csv(tmp_path / "p2" / "new_subjects" / "scans.csv", dtype=str)
    assert set(new["eye"]) == {"OD", "OS"} and new["protocol"].nunique() > 1 and new["acquired_at"].notna().all()
    assert np.isfinite(pd.read_csv(tmp_path / "p2" / "predictions.csv")["prediction"]).all()


def test_new_monkeys_of_a_cut_and_mirrored_run_are_cut_and_mirrored_once(tmp_path):
    """`--acquisition realistic --fov-mm 5 5 --mirror-os`: new phantom monkeys are drawn as the run's (3 mm scans
    skipped as too small, 5 and 7 mm ones cut to 5 mm, left eyes flipped), and predict reads their volumes as
    given: the table's own fields of view must not cut them again."""
    run = tmp_path / "run"
    rc, _, err = icpcv("run", "--phantom", "tiny", "--acquisition", "realistic", "--fov-mm", "5", "5", "--mirror-os",
                       "--folds", "2", "--models", "mean,image_stats", "--threads", "1", "--n-boot", "50", "--out", run)
    assert rc == 0, err
    out = tmp_path / "pred"
    rc, _, err = icpcv("predict", run, "--new-subjects", "2", "--models", "image_stats", "--out", out, "--threads", "1")
    assert rc == 0, err
    new = pd.read_csv(out / "new_subjects" / "scans.csv", dtype={"scan_id": str})
    assert set(new["fov_x_mm"]) <= {5.0, 7.0} and set(new["eye"]) == {"OD", "OS"}  # no 3 mm scan: too small
    ids = json.loads((out / "cohort" / "volumes.json").read_text())["scan_ids"]
    read = np.load(out / "cohort" / "volumes.npy")
    written = {x: np.load(out / "new_subjects" / p) for x, p in zip(new["scan_id"], new["path"])}
    assert sorted(ids) == sorted(written)
    for x, vol in zip(ids, read):
        assert np.array_equal(vol, written[x].astype(vol.dtype)), x  # not cut, flipped or resampled again


def test_ensemble_is_mean_of_fold_models(run_dir, predicted):
    run = RunDir(run_dir)
    rec = run.read_record()
    rows = pd.read_csv(predicted / "predictions.csv", dtype={"scan_id": str, "subject": str})
    new = pd.read_csv(predicted / "new_subjects" / "scans.csv", dtype={"scan_id": str, "subject": str})
    vols = np.stack([np.load(predicted / "new_subjects" / p) for p in new["path"]]).astype(np.float32)
    scans = ScanSet.from_arrays(new, vols)
    shape = tuple(json.loads(run.preprocessing_json.read_text())["shape"])
    for name in MODELS.split(","):
        per_fold = []
        for k in range(rec.n_folds):
            fold = run.fold(k)
            model = make_model(name, FitContext(train=rec.config.train, shape=shape, device="cpu",
                                                weights=fold.weights(name))).load_state(fold.read_model_state(name))
            per_fold.append(model.predict(scans))
        got = rows[rows["model"] == name].set_index("scan_id").loc[new["scan_id"]]
        assert np.array_equal(got["prediction"].to_numpy(), np.mean(per_fold, axis=0)), name
        assert (got["n_fold_models"] == rec.n_folds).all()
        assert np.allclose(got["fold_sd"], np.std(per_fold, axis=0, ddof=1))
        assert ((got["low"] <= got["prediction"]) & (got["prediction"] <= got["high"])).all()


def test_predict_outputs_and_page(predicted):
    meta = json.loads((predicted / "prediction.json").read_text())
    assert meta["level"] == 0.8 and meta["n_subjects"] == 2 and not meta["warnings"]
    for name, s in meta["summary"].items():  # the phantom's monkeys come with ICP: MAE and coverage are reported
        assert 0 <= s["coverage"] <= 1 and s["mae"] > 0 and s["n_labelled"] == s["n_scans"], name
    subj = pd.read_csv(predicted / "subjects.csv")
    assert len(subj) == 2 * 4 and (subj["low"] < subj["high"]).all()
    html = (predicted / "index.html").read_text()
    assert "coverage" in html and "new0_1" in html
    assert not list(predicted.glob(".predict-*"))


def test_predict_without_icp_escapes_and_warns(run_dir, predicted, tmp_path):
    table = pd.read_csv(predicted / "new_subjects" / "scans.csv", dtype=str)
    table["path"] = [str(predicted / "new_subjects" / p) for p in table["path"]]
    table["subject"] = np.where(table["subject"] == "new0_1", "<script>x</script>", "1")  # "1": a run monkey's name
    table["icp"] = ""
    table.to_csv(tmp_path / "new.csv", index=False)
    rc, out, err = icpcv("predict", run_dir, "--manifest", tmp_path / "new.csv", "--out", tmp_path / "p",
                         "--models", "ols_iop,ridge_scan", "--level", "0.8")
    assert rc == 0, err
    assert "warning" in err and "subject(s) 1 have the name of a monkey the run trained on" in err
    meta = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert set(meta["summary"]) == {"ols_iop", "ridge_scan"} and "mae" not in meta["summary"]["ols_iop"]
    html = (tmp_path / "p" / "index.html").read_text()
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    rows = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert rows["icp"].isna().all() and np.isfinite(rows["prediction"]).all()


# ---------------------------------------------------------------- bad input: one clear message, nothing half-written

def _nothing_written(out):
    return not (out / "prediction.json").exists() and not (out / "predictions.csv").exists() and \
        not list(out.glob(".predict-*"))


def test_bad_options_refused(run_dir, tmp_path):
    out = tmp_path / "p"
    rc, _, err = icpcv("predict", run_dir, "--new-subjects", "1", "--out", out, "--level", "1.5")
    assert_clean_refusal(rc, err, "--level", "accepted above 0 and below 1")
    rc, _, err = icpcv("predict", run_dir, "--new-subjects", "1", "--out", out, "--models", "resnet18")
    assert_clean_refusal(rc, err, "resnet18", "not in the run", "its models: mean, ols_iop, ridge_scan, cnn")
    assert not out.exists() or _nothing_written(out)


def test_run_without_kept_models_refused(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for p in old.glob("folds/*/cnn_model.json"):
        p.unlink()
    rc, _, err = icpcv("predict", old, "--new-subjects", "1", "--out", tmp_path / "p")
    assert_clean_refusal(rc, err, "kept no fitted model for cnn", "--fresh")
    assert not (tmp_path / "p" / "prediction.json").exists()
    rc, _, err = icpcv("predict", old, "--new-subjects", "1", "--out", tmp_path / "p", "--models", "ols_iop",
                       "--level", "0.8")  # the models it kept still serve
    assert rc == 0, err


def test_scan_split_run_refused(tmp_path):
    from rundir_support import make_config

    from icpcv.run.pipeline import prepare

    twin = tmp_path / "twin"
    prepare(make_config(phantom="tiny", folds=2, models=("mean",), split="scans"), twin)
    rc, _, err = icpcv("predict", twin, "--new-subjects", "1", "--out", tmp_path / "p")
    assert_clean_refusal(rc, err, "--split scans", "no interval for a new monkey")


def test_volumes_of_another_shape_or_scale_refused(run_dir, predicted, tmp_path):
    """Volumes alike among themselves but unlike the run's (every one 3x wider, or every one rescaled to 0-1) pass
    the table's own checks and are caught against the run's preprocessing.json; one bad scan among good ones is a
    recorded skip with --skip-bad-scans."""
    table = pd.read_csv(predicted / "new_subjects" / "scans.csv", dtype=str).head(6)
    raw = [np.load(predicted / "new_subjects" / p) for p in table["path"]]
    variants = {"wide": lambda v: np.repeat(np.repeat(v, 3, axis=0), 3, axis=1),  # another protocol, not a resampling
                "unit": lambda v: v.astype(np.float32) / 255.0}  # another preprocessing
    expect = {"wide": "against the run's volumes", "unit": "intensity scale"}

    def write(name, make):
        paths = []
        for i, v in enumerate(raw):
            np.save(tmp_path / f"{name}{i}.npy", make(i, v))
            paths.append(str(tmp_path / f"{name}{i}.npy"))
        table.assign(path=paths).to_csv(tmp_path / f"{name}.csv", index=False)
        return tmp_path / f"{name}.csv"

    for name, change in variants.items():
        out = tmp_path / f"p_{name}"
        rc, _, err = icpcv("predict", run_dir, "--manifest", write(name, lambda i, v: change(v)), "--out", out,
                           "--level", "0.8")
        assert_clean_refusal(rc, err, "not prepared like the run's", expect[name], "table row 1")
        assert _nothing_written(out)
    mixed = write("mixed", lambda i, v: variants["wide"](v) if i == 0 else variants["unit"](v) if i == 1 else v)
    out = tmp_path / "p_mixed"
    rc, _, err = icpcv("predict", run_dir, "--manifest", mixed, "--out", out, "--level", "0.8", "--skip-bad-scans",
                       "--models", "ols_iop,ridge_scan")
    assert rc == 0, err
    quality = pd.read_csv(out / "data_quality.csv", dtype=str)
    assert quality["reason"].fillna("").tolist() == ["bad_volume_shape", "bad_volume_values"] + [""] * 4
    assert len(pd.read_csv(out / "predictions.csv")) == 2 * 4


# ---------------------------------------------------------------- coverage over new monkeys (the benchmark's code)

def test_monkey_level_interval_covers_and_naive_does_not():
    """Tiny phantom, 6 training monkeys, 80% (the highest usual level finite with 6): over 3 replicates x 6 new
    monkeys the monkey-level interval covers about 80% or more; the naive scan-level interval of ridge_scan (which
    recognises a monkey from its anatomy) covers clearly less (bench coverage measures it at scale)."""
    from icpcv.predict.coverage import coverage_study, summarise

    rows = coverage_study(3, preset="tiny", models=("ols_iop", "ridge_scan"), levels=(0.8,), n_new=6)
    s = summarise(rows).set_index(["model", "method"])
    for model in ("ols_iop", "ridge_scan"):
        m = s.loc[(model, "monkey")]
        assert m.coverage >= 0.8 - 3 * max(m.mc_se, 0.02), (model, m.coverage, m.mc_se)
    naive, honest = s.loc[("ridge_scan", "naive")], s.loc[("ridge_scan", "monkey")]
    assert naive.coverage < 0.8 and naive.coverage < honest.coverage - 0.2  # measured: 0.57 against 0.92
    assert naive.median_width < honest.median_width


# ---------------------------------------------------------------- the run's report and stats.json

def test_run_stats_and_report_give_the_new_monkey_interval(run_dir):
    """stats.json prediction_intervals agree with the brute-force rule on the run's own residuals; the report's
    section says it (6 monkeys: no finite 90% interval, which needs 9)."""
    run = RunDir(run_dir)
    stats = json.loads(run.stats_json.read_text())["prediction_intervals"]
    preds = pd.read_csv(run.predictions_csv, dtype={"subject": str})
    assert stats["max_finite_level"] == pytest.approx(6 / 7)
    for name in MODELS.split(","):
        rows = preds[preds["model"] == name]
        r = (rows["y_true"] - rows["y_pred"]).abs().to_numpy()
        by_level = {x["level"]: x for x in stats["models"][name]}
        assert by_level[0.8]["half_width"] == _expanded_quantile(r, rows["subject"].to_numpy(), 0.8)
        assert by_level[0.9]["half_width"] is None and not by_level[0.9]["finite"]  # unbounded with 6 monkeys
        k = math.ceil((len(r) + 1) * 0.8)
        assert by_level[0.8]["naive_half_width"] == np.sort(r)[k - 1]
    html = run.index_html.read_text()
    assert 'id="prediction"' in html
    assert "With 6 monkeys no interval for a new monkey&#39;s scan is finite at 90%" in html
