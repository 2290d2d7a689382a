"""End to end: a tiny synthetic cohort through the CLI, and the labels-only run on the real table."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from icpcv.commands import main
from icpcv.config import RunConfig
from rundir_support import make_config
from icpcv.run.fold import run_fold
from icpcv.run.pipeline import prepare
from icpcv.util import read_json


def _run(*args):
    return main(["run", *args, "--quiet"])


def test_tiny_synthetic_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = _run("--phantom", "tiny", "--epochs", "3", "--n-boot", "300", "--models", "mean,ols_iop,ridge_scan,cnn",
              "--out", str(out))
    assert rc == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    for name in ("config.json", "environment.json", "fold_plan.json", "leakage_audit.json", "data_quality.csv",
                 "predictions.csv", "stats.json", "index.html", "cohort/truth.json", "cohort/scans.csv"):
        assert (out / name).exists(), name
    scans = pd.read_csv(out / "cohort" / "scans.csv", dtype=str)
    preds = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "scan_id": str})
    assert list(preds.columns) == ["fold", "subject", "scan_id", "model", "y_true", "y_pred", "iop"]
    # every scan predicted exactly once per model, by the fold that held its subject out
    counts = preds.groupby(["model", "scan_id"]).size()
    assert (counts == 1).all() and len(counts) == 4 * len(scans)
    plan = read_json(out / "fold_plan.json")
    held = {f["index"]: set(f["held_out"]) for f in plan["folds"]}
    assert all(s in held[f] for f, s in zip(preds["fold"], preds["subject"]))
    assert read_json(out / "leakage_audit.json")["passed"]
    stats = read_json(out / "stats.json")
    assert set(stats["models"]) == {"mean", "ols_iop", "ridge_scan", "cnn"}
    # the MAE estimate is the pooled mean absolute error: recompute it from the predictions
    for m, g in preds.groupby("model"):
        assert stats["models"][m]["mae"]["estimate"] == pytest.approx(np.mean(np.abs(g.y_pred - g.y_true)))
    comps = {(c["model"], c["metric"]) for c in stats["comparisons"]}
    assert ("cnn", "mae") in comps and all(c["reference"] == "ols_iop" for c in stats["comparisons"])
    assert (out / "index.html").read_text().count("data:image/png;base64") >= 2
    curves = pd.read_csv(out / "folds" / "fold_00" / "learning_curve.csv")
    assert set(curves.columns) >= {"epoch", "train_loss", "val_loss", "best"} and curves["best"].sum() == 1


def test_held_out_volumes_do_not_touch_training(tmp_path):
    """Scrambling the held-out monkey's volumes leaves the fitted CNN bit-identical: its scans are
    not used for normalisation, early stopping or fitting."""
    cfg = make_config(phantom="tiny", epochs=2, models=("cnn",), n_boot=100)
    weights = []
    for variant in ("as is", "scrambled"):
        run_dir = tmp_path / variant.replace(" ", "_")
        prepare(cfg, run_dir)
        if variant == "scrambled":
            vols = np.load(run_dir / "cohort" / "volumes.npy")
            scans = pd.read_csv(run_dir / "cohort" / "scans.csv", dtype=str)
            held = read_json(run_dir / "fold_plan.json")["folds"][0]["held_out"]
            mask = scans["subject"].isin(held).to_numpy()
            vols[mask] = 255 - vols[mask]
            np.save(run_dir / "cohort" / "volumes.npy", vols)
        run_fold(run_dir, 0, device="cpu")
        weights.append(torch.load(run_dir / "folds" / "fold_00" / "cnn_weights.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_folds_option_on_real_table(tmp_path, monkey_table, capsys):
    rc = _run("--manifest", str(monkey_table), "--models", "mean", "--folds", "20", "--out", str(tmp_path / "x"))
    assert rc == 2
    assert "the table has 13 subjects" in capsys.readouterr().err


def test_labels_only_run_on_real_table(tmp_path, monkey_table):
    out = tmp_path / "real"
    rc = _run("--manifest", str(monkey_table), "--models", "mean,ols_iop", "--n-boot", "500", "--out", str(out))
    assert rc == 0
    rec = read_json(out / "run.json")
    assert rec["n_folds"] == 13
    quality = pd.read_csv(out / "data_quality.csv", dtype=str, keep_default_na=False)
    raw = pd.read_csv(monkey_table, dtype=str)
    assert len(quality) == len(raw) and (quality["status"] == "kept").sum() == 1243
    assert (quality.loc[quality["status"] == "dropped", "reason"] != "").all()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_subjects"] == 13 and stats["n_scans"] == 1243


def test_real_table_issue_command_verdict_says_what_the_numbers_say(tmp_path, monkey_table):
    """The issue's own command on the real label table; the verdict is checked against the numbers,
    recomputed here from predictions.csv (pooled MAE per model) and read from the comparisons."""
    out = tmp_path / "real4"
    rc = _run("--manifest", str(monkey_table), "--models", "mean,ols_iop,ols_iop2,mixedlm_iop", "--n-boot", "1000",
              "--out", str(out))
    assert rc == 0 and (out / "index.html").exists()
    stats = read_json(out / "stats.json")
    preds = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "scan_id": str})
    mae = {m: float(np.mean(np.abs(g.y_pred - g.y_true))) for m, g in preds.groupby("model")}
    assert set(mae) == {"mean", "ols_iop", "ols_iop2", "mixedlm_iop"}
    others = sorted((m for m in mae if m != "ols_iop"), key=mae.get)
    best = others[0]
    cmp = next(c for c in stats["comparisons"] if c["model"] == best and c["metric"] == "mae")
    assert cmp["delta"] == pytest.approx(mae[best] - mae["ols_iop"])
    evidence = cmp["ci"][1] < 0 and cmp["p_adjusted"] < 0.05
    verdict = stats["verdict"]
    if evidence:
        assert verdict.startswith(f"The {best} lowers MAE by")
    else:
        assert verdict.startswith("There is no evidence that any model beats ols_iop on MAE")
        worse = mae[best] >= mae["ols_iop"]
        assert ("every model's MAE is at or above ols_iop's" in verdict) == worse
        named = re.search(r"the (best|closest), (\w+), changes MAE by ([-+]?\d+\.\d+)", verdict)
        assert named and named.group(1) == ("closest" if worse else "best") and named.group(2) == best
        assert float(named.group(3)) == pytest.approx(cmp["delta"], abs=0.051)
    assert "13 monkeys" in verdict and f"{stats['ci_level']:.0%} CI" in verdict


def test_grouped_kfold_run_and_bad_manifest(tmp_path, monkey_table, capsys):
    rc = _run("--manifest", str(monkey_table), "--models", "mean,ols_iop", "--folds", "4", "--n-boot", "200",
              "--out", str(tmp_path / "k4"))
    assert rc == 0 and read_json(tmp_path / "k4" / "run.json")["n_folds"] == 4
    assert _run("--manifest", str(tmp_path / "nope.csv")) == 2
    assert "nope.csv: scan table not found" in capsys.readouterr().err


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "icpcv", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--signal" in proc.stdout and "--manifest" in proc.stdout
