"""The run directory: the source of truth of a run. Every write is atomic.

Layout::

    run.json            config, its hash, fold plan hash, data hash, the run key
    config.json         the configuration as given
    environment.json    versions, git hash, hardware
    cohort/             scans.csv, cohort.json (+ volumes.npy, truth.json for the phantom)
    data_quality.csv    every input row: kept or dropped, and why
    fold_plan.json      frozen before training, with its hash
    leakage_audit.json
    folds/fold_NN/      record.json (complete when it says so), predictions.csv, learning_curve.csv,
                        <cnn>_checkpoint.pt (last epoch; deleted once complete), fold.log, status.json,
                        error.json (why the last attempt failed), .lock (held while the fold runs)
    slurm/              jobs.json (the fold -> Slurm task map), one submitit folder per submission
    predictions.csv     out-of-fold predictions, long format
    stats.json          the analysis
    figures/*.png, index.html
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from icpcv.errors import RunDirError
from icpcv.util import atomic_write_json, canonical_hash, file_sha256, package_version, read_json  # noqa: F401 (re-exported)


def fold_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / "folds" / f"fold_{k:02d}"


def run_key(config_hash: str, plan_hash: str, data_hash: str) -> str:
    return canonical_hash([config_hash, plan_hash, data_hash])


def read_fold_record(run_dir: Path, k: int) -> dict | None:
    rec = fold_dir(run_dir, k) / "record.json"
    try:
        return read_json(rec)
    except (OSError, ValueError):
        return None


def fold_complete(run_dir: Path, k: int, key: str) -> bool:
    """Complete = record.json says so for this run key, and the predictions it names are on disk unchanged."""
    r = read_fold_record(run_dir, k)
    if not r or r.get("status") != "complete" or r.get("key") != key:
        return False
    pred = fold_dir(run_dir, k) / "predictions.csv"
    if not pred.exists():
        return False
    want = r.get("predictions_sha256")
    if want is not None:
        try:
            return file_sha256(pred) == want
        except OSError:
            return False
    return True


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch an epoch checkpoint was written after, or None if it is unreadable."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # corrupt: fit() reports it with what to do
        return None


def fold_checkpoints(run_dir: Path, k: int) -> list[Path]:
    return sorted(fold_dir(run_dir, k).glob("*_checkpoint.pt"))


def clean_stale_temps(folder: Path) -> None:
    """Remove temporary files of atomic writes that a killed process left behind (never a final name)."""
    for p in Path(folder).glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


def write_fold_error(run_dir: Path, k: int, exc: BaseException, log: str | None = None) -> dict:
    """Record why fold ``k`` failed (error.json); never raises (the disk may be full)."""
    err = dict(fold=k, type=type(exc).__name__, message=str(exc), host=socket.gethostname(), pid=os.getpid(),
               time=datetime.now(timezone.utc).isoformat(timespec="seconds"), log=log,
               traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    try:
        atomic_write_json(fold_dir(run_dir, k) / "error.json", err)
    except Exception:
        pass
    return err


def read_fold_error(run_dir: Path, k: int) -> dict | None:
    try:
        return read_json(fold_dir(run_dir, k) / "error.json")
    except (OSError, ValueError):
        return None


def clear_fold_error(run_dir: Path, k: int) -> None:
    try:
        (fold_dir(run_dir, k) / "error.json").unlink()
    except FileNotFoundError:
        pass


def write_status(run_dir: Path, k: int, text: str) -> None:
    """The fold's latest progress line (status.json), for executors that watch from another process.

    Replaced atomically but not fsynced: it is a display, not a result.
    """
    d = fold_dir(run_dir, k)
    tmp = d / f".status.json.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(dict(text=text, time=time.time(), host=socket.gethostname(), pid=os.getpid())))
        os.replace(tmp, d / "status.json")
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def read_status(run_dir: Path, k: int) -> dict | None:
    try:
        return json.loads((fold_dir(run_dir, k) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def environment() -> dict:
    import torch

    env = dict(python=sys.version.split()[0], executable=sys.executable, platform=platform.platform(),
               machine=platform.machine(), host=socket.gethostname(), cpu_count=os.cpu_count(),
               torch=torch.__version__, **{k: package_version(d) for k, d in (
                   ("numpy", "numpy"), ("pandas", "pandas"), ("sklearn", "scikit-learn"), ("statsmodels", "statsmodels"),
                   ("scipy", "scipy"), ("joblib", "joblib"), ("submitit", "submitit"))},
               torch_threads=torch.get_num_threads(),
               cuda=torch.version.cuda if torch.cuda.is_available() else None,
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if torch.cuda.is_available() else [],
               cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
               slurm_job_id=os.environ.get("SLURM_JOB_ID"),
               time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    from icpcv import __version__

    env["icpcv"] = __version__
    try:
        src = Path(__file__).resolve().parents[2]
        env["git"] = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        env["git_dirty"] = bool(dirty) if env["git"] else None
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    return env


class _ExclusiveLock:
    """An exclusive, non-blocking flock on a file that records who holds it."""

    path: Path

    def _busy(self, who: str) -> str:
        raise NotImplementedError

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            who = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise RunDirError(self._busy(who)) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {platform.node()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


class RunLock(_ExclusiveLock):
    """One run at a time per directory: an exclusive flock on ``run_dir/.lock``."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fh = None

    def _busy(self, who: str) -> str:
        return (f"{self.path.parent}: another icpcv run ({who}) is using this run directory; "
                "wait for it to finish or choose another --out")


class FoldLock(_ExclusiveLock):
    """One process per fold: an exclusive flock on ``folds/fold_NN/.lock`` while the fold runs.

    Guards against two executors (say a Slurm task left from an earlier submission and a local
    rerun) writing the same fold's checkpoints at once.
    """

    def __init__(self, run_dir: Path, k: int):
        self.path = fold_dir(run_dir, k) / ".lock"
        self.k = k
        self.fh = None

    def _busy(self, who: str) -> str:
        return (f"{self.path.parent}: fold {self.k} is being run by {who}; wait for it to end "
                "(or cancel it, e.g. scancel its Slurm task) and rerun")


def write_run_record(run_dir: Path, record: dict) -> None:
    atomic_write_json(Path(run_dir) / "run.json", record)


def read_run_record(run_dir: Path) -> dict:
    p = Path(run_dir) / "run.json"
    if not p.exists():
        raise RunDirError(f"{run_dir}: not a run directory (no run.json)")
    try:
        return read_json(p)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{p}: cannot read the run record ({exc}); rerun with --fresh to start this run "
                          "directory over, or use another --out") from None
