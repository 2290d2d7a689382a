"""Model registry: the names accepted by ``--models``."""
from __future__ import annotations

from icpcv.errors import InputError
from icpcv.models.baselines import MeanBaseline, MixedLMIOP, OLSIOP, RidgeScan

BASELINES = {
    "mean": MeanBaseline,
    "ols_iop": lambda: OLSIOP(degree=1),
    "ols_iop2": lambda: OLSIOP(degree=2),
    "mixedlm_iop": MixedLMIOP,
    "ridge_scan": RidgeScan,
}
#: CNN names: the light CPU network and the MedicalNet-style 3D ResNets
CNNS = ("cnn",)

NEEDS_IOP = {"mean": False, "ols_iop": True, "ols_iop2": True, "mixedlm_iop": True, "ridge_scan": True, "cnn": True}
NEEDS_VOLUMES = {"mean": False, "ols_iop": False, "ols_iop2": False, "mixedlm_iop": False, "ridge_scan": True,
                 "cnn": True}


def known_models() -> list[str]:
    return list(BASELINES) + list(CNNS)


def check_models(names) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in known_models()]
    if unknown:
        raise InputError(f"unknown model(s) {', '.join(unknown)} in --models; known: {', '.join(known_models())}")
    if len(set(names)) != len(names):
        raise InputError(f"--models names a model twice: {','.join(names)}")
    return names


def make_baseline(name: str):
    return BASELINES[name]()


def is_cnn(name: str) -> bool:
    return name in CNNS
