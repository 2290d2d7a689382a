"""Short names for the run directory's parts, as the tests use them (through icpcv.rundir.RunDir)."""
from __future__ import annotations

from icpcv.rundir import RunDir, Unit


def fold_dir(run_dir, k):
    return RunDir(run_dir).fold(k).path


def fold_complete(run_dir, k, key) -> bool:
    return RunDir(run_dir).unit_complete(Unit(k), key)


def read_fold_error(run_dir, k):
    return RunDir(run_dir).fold(k).read_error()


def read_run_record(run_dir):
    return RunDir(run_dir).read_record()


def make_config(**kw):
    """A RunConfig from flat keyword arguments: the training ones (epochs, lr, ...) go to its TrainConfig."""
    from dataclasses import fields

    from icpcv.config import RunConfig, TrainConfig

    train_keys = {f.name for f in fields(TrainConfig)}
    train = {k: kw.pop(k) for k in list(kw) if k in train_keys}
    return RunConfig(**kw, train=TrainConfig(**train))
