"""Executors: where the fold jobs run. Each job reads and writes only the run directory."""
from __future__ import annotations

from pathlib import Path

from icpcv.errors import InputError
from icpcv.run.fold import run_fold


def execute(run_dir: Path, folds: list[int], *, executor: str = "local", workers: int = 1, device: str = "auto",
            progress=None, slurm: dict | None = None) -> None:
    if not folds:
        return
    if executor == "local":
        for k in folds:
            run_fold(run_dir, k, device=device, progress=progress)
        return
    raise InputError(f"unknown --executor {executor!r}; use local")
