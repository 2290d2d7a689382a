"""Shared helpers of the orchestration tests (resume, executors, Slurm, faults).

The reference predictions of an uninterrupted local run are computed once per test session
(``functools.cache``) and compared bit for bit: every fold runs with one torch thread
(``threads=1``) in every executor, since CPU convolutions sum in a thread-dependent order.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv.config import RunConfig
from rundir_support import make_config

REPO = Path(__file__).resolve().parents[1]

#: folds long enough (~1.5 s of training each on 2 cores) to be caught in the middle
LONG = dict(phantom="tiny", epochs=12, patience=12, n_boot=200, models=("mean", "ols_iop", "cnn"), folds=3)
#: quick folds
QUICK = dict(phantom="tiny", epochs=3, n_boot=200, models=("mean", "ols_iop", "cnn"), folds=3)


def config(kind: str = "quick", **over) -> RunConfig:
    return make_config(**((LONG if kind == "long" else QUICK) | over))


def cli_args(cfg: RunConfig) -> list[str]:
    """``icpcv run`` options for a synthetic config (the ones the tests vary)."""
    return ["--phantom", cfg.phantom, "--epochs", str(cfg.train.epochs), "--patience", str(cfg.train.patience),
            "--models", ",".join(cfg.models), "--folds", str(cfg.folds), "--n-boot", str(cfg.n_boot)]


def cli_command(*args: str) -> list[str]:
    """``icpcv run ARGS`` in a fresh interpreter (the real command line, analysis and report included)."""
    return [sys.executable, "-m", "icpcv", "run", *args]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, env=subprocess_env(),
                          cwd=REPO)


def predictions(run_dir: Path) -> pd.DataFrame:
    from icpcv.run.pipeline import gather

    return gather(run_dir).sort_values(["model", "scan_id"]).reset_index(drop=True)


@functools.cache
def _reference(kind: str) -> pd.DataFrame:
    from icpcv.run.executors import execute
    from icpcv.run.pipeline import prepare

    run_dir = Path(tempfile.mkdtemp(prefix=f"icpcv-reference-{kind}-"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    rec = prepare(config(kind), run_dir)
    execute(run_dir, list(range(rec.n_folds)), executor="local", device="cpu", threads=1)
    return predictions(run_dir)


def reference(kind: str = "quick") -> pd.DataFrame:
    """Predictions of an uninterrupted local run (one torch thread per fold), computed once per session."""
    return _reference(kind).copy()


def repeats_predictions(run_dir: Path) -> pd.DataFrame:
    from icpcv.run.pipeline import gather

    return gather(run_dir).sort_values(["model", "scan_id", "repeat"]).reset_index(drop=True)


@functools.cache
def _repeats_reference(kind: str, repeats: int) -> pd.DataFrame:
    from icpcv.run.executors import execute
    from icpcv.run.pipeline import prepare
    from icpcv.rundir import RunDir

    run_dir = Path(tempfile.mkdtemp(prefix=f"icpcv-reference-{kind}-r{repeats}-"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    rec = prepare(config(kind, repeats=repeats), run_dir)
    execute(run_dir, RunDir.units(rec), executor="local", device="cpu", threads=1)
    return repeats_predictions(run_dir)


def repeats_reference(kind: str = "quick", repeats: int = 2) -> pd.DataFrame:
    """Predictions of an uninterrupted local run with ``--repeats`` (one torch thread per unit)."""
    return _repeats_reference(kind, repeats).copy()


def assert_same_repeats(got: pd.DataFrame, want: pd.DataFrame) -> None:
    key = ["model", "scan_id", "repeat"]
    got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def assert_same_predictions(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values(["model", "scan_id"]).reset_index(drop=True)
    want = want.sort_values(["model", "scan_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert np.array_equal(got["y_pred"].to_numpy(), want["y_pred"].to_numpy())  # bit for bit


def wait_for(cond, timeout: float, what: str, every: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def file_cohort(folder: Path, n_subjects: int | None = None) -> Path:
    """The tiny phantom written as one .npy per scan plus a plain scan table; returns the table's path."""
    from icpcv.cohort.phantom import make_cohort

    folder.mkdir(parents=True, exist_ok=True)
    scans, volumes, _ = make_cohort("tiny", seed=0)
    (folder / "vol").mkdir(exist_ok=True)
    paths = []
    for x, v in zip(scans["scan_id"], volumes):
        np.save(folder / "vol" / f"{x}.npy", v)
        paths.append(f"vol/{x}.npy")
    table = pd.DataFrame(dict(scan_id=scans["scan_id"], subject=scans["subject"], iop=scans["iop"],
                              icp=scans["icp"], path=paths))
    if n_subjects:
        table = table[table["subject"].astype(int) <= n_subjects]
    table.to_csv(folder / "scans.csv", index=False)
    return folder / "scans.csv"
