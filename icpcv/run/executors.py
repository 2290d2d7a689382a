"""Executors: where the jobs run. Each job reads and writes only the run directory.

A job is one unit, a fold and a training repeat (:class:`~icpcv.rundir.Unit`; a run without
``--repeats`` has one unit per fold, repeat 0).

* ``local``: one unit after another in this process (the first failure stops the run).
* ``processes``: ``workers`` units side by side in joblib's loky worker processes. With GPUs,
  one GPU per worker, pinned through ``CUDA_VISIBLE_DEVICES`` before CUDA starts in the worker;
  without, ``workers`` CPU processes with ``cpus // workers`` torch threads each.
* ``slurm``: one unit per job-array task through submitit (:mod:`icpcv.run.slurm`).

Whatever runs a unit, it is complete only when its ``record.json`` says so; the head collects
results from the run directory, never from the workers. A failed unit leaves ``error.json``
(the exception and traceback) and its ``fold.log`` in its folder; the other units go on, and
:class:`~icpcv.errors.FoldsFailed` lists the failures at the end.

Predictions are bit-identical across executors when each fold runs with the same number of
torch threads (``threads``; CPU convolutions sum in a thread-dependent order).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path

import torch
from joblib import Parallel, delayed

from icpcv.errors import FoldsFailed, InputError, RunDirError
from icpcv.progress import Progress
from icpcv.run.fold import fold_label, fold_summary, run_fold, run_job
from icpcv.run.slurm import run_slurm
from icpcv.rundir import RunDir, Unit

EXECUTORS = ("local", "processes", "slurm")


def execute(run_dir: Path, units: list[Unit], *, executor: str = "local", workers: int = 1, device: str = "auto",
            progress=None, slurm: dict | None = None, threads: int | None = None) -> None:
    """Run the units ``units`` of the run in ``run_dir`` (plain ints are folds, repeat 0);
    raises FoldsFailed if any failed."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown --executor {executor!r}; use {', '.join(EXECUTORS)}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1 (got {threads})")
    if not units:
        return
    units = [Unit.of(u) for u in units]
    run_dir = Path(run_dir).resolve()
    progress = progress or Progress("quiet")
    if executor == "local":
        _local(run_dir, units, device, threads, progress)
        return
    if executor == "processes":
        if workers < 1:
            raise InputError(f"--workers must be at least 1 (got {workers})")
        failures = _processes(run_dir, units, workers, device, threads, progress)
    else:
        failures = run_slurm(run_dir, units, device=device, threads=threads, options=slurm or {}, progress=progress)
    if failures:
        raise folds_failed(run_dir, failures)


def folds_failed(run_dir: Path, failures: list[dict]) -> FoldsFailed:
    """``failures``: dicts with ``fold`` (and ``repeat`` with repeats), ``reason`` and ``log``."""
    run = RunDir(run_dir)
    rec = run.read_record()
    n, R = rec.n_folds, rec.config.repeats
    units = "folds" if R == 1 else "units (fold, repeat)"
    total = len(run.units(rec))
    complete = total - len(run.incomplete_units(rec))
    lines = []
    for f in sorted(failures, key=lambda f: (f["fold"], f.get("repeat", 0), f.get("unit", ""))):
        held = run.held_out(f["fold"])
        what = (f"{Unit.parse(f['unit']).label(R, n)} (held out {', '.join(held)})" if f.get("unit")  # issue 21
                else fold_label(f['fold'], n, held, f.get('repeat', 0), R))
        lines.append(f"  {what}: {f['reason']}\n    log: {f['log']}")
    msg = (f"{len(failures)} of {total} {units} failed ({complete} complete {units} are kept and will not be "
           f"rerun):\n" + "\n".join(lines) + f"\nfix the cause and rerun the same command to run the unfinished {units}")
    return FoldsFailed(msg, failures)


# ---- local ------------------------------------------------------------------------------------

def _local(run_dir: Path, units: list[Unit], device: str, threads: int | None, progress: Progress) -> None:
    before = torch.get_num_threads()
    run = RunDir(run_dir)
    n = len(run.units(run.read_record()))
    done0 = n - len(units)
    try:
        if threads:
            torch.set_num_threads(threads)
        for i, u in enumerate(units):
            progress.set_folds(done0 + i, n)
            try:
                run_fold(run_dir, u.fold, repeat=u.repeat, device=device, progress=progress, candidate=u.candidate,
                         inner=u.inner)
            except Exception as exc:
                run.unit(u).write_error(exc, log=str(run.unit(u).log))
                raise
        progress.set_folds(n, n)
    finally:
        torch.set_num_threads(before)


# ---- processes (joblib / loky) ----------------------------------------------------------------

_PINNED: tuple[str, object] | None = None  # (GPU id, the slot's lock file) of this worker process


def _pin_gpu(gpus: list[str], slot_dir: str) -> str:
    """Claim a free GPU slot for this worker process for its lifetime; set CUDA_VISIBLE_DEVICES."""
    global _PINNED
    if _PINNED is not None:
        return _PINNED[0]
    Path(slot_dir).mkdir(parents=True, exist_ok=True)
    for i, gpu in enumerate(gpus):
        fh = open(Path(slot_dir) / f"slot{i}.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        _PINNED = (gpu, fh)
        return gpu
    raise RuntimeError(f"no free GPU among {gpus} for this worker (slots in {slot_dir})")


def process_task(run_dir: str, unit: Unit, device: str, threads: int, gpus: list[str] | None,
                 slot_dir: str | None) -> dict:
    """The processes executor's job (runs in a loky worker): never raises for a failed unit."""
    gpu = None
    try:
        if gpus:
            gpu = _pin_gpu(gpus, slot_dir)
            if device.startswith("cuda"):
                device = "cuda"  # the one visible GPU
        rec = run_job(run_dir, unit.fold, repeat=unit.repeat, device=device, threads=threads,
                      candidate=unit.candidate, inner=unit.inner)
        return dict(unit=unit, ok=True, record=rec, gpu=gpu, pid=os.getpid())
    except Exception as exc:
        return dict(unit=unit, ok=False, reason=f"{type(exc).__name__}: {exc}", gpu=gpu, pid=os.getpid(),
                    log=str(RunDir(run_dir).unit(unit).log))


def _processes(run_dir: Path, units: list[Unit], workers: int, device: str, threads: int | None,
               progress: Progress) -> list[dict]:
    gpus = None
    if device != "cpu":
        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = ([g.strip() for g in visible.split(",") if g.strip()] if visible
                    else [str(i) for i in range(torch.cuda.device_count())])
            if workers > len(gpus):
                progress.message(f"processes: {workers} workers asked for, {len(gpus)} GPU(s) here; "
                                 f"using {len(gpus)} workers, one GPU each")
                workers = len(gpus)
        elif device.startswith("cuda"):
            raise RunDirError(f"--device {device} asked for, but CUDA is not available here")
    workers = max(1, min(workers, len(units)))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or max(1, cpus // workers)
    # one slot folder per head process: reused loky workers keep the slot they hold
    slot_dir = str(Path(tempfile.gettempdir()) / f"icpcv-gpu-slots-{os.getpid()}") if gpus else None
    run = RunDir(run_dir)
    rec = run.read_record()
    what = "fold(s)" if rec.config.repeats == 1 else "unit(s) (fold, repeat)"
    progress.message(f"processes: {len(units)} {what} on {workers} worker(s), "
                     + (f"one GPU each (of {', '.join(gpus)}), " if gpus else "")
                     + f"{threads} torch thread(s) each")
    n, n_units = rec.n_folds, len(run.units(rec))
    done0 = n_units - len(units)
    results: dict[Unit, dict] = {}
    failures: list[dict] = []
    stop = threading.Event()

    def watch():
        while not stop.wait(0.5):
            running = [u for u in units if u not in results]
            st = [s for s in (run.unit(u).read_status() for u in running) if s]
            latest = max(st, key=lambda s: s["time"])["text"] if st else "starting workers"
            progress.set_folds(done0 + sum(r["ok"] for r in results.values()), n_units)
            progress.update(f"{len(running)} to go on {workers} worker(s) | {latest}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        tasks = (delayed(process_task)(str(run_dir), u, device, threads, gpus, slot_dir) for u in units)
        for res in Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")(tasks):
            u = res["unit"]
            results[u] = res
            if res["ok"]:
                progress.set_folds(done0 + sum(r["ok"] for r in results.values()), n_units)
                progress.message(fold_summary(res["record"], n) + (f" [GPU {res['gpu']}]" if res["gpu"] else ""))
            else:
                failures.append(dict(fold=u.fold, repeat=u.repeat, reason=res["reason"], log=res["log"],
                                     **({"unit": u.key} if u.tuning else {})))
                progress.message(f"{u.label(rec.config.repeats, n)} FAILED: {res['reason']} "
                                 f"(log: {res['log']})")
    except Exception as exc:  # a worker died (killed, out of memory): loky stops the whole pool
        for u in units:
            if u not in results and not run.unit_complete(u, rec.key):
                err = run.unit(u).read_error()
                reason = (f"{err['type']}: {err['message']}" if err else
                          f"the worker process died ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")
                failures.append(dict(fold=u.fold, repeat=u.repeat, reason=reason, log=str(run.unit(u).log),
                                     **({"unit": u.key} if u.tuning else {})))
    finally:
        stop.set()
        watcher.join()
    return failures
