"""Executors: processes side by side give the local predictions; failures are collected; progress."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from orch_support import REPO, assert_same_predictions, config, predictions, reference, subprocess_env
from icpcv.errors import FoldsFailed, InputError
from icpcv.run.executors import execute
from icpcv.run.pipeline import prepare
from icpcv.progress import Progress
from rundir_support import fold_complete, fold_dir, read_fold_error
from icpcv.util import read_json


def test_processes_run_folds_side_by_side_with_the_local_predictions(tmp_path):
    out = tmp_path / "run"
    rec = prepare(config(), out)
    log = tmp_path / "log.txt"
    progress = Progress("quiet", log_file=log)
    execute(out, [0, 1, 2], executor="processes", workers=2, device="cpu", threads=1, progress=progress)
    progress.close()
    assert_same_predictions(predictions(out), reference())
    records = [read_json(fold_dir(out, k) / "record.json") for k in range(rec.n_folds)]
    assert len({r["pid"] for r in records}) == 2  # two worker processes shared the folds
    assert all(r["torch_threads"] == 1 for r in records)
    text = log.read_text()
    assert "processes: 3 fold(s) on 2 worker(s), 1 torch thread(s) each" in text
    assert text.count(" done in ") == 3


def test_processes_default_threads_are_cores_over_workers(tmp_path):
    import os

    out = tmp_path / "run"
    prepare(config(models=("mean",)), out)
    execute(out, [0, 1], executor="processes", workers=2, device="cpu")
    cores = len(os.sched_getaffinity(0))
    assert {read_json(fold_dir(out, k) / "record.json")["torch_threads"] for k in (0, 1)} == {max(1, cores // 2)}


def test_a_failing_fold_does_not_stop_the_others_and_is_reported_with_its_log(tmp_path):
    out = tmp_path / "run"
    rec = prepare(config(), out)
    bad = fold_dir(out, 1) / "cnn_checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(FoldsFailed) as err:
        execute(out, [0, 1, 2], executor="processes", workers=2, device="cpu", threads=1)
    msg = str(err.value)
    assert "1 of 3 folds failed (2 complete folds are kept and will not be rerun)" in msg
    assert f"fold 2/3 (held out 1, 2): RunDirError: {bad}: corrupt epoch checkpoint" in msg
    assert f"log: {fold_dir(out, 1) / 'fold.log'}" in msg and "rerun the same command" in msg
    assert [f["fold"] for f in err.value.failures] == [1]
    assert fold_complete(out, 0, rec.key) and fold_complete(out, 2, rec.key)
    assert read_fold_error(out, 1)["type"] == "RunDirError"
    assert "corrupt epoch checkpoint" in (fold_dir(out, 1) / "fold.log").read_text()
    bad.unlink()  # what the message says to do
    execute(out, [1], executor="local", device="cpu", threads=1)
    assert read_fold_error(out, 1) is None
    assert_same_predictions(predictions(out), reference())


def test_gpu_slots_pin_one_gpu_per_worker_process(tmp_path):
    """Without GPUs here: worker processes claim distinct slots and export CUDA_VISIBLE_DEVICES."""
    code = ("import os, sys, time\nfrom icpcv.run.executors import _pin_gpu\n"
            f"print(_pin_gpu(['3', '5'], {str(tmp_path)!r}), os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
            "print(_pin_gpu(['3', '5'], 'elsewhere'), flush=True)\n"  # a worker keeps its GPU for life
            "time.sleep(30)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(), cwd=REPO) for _ in range(2)]
    try:
        got = [(p.stdout.readline().split(), p.stdout.readline().strip()) for p in procs]
        assert sorted(g[0][0] for g in got) == ["3", "5"]
        assert all(g[0][0] == g[0][1] == g[1] for g in got)
        third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                               cwd=REPO, timeout=60)
        assert third.returncode != 0 and "no free GPU among ['3', '5']" in third.stderr
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_progress_bar_shows_folds_epochs_and_loss_and_quiet_mode_writes_only_the_log(tmp_path):
    out = tmp_path / "run"
    prepare(config(), out)
    buf = io.StringIO()
    execute(out, [0], executor="local", device="cpu", threads=1, progress=Progress("bar", stream=buf))
    text = buf.getvalue()
    assert "\r" in text and "] 2/3 folds | fold 1/3 (held out 5, 6) cnn epoch 3/3 train " in text
    assert " val " in text and "(best " in text
    assert "fold 1/3 (held out 5, 6) done in" in text
    quiet, log = io.StringIO(), tmp_path / "log.txt"
    p = Progress("quiet", log_file=log, stream=quiet)
    execute(out, [1], executor="local", device="cpu", threads=1, progress=p)
    p.close()
    assert quiet.getvalue() == "" and "fold 2/3 (held out 1, 2) done in" in log.read_text()
    # the fold keeps its own log and last status whatever the executor
    assert "done in" in (fold_dir(out, 1) / "fold.log").read_text()
    assert "done in" in read_json(fold_dir(out, 1) / "status.json")["text"]


def test_bad_executor_options(tmp_path):
    out = tmp_path / "run"
    prepare(config(models=("mean",)), out)
    with pytest.raises(InputError, match="unknown --executor 'dask'"):
        execute(out, [0], executor="dask")
    with pytest.raises(InputError, match="--workers must be at least 1"):
        execute(out, [0], executor="processes", workers=0)
    with pytest.raises(InputError, match="--threads must be at least 1"):
        execute(out, [0], threads=0)
