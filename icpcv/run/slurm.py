"""The Slurm executor: one unit (fold, repeat) per job-array task through submitit; the run directory is the truth.

The head submits one array (``--max-parallel`` tasks at once), records the unit -> task map in
``slurm/jobs.json`` and then polls, with a deadline, two things only: the run directory (a fold
is done when its record says complete) and ``squeue`` (is the task still pending or running?).
It never waits on submitit's result pickles, so a task that Slurm kills outside Python
(``scancel``, out of memory, node failure) is seen as failed even without accounting
(``sacct``/slurmdbd): it left the queue, or ended, without a complete record.

Preemption and time limits: submitit's ``--signal=USR2@90`` makes the task call
:meth:`FoldJob.checkpoint`, which requeues the same fold; the requeued task resumes the fold from
its last epoch checkpoint in the run directory (submitit allows 3 requeues on time-outs by
default; preemptions are not counted).

Rerunning the command while tasks of an earlier submission are still queued or running adopts
them instead of submitting the folds twice; ``--fresh`` cancels them first.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import icpcv
from icpcv.errors import InputError, RunDirError
from icpcv.progress import FoldReporter
from icpcv.run.fold import fold_summary, run_job
from icpcv.rundir import RunDir, RunRecord, Unit

try:  # submitit is a dependency, but keep `--fresh` and the other executors working without it
    import submitit
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # pragma: no cover
    submitit, Checkpointable, DelayedSubmission = None, object, None

RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "RESV_DEL_HOLD",
           "STOPPED"}
ACTIVE = RUNNING | PENDING

#: how long a task may be gone from the queue (or ended) before a missing record means failure:
#: covers a shared file system showing the record late
DEFAULT_GRACE_S = 30.0
#: how long squeue may fail in a row before the head gives up
UNREACHABLE_S = 600.0
#: time-out requeues submitit allows a task (its default)
MAX_TIMEOUTS = 3


class FoldJob(Checkpointable):
    """One unit (a fold, a training repeat) as a submitit job; picklable (paths and settings only)."""

    def __init__(self, run_dir: str, device: str = "auto", threads: int | None = None):
        self.run_dir, self.device, self.threads = str(run_dir), device, threads

    def __call__(self, unit) -> dict:
        unit = Unit.of(unit)
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or None
        rec = run_job(self.run_dir, unit.fold, repeat=unit.repeat, device=self.device, threads=threads, echo=True,
                      candidate=unit.candidate, inner=unit.inner)  # issue 21: a --tune unit
        return dict(fold=unit.fold, repeat=unit.repeat, status=rec["status"])  # the head reads the run directory

    def checkpoint(self, unit):
        """Preempted or about to time out: requeue the same unit; it resumes from its epoch checkpoint."""
        unit = Unit.of(unit)
        FoldReporter(RunDir(self.run_dir).unit(unit)).message(
            f"{unit.label()}: Slurm task "
            f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')} signalled "
            "(preemption or time limit): requeueing; it resumes from its last epoch checkpoint")
        return DelayedSubmission(FoldJob(self.run_dir, self.device, self.threads), unit)


# ---- Slurm queries ----------------------------------------------------------------------------

def squeue_states(task_ids) -> dict[str, tuple[str, str]] | None:
    """``{"12_3": (state, reason)}`` for the tasks Slurm still knows; None if squeue cannot be asked.

    ``-t all`` includes ended tasks while the controller keeps their records (MinJobAge); an
    array the controller has forgotten is simply absent.
    """
    out: dict[str, tuple[str, str]] = {}
    for array in sorted({str(t).split("_")[0] for t in task_ids}):
        try:
            r = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%i|%T|%r"],
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0:
            if "invalid job id" in r.stderr.lower():
                continue
            return None
        for line in r.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[1]:
                out[parts[0]] = (parts[1].split()[0], parts[2] if len(parts) > 2 else "")
    return out


def scancel(task_ids) -> None:
    if task_ids:
        try:
            subprocess.run(["scancel", *task_ids], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass


def cancel_recorded(run_dir: Path, progress=None, wait_s: float = 60.0) -> list[str]:
    """Cancel this run's Slurm tasks still queued or running (for --fresh); wait until they are gone."""
    jobs = RunDir(run_dir).read_slurm_jobs()
    if not jobs or shutil.which("squeue") is None:
        return []
    ids = [j["job_id"] for j in jobs.values()]
    states = squeue_states(ids) or {}
    active = [t for t in ids if states.get(t, ("",))[0] in ACTIVE]
    if not active:
        return []
    if progress:
        progress.message(f"slurm: cancelling {len(active)} task(s) an earlier run left in the queue: {', '.join(active)}")
    scancel(active)
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        states = squeue_states(active) or {}
        if not any(states.get(t, ("",))[0] in ACTIVE for t in active):
            break
        time.sleep(1)
    return active


# ---- the executor -----------------------------------------------------------------------------

def _source_root() -> str:
    """The folder holding the icpcv package this process runs, for the tasks' PYTHONPATH."""
    return str(Path(icpcv.__file__).resolve().parent.parent)


def run_slurm(run_dir: Path, units: list[Unit], *, device: str = "auto", threads: int | None = None,
              options: dict | None = None, progress=None) -> list[dict]:
    """Run ``units`` (plain ints are folds, repeat 0) as Slurm array tasks and wait (with a deadline) until each is done or failed.

    ``options``: partition, time (minutes per task), gpus, cpus, mem (GB), max_parallel, and for
    the wait: poll (s), grace (s), deadline (minutes; default: every array wave using its time
    and its time-out requeues, plus an hour). Returns the failures.
    """
    o = dict(partition=None, time=240, gpus=0, cpus=2, mem=8, max_parallel=14, poll=2.0, grace=DEFAULT_GRACE_S,
             deadline=None)
    o.update({k: v for k, v in (options or {}).items() if v is not None})
    for tool in ("sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            raise RunDirError(f"--executor slurm: {tool} is not on PATH; run from a Slurm login node, or use "
                              "--executor local or processes")
    if int(o["time"]) < 3:
        raise InputError(f"--time {o['time']}: give each fold task at least 3 minutes (submitit signals a task "
                         "90 s before its time limit to requeue it)")
    if submitit is None:
        raise RunDirError("--executor slurm needs the submitit package (pip install submitit)")
    units = [Unit.of(u) for u in units]
    run_dir = Path(run_dir).resolve()
    run = RunDir(run_dir)
    rec = run.read_record()
    R = rec.config.repeats
    slurm_dir = run.slurm_dir
    jobs = run.read_slurm_jobs()
    # adopt tasks of an earlier submission that are still queued or running
    earlier = {u: jobs[u] for u in units if u in jobs}
    states = squeue_states([j["job_id"] for j in earlier.values()]) if earlier else {}
    adopted = {u: j for u, j in earlier.items() if (states or {}).get(j["job_id"], ("",))[0] in ACTIVE}
    if adopted:
        progress.message(f"slurm: {len(adopted)} task(s) of an earlier submission are still queued or running; "
                         f"watching them instead of submitting again: "
                         + ", ".join(f"{u.label(R)} = {j['job_id']}" for u, j in sorted(adopted.items())))
    to_submit = [u for u in units if u not in adopted]
    if to_submit:
        for u in to_submit:
            run.unit(u).clear_error()
            run.unit(u).path.mkdir(parents=True, exist_ok=True)
        # a fresh submitit folder per submission: job ids restart when a cluster is reset
        folder = slurm_dir / f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        params = dict(timeout_min=int(o["time"]), cpus_per_task=int(o["cpus"]), mem_gb=o["mem"],
                      slurm_array_parallelism=int(o["max_parallel"]), name=f"icpcv-{run_dir.name}"[:60],
                      slurm_setup=[f"export PYTHONPATH={_source_root()}${{PYTHONPATH:+:$PYTHONPATH}}"])
        if o["partition"]:
            params["slurm_partition"] = o["partition"]
        if int(o["gpus"]):
            params["gpus_per_node"] = int(o["gpus"])
        ex.update_parameters(**params)
        try:
            submitted = ex.map_array(FoldJob(str(run_dir), device, threads), to_submit)
        except Exception as exc:
            raise RunDirError(f"--executor slurm: sbatch refused the fold tasks: {exc}".strip()) from None
        for u, job in zip(to_submit, submitted):
            jobs[u] = dict(job_id=str(job.job_id), stderr=str(job.paths.stderr), stdout=str(job.paths.stdout),
                           folder=str(folder), submitted=time.time())
        run.write_slurm_jobs(jobs)
        progress.message(f"slurm: submitted {len(submitted)} {'fold' if R == 1 else '(fold, repeat)'} task(s) as array job "
                         f"{str(submitted[0].job_id).split('_')[0]} (at most {o['max_parallel']} at once, "
                         f"{o['cpus']} CPUs, {o['mem']} GB, {o['gpus']} GPUs, {o['time']} min each); logs in {folder}")
    waves = math.ceil(len(units) / max(1, int(o["max_parallel"])))
    deadline_min = o["deadline"] or waves * int(o["time"]) * (1 + MAX_TIMEOUTS) + 60
    return _wait(run_dir, rec, {u: jobs[u] for u in units}, progress, float(o["poll"]), float(o["grace"]),
                 float(deadline_min) * 60)


def _wait(run_dir: Path, rec: RunRecord, watch: dict[Unit, dict], progress, poll: float, grace: float,
          deadline_s: float) -> list[dict]:
    run = RunDir(run_dir)
    watch = {Unit.of(u): j for u, j in watch.items()}
    n, R = rec.n_folds, rec.config.repeats
    n_units = len(run.units(rec))
    state = {k: "pending" for k in watch}
    failures: list[dict] = []
    ended_at: dict[int, float] = {}
    t_end = time.monotonic() + deadline_s
    unreachable_since = None
    last_counts = None

    def open_tasks():
        return [watch[k]["job_id"] for k in watch if state[k] not in ("done", "failed")]

    try:
        while True:
            q = squeue_states(open_tasks())  # before the records: a task leaves the queue after writing its record
            now = time.monotonic()
            if q is None:
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_S:
                    raise RunDirError(f"slurm: squeue has failed for {UNREACHABLE_S / 60:.0f} minutes; the fold tasks "
                                      f"({', '.join(open_tasks())}) may still be running. Rerun the same command "
                                      "when Slurm answers again: it adopts tasks still queued or running")
            else:
                unreachable_since = None
            for k, job in watch.items():
                if state[k] in ("done", "failed"):
                    continue
                if run.unit_complete(k, rec.key):
                    state[k] = "done"
                    r = run.unit(k).read_record()
                    progress.message(fold_summary(r, n) + f" [Slurm task {job['job_id']} on {r.get('host')}]")
                    continue
                if q is None:
                    continue
                st, why = q.get(job["job_id"], (None, ""))
                if st in ACTIVE:
                    state[k] = "running" if st in RUNNING else "pending"
                    ended_at.pop(k, None)
                    continue
                err = run.unit(k).read_error()
                ended_at.setdefault(k, now)
                if err is None and now - ended_at[k] < grace:
                    continue  # the record may show up late on a shared file system
                if err is not None:
                    reason = f"{err['type']}: {err['message']}"
                elif st:
                    reason = (f"Slurm task {job['job_id']} ended {st}"
                              + (f" ({why})" if why and why != "None" else "") + " without completing the fold")
                else:
                    reason = (f"Slurm task {job['job_id']} left the queue without completing the fold "
                              "(killed outside Python: cancelled, out of memory or a node failure?)")
                state[k] = "failed"
                failures.append(dict(fold=k.fold, repeat=k.repeat, reason=reason, log=job["stderr"],
                                     job_id=job["job_id"], fold_log=str(run.unit(k).log),
                                     **({"unit": k.key} if k.tuning else {})))  # issue 21
                progress.message(f"{k.label(R, n)} FAILED: {reason} (log: {job['stderr']})")
            counts = {s: sum(v == s for v in state.values()) for s in ("pending", "running", "done", "failed")}
            line = ", ".join(f"{v} {s}" for s, v in counts.items())
            progress.set_folds(n_units - len(watch) + counts["done"], n_units)
            running = [s for s in (run.unit(k).read_status() for k in watch if state[k] == "running") if s]
            latest = max(running, key=lambda s: s["time"])["text"] if running else ""
            progress.update(f"slurm: {line}" + (f" | {latest}" if latest else ""))
            if counts != last_counts and progress.mode != "bar":
                progress.message(f"slurm: {line}")
            last_counts = counts
            if counts["pending"] + counts["running"] == 0:
                return failures
            if now > t_end:
                left = open_tasks()
                scancel(left)
                raise RunDirError(f"slurm: the fold tasks did not finish within the deadline of {deadline_s / 60:.0f} "
                                  f"minutes; cancelled {', '.join(left)}. Complete folds are kept; rerun the same "
                                  "command (with a larger --deadline) to resume the others")
            time.sleep(poll)
    except KeyboardInterrupt:
        left = open_tasks()
        scancel(left)
        progress.message(f"slurm: interrupted; cancelled {len(left)} task(s) ({', '.join(left)}); "
                         "rerun the same command to resume")
        raise
