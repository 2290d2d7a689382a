"""What every model is: an estimator with ``fit`` and ``predict`` on the scans of a fold.

``fit(train, val)`` learns from the fold's training monkeys; ``val`` holds its inner-validation
monkeys, which a network uses for early stopping and the baselines simply fit as well (both are
on the training side of the fold). ``predict(scans)`` is then called once, on the held-out
monkey's scans. A model's needs are attributes of its class: ``needs_iop``, ``needs_volumes``,
and ``stochastic`` (its predictions depend on training randomness: initialisation, batch order,
augmentation). ``__init__`` stores settings only (scikit-learn's rule); learning happens in fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv.cohort import ScanSet
from icpcv.config import TrainConfig


@dataclass
class FitContext:
    """What a fold gives the models it trains: the training set-up, where to run, where to keep files."""

    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # this fold's training seed
    shape: tuple[int, int, int] | None = None  # volume shape (X, Y, Z=depth)
    device: object = "cpu"  # a torch.device or its name
    checkpoint: Path | None = None  # the epoch checkpoint of a network (resumed from when it exists)
    weights: Path | None = None  # where a network's trained weights are saved
    pretrained: str | None = None  # warm-start checkpoint for the 3D ResNets
    shortcut_grad: str = "standard"  # shortcut A's gradient: standard, or MedicalNet's detached one
    label: str = ""  # "fold 3/14 (held out 3)", for messages
    progress: object | None = None  # .message(text) and .update(text), e.g. a FoldReporter
    covariates: tuple[str, ...] = ()  # issue 19: --covariates, the table columns the acq baseline adds


class Model:
    """Base class: ``fit(train, val)`` then ``predict(scans)``; ``describe()`` for the fold record."""

    name = "model"
    needs_iop = True
    needs_volumes = False
    stochastic = False
    #: reads the volumes' intensity statistics (cohort/scans.csv's intensity_*): volumes needed where a run has them
    needs_volume_stats = False
    #: per-epoch losses of a network after fit (a DataFrame with a ``model`` column), else None
    learning_curve_: pd.DataFrame | None = None

    def fit(self, train: ScanSet, val: ScanSet | None = None) -> "Model":
        raise NotImplementedError

    def predict(self, scans: ScanSet) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}

    # ---- a fitted model kept (issue 20): what ``icpcv predict`` reloads, as plain JSON (never a pickle)
    def to_state(self) -> dict:
        """The fitted model as JSON-ready values (lists of floats, numbers, text): everything ``predict``
        needs. A network's weights stay in its ``<model>_weights.pt``; its state names that file."""
        raise NotImplementedError(f"{type(self).__name__} cannot be kept")

    def load_state(self, state: dict) -> "Model":
        """Set this (unfitted) model to the fitted ``state`` of :meth:`to_state`; returns self.
        ``predict`` then gives, bit for bit, what the model that wrote the state gave."""
        raise NotImplementedError(f"{type(self).__name__} cannot be reloaded")
