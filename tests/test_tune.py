"""``run --tune`` (issue 21): nested recipe selection on inner monkeys, and the optimism of picking by looking.

One small run on a file cohort of the tiny phantom (2 outer folds, 2 inner folds, the scan ridge at a
modest and at a crushing penalty) is shared by the module; a second run, on the same table with the
held-out monkeys of fold 1 changed (labels and volumes), shows that fold 1's choice never saw them.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icpcv.cohort.phantom import make_cohort
from icpcv.errors import InputError
from icpcv.models import CNNS, known_models
from icpcv.rundir import RunDir, Unit
from icpcv.stats.selection import choice_stability, selection_optimism
from icpcv.tune.nested import nested_in_memory
from icpcv.tune.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = "ridge_scan: alpha=10,1e6"
ARGS = ["--models", "mean", "--tune", SPEC, "--folds", "2", "--inner-folds", "2", "--shape", "12x12x32", "--val-fraction", "0",
        "--reference", "mean", "--n-boot", "200", "--threads", "1", "--quiet"]


def spec(text):
    return parse_spec(text, is_network=lambda m: m in CNNS, known_models=known_models())


def icpcv(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "icpcv", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if check and res.returncode:
        raise AssertionError(res.stderr[-3000:])
    return res


def write_table(folder: Path, change=None) -> Path:
    """The tiny phantom as .npy files and a plain scan table; ``change(scans, volumes)`` edits them first."""
    scans, volumes, _ = make_cohort("tiny", seed=0)
    volumes = volumes.astype(np.float32)
    if change is not None:
        change(scans, volumes)
    (folder / "vol").mkdir(parents=True, exist_ok=True)
    for x, v in zip(scans["scan_id"], volumes):
        np.save(folder / "vol" / f"{x}.npy", v)
    table = scans[["scan_id", "subject", "iop", "icp"]].assign(path=[f"vol/{x}.npy" for x in scans["scan_id"]])
    table.to_csv(folder / "scans.csv", index=False)
    return folder / "scans.csv"


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("tune")
    table = write_table(base / "data")
    icpcv("run", "--manifest", table, "--out", base / "run", *ARGS)
    return base


# ---------------------------------------------------------------------------------------------- the spec

def test_spec_grid_models_and_files(tmp_path):
    s = spec("cnn: lr=1e-3,3e-4; epochs=2,3")
    assert s.name == "cnn_tuned" and len(s.candidates) == 4
    assert {c.options["lr"] for c in s.candidates} == {1e-3, 3e-4}
    two = spec("resnet10 | resnet18: lr=1e-3")
    assert two.name == "recipe_tuned" and [c.model for c in two.candidates] == ["resnet10", "resnet18"]
    (tmp_path / "s.toml").write_text('name = "depth"\n[[candidates]]\nmodel = "ridge_scan"\nalpha = [1.0, 10.0]\n')
    (tmp_path / "s.json").write_text(json.dumps({"candidates": [{"model": "mean"}, {"model": "ols_iop"}]}))
    assert spec(str(tmp_path / "s.toml")).name == "depth_tuned"
    assert [c.label for c in spec(str(tmp_path / "s.json")).candidates] == ["mean", "ols_iop"]
    with pytest.raises(InputError, match="ridge_scan has no setting 'lr'; it takes seed, subsample, alpha"):
        spec("ridge_scan: lr=1,2")
    with pytest.raises(InputError, match="1 candidate; recipe selection needs at least 2"):
        spec("cnn: lr=1e-3")
    with pytest.raises(InputError, match="subsample=1.5"):
        spec("mean: subsample=1.5,0.5")


def test_the_light_cnns_width_is_a_tunable_setting(tmp_path):
    """``cnn: width=4,8``: each candidate trains a light CNN of its own width (its kept weights' shapes and its
    parameter count, against a network built by hand); without ``width`` the candidate is the plain run's cnn
    (same label, same network); other models, unknown settings and widths out of range are refused by name."""
    import torch

    from icpcv.cohort import ScanSet
    from icpcv.models.cnn import LightCNN3D
    from icpcv.models import FitContext
    from icpcv.tune.job import fit_candidate

    grid = spec("cnn: width=4,8; epochs=1")
    assert [c.label for c in grid.candidates] == ["cnn epochs=1 width=4", "cnn epochs=1 width=8"]
    assert [c.label for c in spec("cnn: lr=1e-3,3e-4").candidates] == ["cnn lr=0.001", "cnn lr=0.0003"]  # as before
    scans, volumes, _ = make_cohort("tiny", seed=0)
    data = ScanSet.from_arrays(scans[["scan_id", "subject", "iop", "icp"]], volumes.astype(np.float32))
    subject = data.frame["subject"].astype(str).to_numpy()

    def part(*monkeys):
        return ScanSet(data.frame[np.isin(subject, monkeys)], data.get_volumes)

    shape = tuple(volumes.shape[1:])
    for cand, channels in zip(spec("cnn: width=4; epochs=1 | cnn: epochs=1").candidates, [(4, 8, 16), (8, 16, 32)]):
        ctx = FitContext(seed=1, shape=shape, weights=tmp_path / f"{cand.label}.pt")
        model, y_pred, _, _ = fit_candidate(cand, part("1", "2", "3", "4"), part("5"), part("6"), ctx, base=0, k=0, j=-1)
        weights = torch.load(ctx.weights, weights_only=True)
        convs = [tuple(weights[f"features.{i}.weight"].shape) for i in (0, 3, 6)]
        assert convs == [(channels[0], 1, 3, 3, 3), (channels[1], channels[0], 3, 3, 3), (channels[2], channels[1], 3, 3, 3)]
        by_hand = sum(p.numel() for p in LightCNN3D(shape, channels=channels).parameters())
        assert model.describe()["parameters"] == by_hand and len(y_pred) == int((subject == "6").sum())
    with pytest.raises(InputError, match="resnet10 has no setting 'width'; it takes seed, subsample, epochs"):
        spec("resnet10: width=8,16")
    with pytest.raises(InputError, match="cnn has no setting 'depth'; it takes .*pretrained, width"):
        spec("cnn: depth=2,3")
    with pytest.raises(InputError, match="cnn width=0: the light CNN's channel width .* must be 1 to 256"):
        spec("cnn: width=0,8")
    with pytest.raises(InputError, match="cnn width=2.5: give an integer"):
        spec("cnn: width=2.5,8")


def test_tuning_units_have_keys_of_their_own():
    for u in (Unit(3), Unit(3, 2), Unit(3, 0, 1, 4), Unit(3, 2, 1)):
        assert Unit.parse(u.key) == u
    assert Unit(3).key == "3" and Unit(3, 2).key == "3.2"  # the keys of runs without --tune are as before
    assert Unit(3, 0, 1, 4).key == "3.c1.i4" and Unit(3, 0, 1, 4).label() == "fold 4 candidate 2 inner 5"


def test_default_run_config_has_no_tuning_keys():
    from icpcv.config import RunConfig
    d = RunConfig().to_dict()
    assert "tune" not in d and "inner_folds" not in d


# ---------------------------------------------------------------------------------------------- the run

def test_outputs_of_a_tuned_run(tuned_run):
    run = RunDir(tuned_run / "run")
    rec = run.read_record()
    # every (outer fold, candidate, inner fold) training and every candidate's outer fit is a complete unit
    units = run.tuning_units(rec)
    assert len(units) == 2 * 2 * 2 + 2 * 2 and not run.incomplete_units(rec)
    tuning = json.loads(run.tuning_json.read_text())
    assert [len(f["scores"]) for f in tuning["folds"]] == [2, 2]
    for f in tuning["folds"]:  # the choice is the lowest inner MAE
        assert f["chosen"] == int(np.argmin([s["inner_mae"] for s in f["scores"]]))
    # predictions.csv: the tuned model predicts every scan once, as the chosen candidate's outer fit did
    preds = run.read_predictions()
    tuned = preds[preds["model"] == "ridge_scan_tuned"]
    assert sorted(tuned["scan_id"]) == sorted(preds[preds["model"] == "mean"]["scan_id"])
    cands = run.read_tuning_candidates()
    for f in tuning["folds"]:
        mine = cands[(cands["fold"] == f["fold"]) & (cands["model"] == f["chosen_label"])]
        got = tuned[tuned["fold"] == f["fold"]]
        assert np.array_equal(mine["y_pred"].to_numpy(), got["y_pred"].to_numpy())
    # stats and verdict treat it like any other model; the optimism audit checked against a direct computation
    stats = json.loads(run.stats_json.read_text())
    assert "ridge_scan_tuned" in stats["models"]
    sel = stats["recipe_selection"]
    maes = {m: float(np.mean(np.abs(g["y_pred"] - g["y_true"]))) for m, g in cands.groupby("model")}
    nested = float(np.mean(np.abs(tuned["y_pred"] - tuned["y_true"])))
    assert sel["optimism"]["best"] == min(maes, key=maes.get)
    assert sel["optimism"]["optimism"] == pytest.approx(nested - min(maes.values()), abs=1e-9)
    assert sel["statement"].startswith("Picking the best of 2 recipes by their leave-one-monkey-out MAE")
    html = run.index_html.read_text()
    assert "Recipe selection" in html and "ridge_scan alpha=1e+06" in html


def test_in_memory_nested_selection_is_the_runs(tuned_run):
    """The simulations' nested_in_memory gives the run's inner scores, choices and tuned predictions (same plans,
    fits, seeds and rule); and the tuned model's MAE in each outer fold is its chosen candidate's MAE there."""
    run = RunDir(tuned_run / "run")
    scans = pd.read_csv(tuned_run / "data" / "scans.csv", dtype={"scan_id": str, "subject": str})
    volumes = np.stack([np.load(tuned_run / "data" / p) for p in scans["path"]])
    out = nested_in_memory(scans[["scan_id", "subject", "iop", "icp"]], volumes, spec(SPEC), n_folds=2, inner_folds=2,
                           val_fraction=0)
    tuning = json.loads(run.tuning_json.read_text())
    assert out["choices"] == [f["chosen_label"] for f in tuning["folds"]]
    for mine, theirs in zip(out["scores"], tuning["folds"]):
        assert [s["inner_mae"] for s in mine] == pytest.approx([s["inner_mae"] for s in theirs["scores"]], abs=1e-9)
    preds = run.read_predictions()
    tuned = preds[preds["model"] == "ridge_scan_tuned"].set_index("scan_id")["y_pred"]
    mem = out["tuned"].set_index("scan_id")["y_pred"]
    assert np.allclose(mem.loc[tuned.index].to_numpy(), tuned.to_numpy(), rtol=0, atol=1e-9)
    cands = run.read_tuning_candidates()
    for f in tuning["folds"]:
        pick = cands[(cands["fold"] == f["fold"]) & (cands["model"] == f["chosen_label"])]
        got = preds[(preds["model"] == "ridge_scan_tuned") & (preds["fold"] == f["fold"])]
        assert np.mean(np.abs(got["y_pred"] - got["y_true"])) == np.mean(np.abs(pick["y_pred"] - pick["y_true"]))


def test_a_truly_better_candidate_is_chosen_by_most_folds():
    """Known answer: the ridge at alpha 10 reads the scan; at 1e6 it is shrunk to (nearly) the mean. Nested
    selection (in memory: the run's plans, fits and rule) picks alpha 10 in most of the 6 outer folds."""
    scans, volumes, _ = make_cohort("tiny", seed=0)
    out = nested_in_memory(scans[["scan_id", "subject", "iop", "icp"]], volumes, spec("ridge_scan: alpha=10,1e6"),
                           inner_folds=2, val_fraction=0)
    assert out["choices"].count("ridge_scan alpha=10") >= 5


def test_the_held_out_monkeys_never_reach_the_choice(tuned_run):
    """Fold 1's held-out monkeys get other labels and volumes: fold 1's inner scores stay bit-identical, while
    fold 2 (which trains on those monkeys) changes: the test sees a leak if selection ever read them."""
    run = RunDir(tuned_run / "run")
    held = run.held_out(0)

    def change(scans, volumes):
        mine = scans["subject"].astype(str).isin(held).to_numpy()
        scans.loc[mine, "icp"] = scans.loc[mine, "icp"] * 3 + 7
        volumes[mine] = volumes[mine][:, ::-1, ::-1, ::-1] * 0.5 + 40

    table = write_table(tuned_run / "changed", change)
    icpcv("run", "--manifest", table, "--out", tuned_run / "changed_run", *ARGS)
    a = json.loads(run.tuning_json.read_text())["folds"]
    b = json.loads(RunDir(tuned_run / "changed_run").tuning_json.read_text())["folds"]
    assert RunDir(tuned_run / "changed_run").held_out(0) == held
    assert a[0]["scores"] == b[0]["scores"] and a[0]["chosen"] == b[0]["chosen"]
    assert [s["inner_mae"] for s in a[1]["scores"]] != [s["inner_mae"] for s in b[1]["scores"]]


def test_resume_reruns_only_missing_tuning_units(tuned_run):
    """Two tuning units lose their records; the rerun (processes executor) trains only them, same predictions."""
    out = tuned_run / "resume"
    shutil.copytree(tuned_run / "run", out)
    run = RunDir(out)
    before = run.predictions_csv.read_bytes()
    for u in (Unit(1, 0, 0, 1), Unit(0, 0, 1)):
        run.unit(u).record_json.unlink()
    res = icpcv("run", "--manifest", tuned_run / "data" / "scans.csv", "--out", out, *ARGS[:-1],
                "--executor", "processes", "--workers", "2")
    assert "resuming: 12 of 14 units (fold, repeat, --tune candidate and inner fold) already complete" in res.stderr
    assert run.predictions_csv.read_bytes() == before
    assert not run.incomplete_units(run.read_record())


# ---------------------------------------------------------------------------------------------- statistics

def test_choice_stability_against_hand_counts():
    s = choice_stability(["b", "a", "b", "c", "b"])
    assert s["counts"] == {"b": 3, "a": 1, "c": 1} and s["modal_share"] == 0.6
    assert s["agreement"] == pytest.approx((3 * 2) / (5 * 4))  # only b's pairs agree: 6 of 20 ordered pairs


def test_equal_recipes_flatter_the_naive_pick_not_the_nested_one():
    """Known answer, both halves: four recipes equal in truth (the mean of a random half of the training monkeys,
    differing only in that draw's seed), on 30 tiny phantom cohorts. The best of them by its plain
    leave-one-monkey-out MAE is optimistic on average (nested MAE - best MAE more than 3 standard errors above
    zero), and the nested estimate is not: nested MAE - the candidates' average MAE is zero within 3 standard
    errors. Each cohort gets recipe seeds of its own (4i .. 4i+3), so the draws are random over cohorts as over
    data, and the expectation of the second difference is exactly zero (docs/tuning.md: why)."""
    cohorts = 30
    optimism, nested_minus_average = [], []
    for i in range(cohorts):
        grid = spec("mean: subsample=0.5; seed=" + ",".join(str(4 * i + s) for s in range(4)))
        scans, _, _ = make_cohort("tiny", seed=1 + i, shape=(2, 2, 4))  # the labels of the 12x12x32 cohort
        out = nested_in_memory(scans[["scan_id", "subject", "iop", "icp"]], None, grid, inner_folds=2)
        maes = np.array([np.mean(np.abs(g["y_pred"] - g["y_true"])) for _, g in out["candidates"].groupby("model")])
        t = out["tuned"]
        nested = np.mean(np.abs(t["y_pred"] - t["y_true"]))
        assert maes.min() < maes.mean()
        optimism.append(nested - maes.min())
        nested_minus_average.append(nested - maes.mean())

    def z(values):
        v = np.asarray(values)
        return v.mean() / (v.std(ddof=1) / np.sqrt(len(v)))

    assert z(optimism) > 3, optimism
    assert abs(z(nested_minus_average)) < 3, nested_minus_average


def test_compare_of_runs_of_one_model_points_to_tune(tuned_run, tmp_path):
    """Two runs of one model on the same monkeys: compare says that picking the best is recipe selection."""
    other = tmp_path / "again"
    shutil.copytree(tuned_run / "run", other)
    icpcv("compare", tuned_run / "run", other, "--models", "mean", "--out", tmp_path / "cmp", "--n-boot", "200")
    stats = json.loads((tmp_path / "cmp" / "stats.json").read_text())
    note = [w for w in stats["warnings"] if "recipe selection after seeing the held-out monkeys" in w]
    assert note and "--tune" in note[0]
    assert "recipe selection after seeing the held-out monkeys" in (tmp_path / "cmp" / "index.html").read_text()


def test_cost_counts_for_the_seed_preset():
    """bench memory / the GPU check: trainings --tune adds, by hand: 14 outer folds x 4 candidates x 13 inner
    folds, plus 4 outer fits per fold; one per fold for a plain run."""
    from icpcv.bench.gpu_check import _tune_estimate
    from icpcv.folds import nested_trainings

    n = nested_trainings(14, candidates=4)
    assert (n["inner"], n["outer_fits"], n["plain"]) == (14 * 4 * 13, 14 * 4, 14)
    assert nested_trainings(14, candidates=3, inner_folds=5)["inner"] == 14 * 3 * 5
    est = _tune_estimate({"steps": {"bench_train_seed": {"end_to_end_samples_per_s": 50.0}}})
    assert est["total"] == 784 and est["tune_upper_h"] == pytest.approx(56 * est["plain_upper_h"])
    assert est["per_training_upper_s"] == pytest.approx(200 * est["train_scans"] / 50.0)
