"""Resume after a crash: complete folds are kept, an interrupted fold goes on from its last epoch.

The run directory is the source of truth; the same command after ``kill -9`` must end with the
predictions of an uninterrupted run, bit for bit (same machine, one torch thread per fold).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from orch_support import (REPO, assert_same_predictions, cli_args, cli_command, config, predictions, reference,
                          run_cli, subprocess_env, wait_for)
from icpcv.errors import RunDirError
from icpcv.run.pipeline import prepare
from rundir_support import fold_complete, fold_dir, read_run_record
from icpcv.util import read_json


def test_sigkill_in_the_middle_of_a_fold_then_the_same_command_resumes(tmp_path):
    cfg = config("long")
    out = tmp_path / "run"
    log = tmp_path / "progress.log"
    cmd = cli_command(*cli_args(cfg), "--threads", "1", "--device", "cpu", "--out", str(out), "--log-file", str(log))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=REPO)
    ckpt = fold_dir(out, 1) / "cnn_checkpoint.pt"
    try:
        wait_for(lambda: proc.poll() is not None or (ckpt.exists() and (fold_dir(out, 0) / "record.json").exists()),
                 timeout=120, what="fold 1 complete and fold 2's first epoch checkpoint")
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    key = read_run_record(out).key
    assert fold_complete(out, 0, key) and not fold_complete(out, 1, key) and not fold_complete(out, 2, key)
    assert not (fold_dir(out, 1) / "record.json").exists() and ckpt.exists()
    rec0 = fold_dir(out, 0) / "record.json"
    before = (rec0.read_bytes(), rec0.stat().st_mtime_ns, (fold_dir(out, 0) / "predictions.csv").read_bytes())
    killed_at = read_json(out / "folds" / "fold_01" / "status.json")["text"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert f"report: {out / 'index.html'}" in again.stdout and (out / "stats.json").exists()
    # the finished fold was not retrained
    assert (rec0.read_bytes(), rec0.stat().st_mtime_ns, (fold_dir(out, 0) / "predictions.csv").read_bytes()) == before
    text = log.read_text()
    assert "resuming: 1 of 3 folds already complete (1)" in text
    assert "fold 2/3: will resume cnn from its epoch" in text
    fold_log = (fold_dir(out, 1) / "fold.log").read_text()
    assert "cnn: resuming from the epoch checkpoint" in fold_log, fold_log
    assert fold_log.count("starting on") == 2 and (fold_dir(out, 0) / "fold.log").read_text().count("starting on") == 1
    assert not ckpt.exists()  # a complete fold keeps no checkpoint
    # ... and the predictions are those of an uninterrupted run
    assert_same_predictions(predictions(out), reference("long"))
    curve = pd.read_csv(fold_dir(out, 1) / "learning_curve.csv")
    assert curve["epoch"].tolist() == list(range(cfg.train.epochs + 1)), killed_at


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom icpcv.rundir import RunLock\n"
         f"with RunLock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_cli(*cli_args(config()), "--out", str(out), "--quiet")
        assert second.returncode == 2
        assert f"another icpcv run (pid {holder.pid} on" in second.stderr
        assert "wait for it to finish or choose another --out" in second.stderr
        assert not (out / "run.json").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_changed_config_is_refused_with_what_changed_and_fresh_starts_over(tmp_path):
    out = tmp_path / "run"
    prepare(config(), out)
    (fold_dir(out, 0)).mkdir(parents=True)
    (fold_dir(out, 0) / "cnn_checkpoint.pt").write_bytes(b"old")
    with pytest.raises(RunDirError) as err:
        prepare(config(epochs=4, lr=0.01), out)
    msg = str(err.value)
    assert "epochs: 3 -> 4" in msg and "lr: 0.003 -> 0.01" in msg and "--fresh" in msg
    assert read_run_record(out).config.train.epochs == 3  # untouched
    rec = prepare(config(epochs=4, lr=0.01), out, fresh=True)
    assert rec.config.train.epochs == 4 and not (out / "folds").exists()
    # execution settings are not part of the run: the same config re-opens the run
    assert prepare(config(epochs=4, lr=0.01), out).key == rec.key
    assert len(read_run_record(out).sessions) == 2


def test_a_fold_is_complete_only_when_its_record_and_unchanged_predictions_say_so(tmp_path):
    from icpcv.run.fold import run_fold

    out = tmp_path / "run"
    key = prepare(config(models=("mean",)), out).key
    fd = fold_dir(out, 0)
    fd.mkdir(parents=True)
    (fd / "predictions.csv").write_text("fold,subject\n")
    assert not fold_complete(out, 0, key)  # predictions without a record
    run_fold(out, 0, device="cpu")
    assert fold_complete(out, 0, key)
    rec = read_json(fd / "record.json")
    assert rec["status"] == "complete" and set(rec["metrics"]["mean"]) == {"mae", "rmse", "n"}
    with open(fd / "predictions.csv", "a") as fh:  # predictions changed behind the record's back
        fh.write("0,1,s1,mean,1,1,1\n")
    assert not fold_complete(out, 0, key)
    (fd / "record.json").write_text(json.dumps(rec | {"key": "other"}))
    assert not fold_complete(out, 0, key)
    (fd / "record.json").write_text('{"status": "comp')  # torn JSON never counts
    assert not fold_complete(out, 0, key)
