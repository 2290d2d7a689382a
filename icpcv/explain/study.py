"""Fitting one fold's network exactly as the run does, without a run directory.

:func:`fit_cnn` is for tests and notebooks that need a trained network (the randomisation sanity
check, the planted-shortcut test). The attribution study on the phantom itself is ``icpcv run
--saliency N``; its thin driver, which prints what ``attribution.json`` says, is
:mod:`icpcv.run.attribution_study` (``python -m icpcv.run.attribution_study``).
"""
from __future__ import annotations

from dataclasses import replace

from icpcv.cohort import ScanSet
from icpcv.config import TrainConfig
from icpcv.models.base import FitContext
from icpcv.models.network import NetworkModel


def fit_cnn(name: str, shape, train: ScanSet, val: ScanSet, *, seed: int = 0, device="cpu",
            **train_kw) -> NetworkModel:
    """The CNN ``name`` fitted as a run fits it (:class:`~icpcv.models.network.NetworkModel`: seeded
    initialisation, the network's augmentation, early stopping on ``val``), with the run's default
    :class:`~icpcv.config.TrainConfig` changed by ``train_kw``. The fitted network is ``.network_``,
    the fold's training statistics ``.standardiser_``."""
    context = FitContext(train=replace(TrainConfig(), **train_kw), seed=seed, shape=tuple(shape), device=device)
    return NetworkModel(name, context).fit(train, val)
