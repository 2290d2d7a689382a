"""The Slurm head's bookkeeping without a cluster: squeue and scancel are stood in for.

Covers what the real-cluster tests cannot make happen quickly: a task the controller has
forgotten (past MinJobAge), the wait's deadline, an unreachable controller, adopting tasks of an
earlier head, and --fresh cancelling them.
"""
from __future__ import annotations

import pytest

import icpcv.run.slurm as slurm
from orch_support import config
from icpcv.errors import RunDirError
from icpcv.run.fold import run_fold
from icpcv.run.pipeline import prepare
from icpcv.progress import Progress
from rundir_support import fold_complete, read_run_record
from icpcv.util import atomic_write_json


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    prepare(config(models=("mean",)), out)
    return out


@pytest.fixture
def cancelled(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(slurm, "scancel", lambda ids: calls.append(list(ids)))
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    return calls


def _watch(*folds):
    return {k: dict(job_id=f"7_{k}", stderr=f"/logs/7_{k}_0_log.err") for k in folds}


def test_a_task_slurm_forgot_without_a_record_is_failed_and_done_folds_are_collected(run_dir, monkeypatch, tmp_path):
    run_fold(run_dir, 0, device="cpu")
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {})  # neither task is known any more
    log = tmp_path / "log.txt"
    failures = slurm._wait(run_dir, read_run_record(run_dir), _watch(0, 1), Progress("quiet", log_file=log),
                           poll=0.01, grace=0.0, deadline_s=60)
    assert [f["fold"] for f in failures] == [1]
    assert failures[0]["reason"].startswith("Slurm task 7_1 left the queue without completing the fold")
    assert failures[0]["log"] == "/logs/7_1_0_log.err"
    assert "fold 1/3 (held out 5, 6) done in" in log.read_text()


def test_the_wait_has_a_deadline_and_cancels_what_is_left(run_dir, monkeypatch, cancelled):
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {i: ("PENDING", "Priority") for i in ids})
    with pytest.raises(RunDirError, match="did not finish within the deadline .* cancelled 7_0, 7_1"):
        slurm._wait(run_dir, read_run_record(run_dir), _watch(0, 1), Progress("quiet"), poll=0.01, grace=0.0,
                    deadline_s=0.05)
    assert cancelled == [["7_0", "7_1"]]


def test_an_unreachable_controller_is_given_up_on_with_what_to_do(run_dir, monkeypatch, cancelled):
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: None)
    monkeypatch.setattr(slurm, "UNREACHABLE_S", 0.05)
    with pytest.raises(RunDirError, match="squeue has failed .* may still be running. Rerun the same command"):
        slurm._wait(run_dir, read_run_record(run_dir), _watch(0), Progress("quiet"), poll=0.01, grace=0.0,
                    deadline_s=60)
    assert cancelled == []  # nothing to ask Slurm with


def test_a_rerun_adopts_tasks_still_queued_or_running_instead_of_submitting_again(run_dir, monkeypatch, cancelled):
    atomic_write_json(run_dir / "slurm" / "jobs.json", {str(k): v for k, v in _watch(0, 1).items()})
    calls = []

    def squeue(ids):
        calls.append(sorted(ids))
        if len(calls) == 3:  # fold 1's task finishes while the new head watches it
            run_fold(run_dir, 1, device="cpu")
            return {}
        return {"7_1": ("RUNNING", "None"), "7_0": ("COMPLETED", "None")}

    monkeypatch.setattr(slurm, "squeue_states", squeue)
    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", lambda **k: pytest.fail("submitted a fold again"))
    run_fold(run_dir, 0, device="cpu")
    progress = Progress("quiet", log_file=run_dir.parent / "log.txt")
    failures = slurm.run_slurm(run_dir, [1], options=dict(poll=0.01, grace=0.0), progress=progress)
    assert failures == [] and fold_complete(run_dir, 1, read_run_record(run_dir).key)
    assert "watching them instead of submitting again: fold 2 = 7_1" in (run_dir.parent / "log.txt").read_text()


def test_fresh_cancels_the_tasks_an_earlier_run_left_and_waits_for_them(run_dir, monkeypatch, cancelled):
    atomic_write_json(run_dir / "slurm" / "jobs.json", {str(k): v for k, v in _watch(0, 1).items()})
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: (
        {"7_0": ("RUNNING", "None"), "7_1": ("COMPLETED", "None")} if not cancelled else
        {"7_0": ("CANCELLED", "None")}))
    prepare(config(models=("mean",)), run_dir, fresh=True)
    assert cancelled == [["7_0"]]
    assert not (run_dir / "slurm").exists()


def test_time_limits_too_short_for_submitit_are_refused(run_dir, cancelled):
    from icpcv.errors import InputError

    with pytest.raises(InputError, match="--time 2: give each fold task at least 3 minutes"):
        slurm.run_slurm(run_dir, [0], options=dict(time=2), progress=Progress("quiet"))
