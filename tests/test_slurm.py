"""The Slurm executor on a real one-node Slurm (no accounting: sacct does not work, on purpose).

The session fixture starts the cluster with ``../shared/tools/slurm-local.sh`` (as root; it
installs slurm-wlm, slurm-client and munge with apt where they are missing) and stops it again
at the end if it started it; without the script, or without root, these tests are skipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from orch_support import (REPO, assert_same_predictions, assert_same_repeats, config, predictions, reference,
                          repeats_predictions, repeats_reference, wait_for)
from icpcv.errors import FoldsFailed
from icpcv.run.executors import execute
from icpcv.run.pipeline import prepare
from icpcv.progress import Progress
from icpcv.rundir import RunDir, Unit
from rundir_support import fold_complete, fold_dir
from icpcv.run.slurm import squeue_states
from icpcv.util import read_json

pytestmark = pytest.mark.slurm

TOOLS = REPO.parent / "shared" / "tools"
START, STOP = TOOLS / "slurm-local.sh", TOOLS / "slurm-local-stop.sh"
#: small tasks: 1 CPU each (two at once on a 2-core node), 1 GB, a 10-minute limit
OPTIONS = dict(cpus=1, mem=1, time=10, max_parallel=3, poll=0.5, grace=3, deadline=8)


def _cluster_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and any(s.strip("*~#") in ("idle", "mixed", "allocated") for s in r.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster():
    if not START.exists():
        pytest.skip(f"no one-node Slurm to test against: {START} not found")
    started = False
    if not _cluster_idle():
        if os.geteuid() != 0:
            pytest.skip(f"starting the one-node Slurm ({START}) needs root")
        r = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"{START} failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")
        started = True
    yield
    if started and STOP.exists():
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=300)


def _head(out: Path, log: Path, result: dict, **options):
    """The head (submit + wait) in a thread, so the test can act on the tasks meanwhile."""
    def target():
        progress = Progress("quiet", log_file=log)
        try:
            execute(out, [0, 1, 2], executor="slurm", device="cpu", threads=1, progress=progress,
                    slurm=OPTIONS | options)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        finally:
            progress.close()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th


def _task(out: Path, k: int) -> str:
    return wait_for(lambda: (out / "slurm" / "jobs.json").exists() and read_json(out / "slurm" / "jobs.json")[str(k)]
                    ["job_id"], 60, "the submission")


def _state(task: str) -> str:
    return ((squeue_states([task]) or {}).get(task) or ("",))[0]


def test_slurm_gives_the_local_predictions_and_a_requeued_fold_resumes(tmp_path, slurm_cluster):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    prepare(config("long"), out)
    result: dict = {}
    th = _head(out, log, result)
    task = _task(out, 0)
    wait_for((fold_dir(out, 0) / "cnn_checkpoint.pt").exists, 120, "fold 1's first epoch checkpoint")
    # what Slurm does before a time limit or a preemption (submitit asks for --signal=USR2@90)
    subprocess.run(["scancel", "--signal=USR2", task], check=True, timeout=60)
    wait_for(lambda: _state(task) == "PENDING", 60, f"task {task} requeued")
    # a requeued task is held for ~2 minutes (BeginTime); let it start now
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True, timeout=60)
    th.join(timeout=240)
    assert not th.is_alive(), "the head is still waiting"
    assert "error" not in result, result.get("error")
    assert_same_predictions(predictions(out), reference("long"))
    fold_log = (fold_dir(out, 0) / "fold.log").read_text()
    assert "signalled (preemption or time limit): requeueing" in fold_log
    assert "cnn: resuming from the epoch checkpoint" in fold_log, fold_log
    rec = read_json(fold_dir(out, 0) / "record.json")
    assert rec["slurm_job_id"] and rec["torch_threads"] == 1
    text = log.read_text()
    assert "slurm: submitted 3 fold task(s) as array job" in text and "slurm: 0 pending, 0 running, 3 done, 0 failed" in text
    jobs = read_json(out / "slurm" / "jobs.json")
    assert all(Path(j["stderr"]).exists() for j in jobs.values())


def test_failed_tasks_are_reported_by_fold_and_log_path_and_completed_folds_are_kept(tmp_path, slurm_cluster):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    rec = prepare(config(), out)
    bad = fold_dir(out, 1) / "cnn_checkpoint.pt"  # fold 2 raises in Python
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    result: dict = {}
    th = _head(out, log, result)
    task = _task(out, 2)
    wait_for(lambda: _state(task) == "RUNNING", 120, f"task {task} running")
    subprocess.run(["scancel", task], check=True, timeout=60)  # fold 3: killed outside Python
    th.join(timeout=240)
    assert not th.is_alive(), "the head is still waiting"
    err = result.get("error")
    assert isinstance(err, FoldsFailed), err
    jobs = read_json(out / "slurm" / "jobs.json")
    msg = str(err)
    assert "2 of 3 folds failed (1 complete folds are kept and will not be rerun)" in msg
    assert f"fold 2/3 (held out 1, 2): RunDirError: {bad}: corrupt epoch checkpoint" in msg
    assert f"log: {jobs['1']['stderr']}" in msg and "corrupt epoch checkpoint" in Path(jobs["1"]["stderr"]).read_text()
    assert f"fold 3/3 (held out 3, 4): Slurm task {task} " in msg and f"log: {jobs['2']['stderr']}" in msg
    assert "CANCELLED" in msg or "left the queue" in msg
    assert {f["fold"] for f in err.failures} == {1, 2}
    assert fold_complete(out, 0, rec.key)
    assert "FAILED" in log.read_text()
    # the completed fold is reused by a rerun
    rec0 = (fold_dir(out, 0) / "record.json").read_bytes()
    bad.unlink()
    execute(out, [1, 2], executor="local", device="cpu", threads=1)
    assert (fold_dir(out, 0) / "record.json").read_bytes() == rec0
    assert_same_predictions(predictions(out), reference())


def test_slurm_runs_each_fold_and_repeat_as_its_own_task_with_the_local_numbers(tmp_path, slurm_cluster):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    rec = prepare(config(repeats=2), out)
    progress = Progress("quiet", log_file=log)
    try:
        execute(out, RunDir.units(rec), executor="slurm", device="cpu", threads=1, progress=progress,
                slurm=OPTIONS | dict(max_parallel=2))
    finally:
        progress.close()
    assert_same_repeats(repeats_predictions(out), repeats_reference("quick", 2))
    jobs = read_json(out / "slurm" / "jobs.json")
    assert sorted(jobs) == ["0", "0.1", "1", "1.1", "2", "2.1"]  # one task per (fold, repeat)
    assert len({j["job_id"] for j in jobs.values()}) == 6
    assert read_json(RunDir(out).unit(Unit(2, 1)).record_json)["slurm_job_id"]
    assert "slurm: submitted 6 (fold, repeat) task(s) as array job" in log.read_text()


def test_slurm_runs_every_tuning_unit_as_its_own_task_with_the_local_numbers(tmp_path, slurm_cluster):
    """Issue 21: with --tune every (outer fold, candidate, inner fold) training and every outer fit is an array
    task; the tuning units' predictions equal a local run's bit for bit."""
    from icpcv.tune.spec import parse_spec
    from icpcv.models import CNNS, known_models

    spec = parse_spec("mean: subsample=0.5; seed=0,1", is_network=lambda m: m in CNNS, known_models=known_models())
    cfg = config(models=("mean",), folds=2, tune=spec.to_dict(), inner_folds=2, val_fraction=0.0)
    runs = {}
    for how in ("local", "slurm"):
        out, log = tmp_path / how, tmp_path / f"{how}.txt"
        rec = prepare(cfg, out)
        progress = Progress("quiet", log_file=log)
        try:
            execute(out, RunDir.units(rec), executor=how, device="cpu", threads=1, progress=progress,
                    slurm=OPTIONS | dict(max_parallel=2))
        finally:
            progress.close()
        runs[how] = (RunDir(out), rec)
    run, rec = runs["slurm"]
    tuning = run.tuning_units(rec)
    assert len(tuning) == 2 * 2 * 2 + 2 * 2
    jobs = read_json(run.slurm_jobs_json)
    assert sorted(jobs) == sorted(u.key for u in RunDir.units(rec)) and "1.c1.i0" in jobs
    assert len({j["job_id"] for j in jobs.values()}) == len(jobs)
    local = runs["local"][0]
    for u in tuning:
        assert run.unit(u).predictions_csv.read_bytes() == local.unit(u).predictions_csv.read_bytes()
        assert read_json(run.unit(u).record_json)["slurm_job_id"]
