"""Models: the names accepted by ``--models``, each an estimator with ``fit``/``predict``.

Every model is a :class:`~icpcv.models.base.Model`: the IOP baselines and the scan ridge in
:mod:`icpcv.models.baselines`, the CNNs in :mod:`icpcv.models.network`. What a model needs
(IOP, volumes) and whether it depends on training randomness are attributes of the model.
A new model: a class with ``fit(train, val)``, ``predict(scans)``, ``describe()`` and those
attributes, and an entry in :data:`BASELINES` (or a name in ``CNNS``).
"""
from __future__ import annotations

from icpcv.errors import InputError
from icpcv.models.base import FitContext, Model
from icpcv.models.baselines import MeanBaseline, MixedLMIOP, OLSIOP, RidgeScan
from icpcv.models.network import NetworkModel
from icpcv.models.nuisance import NUISANCE
from icpcv.models.zoo import CNNS, RESNETS, make_cnn

BASELINES = {
    "mean": MeanBaseline,
    "ols_iop": lambda: OLSIOP(degree=1),
    "ols_iop2": lambda: OLSIOP(degree=2),
    "mixedlm_iop": MixedLMIOP,
    "ridge_scan": RidgeScan,
}


def known_models() -> list[str]:
    return list(BASELINES) + list(NUISANCE) + list(CNNS)


def check_models(names) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in known_models()]
    if unknown:
        known = list(BASELINES) + list(NUISANCE) + ["cnn", "resnet10|18|34|50 with optional _nodil, _scanonly suffixes"]
        raise InputError(f"unknown model(s) {', '.join(unknown)} in --models; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise InputError(f"--models names a model twice: {','.join(names)}")
    return names


def make_model(name: str, context: FitContext | None = None) -> Model:
    """A fresh, unfitted model by name; the CNNs train from ``context`` (the baselines need none)."""
    if name in BASELINES:
        return BASELINES[name]()
    if name in NUISANCE:  # issue 19: the nuisance baselines read --covariates from the context
        return NUISANCE[name](context)
    if name in CNNS:
        return NetworkModel(name, context)
    check_models([name])
    raise AssertionError(name)  # check_models raised


def is_resnet(name: str) -> bool:
    return name in RESNETS


__all__ = ["BASELINES", "CNNS", "NUISANCE", "RESNETS", "FitContext", "Model", "NetworkModel", "check_models", "is_resnet",
           "known_models", "make_cnn", "make_model"]
