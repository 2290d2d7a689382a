"""``icpcv run --repeats R``: each (fold, repeat) is a unit of work; the seed ensemble is analysed.

Issue 10: every repeat's predictions are kept, the ensemble and ``training_variance`` are written
with the report's section; a kill during a repeat resumes to the predictions of an uninterrupted
run; the processes executor gives the local numbers (the Slurm one: tests/test_slurm.py).
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from orch_support import (REPO, assert_same_predictions, assert_same_repeats, cli_args, cli_command, config,
                          repeats_predictions, repeats_reference as reference, run_cli, subprocess_env, wait_for)
from icpcv.rundir import RunDir, Unit
from icpcv.run.executors import execute
from icpcv.run.fold import training_seed
from icpcv.run.pipeline import prepare
from icpcv.util import read_json


def test_run_with_repeats_writes_every_repeat_the_ensemble_training_variance_and_the_report(tmp_path):
    out = tmp_path / "run"
    cfg = config(repeats=3)
    r = run_cli(*cli_args(cfg), "--repeats", "3", "--threads", "1", "--device", "cpu", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    run = RunDir(out)
    rec = run.read_record()
    assert rec.config.repeats == 3
    # each (fold, repeat) its own unit: repeat 0 in the fold's folder, repeats 1-2 beside it, seeds all different
    seeds = set()
    for k in range(rec.n_folds):
        for rep in range(3):
            unit = run.unit(Unit(k, rep))
            assert unit.path == out / "folds" / f"fold_{k:02d}" / ("" if rep == 0 else f"repeat_{rep:02d}")
            record = read_json(unit.record_json)
            assert record["status"] == "complete" and record["repeat"] == rep and record["n_repeats"] == 3
            assert record["training_seed"] == training_seed(cfg.seed, k, rep)
            seeds.add(record["training_seed"])
            # the baselines are deterministic: trained in repeat 0 only
            assert list(record["models"]) == (["mean", "ols_iop", "cnn"] if rep == 0 else ["cnn"])
    assert len(seeds) == 3 * rec.n_folds

    preds = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "scan_id": str})
    assert list(preds.columns) == ["fold", "subject", "scan_id", "model", "y_true", "y_pred", "iop", "repeat"]
    cnn = preds[preds["model"] == "cnn"]
    assert sorted(cnn["repeat"].unique()) == [0, 1, 2]
    assert cnn.groupby("scan_id")["repeat"].nunique().eq(3).all()
    assert preds.loc[preds["model"] != "cnn", "repeat"].isna().all()
    n_scans = preds["scan_id"].nunique()
    assert len(preds) == 2 * n_scans + 3 * n_scans
    # the repeats differ (other seeds), not copies of one network
    wide = cnn.pivot(index="scan_id", columns="repeat", values="y_pred")
    assert (wide[0] != wide[1]).any() and (wide[1] != wide[2]).any()

    # the ensemble: per scan the mean of the repeats, and what the statistics are made on
    ens = pd.read_csv(out / "predictions_ensemble.csv", dtype={"subject": str, "scan_id": str})
    assert "repeat" not in ens.columns and len(ens) == 3 * n_scans
    e = ens[ens["model"] == "cnn"].set_index("scan_id")["y_pred"]
    np.testing.assert_allclose(e.loc[wide.index].to_numpy(), wide.mean(axis=1).to_numpy(), rtol=0, atol=1e-12)
    stats = read_json(out / "stats.json")
    truth = cnn.groupby("scan_id")["y_true"].first()
    mae_from_repeats = float(np.mean(np.abs(wide.mean(axis=1) - truth.loc[wide.index])))
    assert stats["models"]["cnn"]["mae"]["estimate"] == pytest_approx(mae_from_repeats)
    assert stats["n_rows"] == 3 * n_scans  # the ensemble's rows, one per (model, scan)

    tv = stats["training_variance"]
    assert tv["measured"] and tv["n_repeats"] == 3 and tv["repeats"] == [0, 1, 2]
    assert tv["repeated_models"] == ["cnn"] and tv["deterministic_models"] == ["mean", "ols_iop"]
    per = tv["models"]["cnn"]["per_repeat"]
    assert [c["repeat"] for c in per] == [0, 1, 2]
    deltas = [c["delta"] for c in per]
    assert tv["models"]["cnn"]["delta_mean"] == pytest_approx(float(np.mean(deltas)))
    # 6 monkeys and 4 comparisons: no single seed can be called better, and the suffix says so (issue 22)
    assert tv["agreement_guaranteed"] and tv["n_agree"] == 3
    assert f"{tv['verdict_suffix']}." in stats["verdict"] and "as they must" in tv["verdict_suffix"]

    html = (out / "index.html").read_text()
    assert 'id="repeats"' in html and "Training randomness" in html
    assert "repeat 2 alone" in html and "seed ensemble" in html
    assert (out / "figures" / "repeat_differences.png").exists() and (out / "figures" / "repeat_folds_cnn.png").exists()


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-12, abs=1e-12)


def test_a_run_trained_once_says_training_randomness_was_not_measured(tmp_path):
    out = tmp_path / "run"
    r = run_cli(*cli_args(config()), "--threads", "1", "--device", "cpu", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "repeat" not in pd.read_csv(out / "predictions.csv").columns
    assert not (out / "predictions_ensemble.csv").exists()
    assert "training_variance" not in read_json(out / "stats.json")
    html = (out / "index.html").read_text()
    assert "Training randomness</b> was not measured" in html
    assert "Each network (cnn) was trained once per fold (--repeats 1)" in html
    # issue 22: what a single seed's interval cannot show, and the way to measure it
    assert "a single seed&#39;s 95% interval covers less than 95%: about 91% against 94%" in html
    assert "Rerun with --repeats 5" in html


def test_runs_without_networks_have_no_training_randomness_section_and_ignore_repeats(tmp_path):
    out = tmp_path / "run"
    r = run_cli("--phantom", "tiny", "--models", "mean,ols_iop", "--folds", "3", "--n-boot", "200", "--repeats", "4",
                "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "--repeats 4 ignored: no model in --models (mean,ols_iop) depends on training randomness" in r.stderr
    assert RunDir(out).read_record().config.repeats == 1
    assert 'id="repeats"' not in (out / "index.html").read_text()


def test_repeats_option_is_checked():
    r = run_cli("--phantom", "tiny", "--repeats", "0", "--out", "/tmp/never-written")
    assert r.returncode == 2 and "--repeats 0: accepted 1 to 1000" in r.stderr
    assert not Path("/tmp/never-written").exists()


def test_sigkill_during_a_repeat_keeps_the_finished_repeats_and_resumes_to_the_uninterrupted_predictions(tmp_path):
    cfg = config("long", repeats=3)
    out = tmp_path / "run"
    log = tmp_path / "progress.log"
    cmd = cli_command(*cli_args(cfg), "--repeats", "3", "--threads", "1", "--device", "cpu", "--out", str(out),
                      "--log-file", str(log))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=REPO)
    run = RunDir(out)
    done1, ckpt2 = run.unit(Unit(0, 1)).record_json, run.unit(Unit(0, 2)).checkpoint("cnn")
    try:
        wait_for(lambda: proc.poll() is not None or (done1.exists() and ckpt2.exists()), timeout=180,
                 what="fold 1 repeat 2 complete and repeat 3's first epoch checkpoint")
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    key = run.read_record().key
    assert run.unit_complete(Unit(0, 0), key) and run.unit_complete(Unit(0, 1), key)
    assert not run.unit_complete(Unit(0, 2), key) and not run.unit_complete(Unit(1, 0), key)
    kept = {u: run.unit(u).predictions_csv.read_bytes() for u in (Unit(0, 0), Unit(0, 1))}

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=subprocess_env(), cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert {u: run.unit(u).predictions_csv.read_bytes() for u in kept} == kept  # not retrained
    text = log.read_text()
    assert "resuming: 2 of 9 units (fold, repeat) already complete (fold 1 repeat 1/3, fold 1 repeat 2/3)" in text
    assert "fold 1/3 repeat 3/3: will resume cnn from its epoch" in text
    assert "cnn: resuming from the epoch checkpoint" in run.unit(Unit(0, 2)).log.read_text()
    assert_same_repeats(repeats_predictions(out), reference("long", 3))


def test_processes_executor_gives_the_local_numbers_with_repeats(tmp_path):
    out = tmp_path / "run"
    rec = prepare(config(repeats=2), out)
    units = RunDir.units(rec)
    assert units == [Unit(k, r) for k in range(3) for r in range(2)]
    execute(out, units, executor="processes", workers=2, device="cpu", threads=1)
    assert_same_repeats(repeats_predictions(out), reference("quick", 2))


def test_repeat_zero_is_the_run_trained_once():
    """Repeat 0 keeps the seed of a run without repeats, so --repeats only adds networks."""
    with_repeats = reference("quick", 2)
    once = _once()
    first = with_repeats[(with_repeats["repeat"].isna()) | (with_repeats["repeat"] == 0)].drop(columns="repeat")
    assert_same_predictions(first.reset_index(drop=True), once)


@functools.cache
def _once() -> pd.DataFrame:
    from orch_support import reference as plain_reference

    return plain_reference("quick")


def test_bench_repeats_prints_the_cost_against_training_once_and_the_readme_row(tmp_path_factory, capsys):
    from icpcv.commands import main
    from test_report_support import shared_run

    run = shared_run("tiny_repeats", tmp_path_factory.getbasetemp() / "report_runs")
    assert main(["bench", "repeats", str(run), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    rec = RunDir(run).read_record()
    once = sum(read_json(RunDir(run).unit(u).record_json)["seconds"] for u in RunDir.units(rec) if u.repeat == 0)
    assert f"training: repeat 0 alone (= --repeats 1) {once:.0f} s" in out
    assert "cost of --repeats 3 against --repeats 1: x" in out
    assert "cnn - ols_iop: per repeat " in out and "called better alone" in out and "verdict: " in out


def test_compare_takes_a_run_with_repeats_by_its_seed_ensemble(tmp_path_factory, tmp_path):
    from icpcv.report.compare import compare_runs
    from rundir_support import make_config
    from test_report_support import make_run, shared_run

    with_repeats = shared_run("tiny_repeats", tmp_path_factory.getbasetemp() / "report_runs")
    once = make_run(make_config(phantom="tiny", epochs=1, n_boot=200, models=("ols_iop", "cnn"), folds=3),
                    tmp_path / "once", report=False)
    compare_runs([with_repeats, once], tmp_path / "cmp", names=["r3", "once"], models=["cnn"], n_boot=200)
    stacked = pd.read_csv(tmp_path / "cmp" / "predictions.csv", dtype={"scan_id": str, "subject": str})
    assert "repeat" not in stacked.columns
    ens = pd.read_csv(with_repeats / "predictions_ensemble.csv", dtype={"scan_id": str, "subject": str})
    mine = stacked[stacked["model"] == "r3:cnn"].set_index("scan_id")["y_pred"]
    want = ens[ens["model"] == "cnn"].set_index("scan_id")["y_pred"]
    np.testing.assert_allclose(mine.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-12)
    assert read_json(tmp_path / "cmp" / "stats.json")["n_rows"] == 2 * len(want)
