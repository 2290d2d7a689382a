"""The run directory: the source of truth of a run. Every write is atomic.

Layout::

    run.json            config, its hash, fold plan hash, data hash, the run key
    config.json         the configuration as given
    environment.json    versions, git hash, hardware
    cohort/             scans.csv, cohort.json (+ volumes.npy, truth.json for the phantom)
    data_quality.csv    every input row: kept or dropped, and why
    fold_plan.json      frozen before training, with its hash
    leakage_audit.json
    folds/fold_NN/      record.json (complete when it says so), predictions.csv, learning_curve.csv
    predictions.csv     out-of-fold predictions, long format
    stats.json          the analysis
    figures/*.png, index.html
"""
from __future__ import annotations

import fcntl
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from icpcv.errors import RunDirError
from icpcv.util import atomic_write_json, canonical_hash, read_json


def fold_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / "folds" / f"fold_{k:02d}"


def run_key(config_hash: str, plan_hash: str, data_hash: str) -> str:
    return canonical_hash([config_hash, plan_hash, data_hash])


def fold_complete(run_dir: Path, k: int, key: str) -> bool:
    rec = fold_dir(run_dir, k) / "record.json"
    if not rec.exists():
        return False
    try:
        r = read_json(rec)
    except (OSError, ValueError):
        return False
    return r.get("status") == "complete" and r.get("key") == key and (fold_dir(run_dir, k) / "predictions.csv").exists()


def environment() -> dict:
    import numpy
    import pandas
    import sklearn
    import statsmodels
    import torch

    env = dict(python=sys.version.split()[0], platform=platform.platform(), machine=platform.machine(),
               cpu_count=os.cpu_count(), torch=torch.__version__, numpy=numpy.__version__, pandas=pandas.__version__,
               sklearn=sklearn.__version__, statsmodels=statsmodels.__version__,
               cuda=torch.version.cuda if torch.cuda.is_available() else None,
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
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


class RunLock:
    """One run at a time per directory: an exclusive flock on ``run_dir/.lock``."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            who = self.fh.read().strip() or "another process"
            self.fh.close()
            raise RunDirError(f"{self.path.parent}: another icpcv run ({who}) is using this run directory; "
                              "wait for it to finish or choose another --out") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {platform.node()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def write_run_record(run_dir: Path, record: dict) -> None:
    atomic_write_json(Path(run_dir) / "run.json", record)


def read_run_record(run_dir: Path) -> dict:
    p = Path(run_dir) / "run.json"
    if not p.exists():
        raise RunDirError(f"{run_dir}: not a run directory (no run.json)")
    return read_json(p)
