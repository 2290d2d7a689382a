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
#: (resnet10|18|34|50, optional _nodil and _scanonly suffixes; see icpcv.models.resnet3d)
RESNETS = tuple(f"resnet{d}{dil}{only}" for d in (10, 18, 34, 50) for dil in ("", "_nodil")
                for only in ("", "_scanonly"))  # no torch import here: the CLI lists them
CNNS = ("cnn",) + RESNETS

NEEDS_IOP = {"mean": False, "ols_iop": True, "ols_iop2": True, "mixedlm_iop": True, "ridge_scan": True, "cnn": True}
NEEDS_IOP |= {n: not n.endswith("_scanonly") for n in RESNETS}
NEEDS_VOLUMES = {"mean": False, "ols_iop": False, "ols_iop2": False, "mixedlm_iop": False, "ridge_scan": True,
                 "cnn": True}
NEEDS_VOLUMES |= {n: True for n in RESNETS}


def known_models() -> list[str]:
    return list(BASELINES) + list(CNNS)


def check_models(names) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in known_models()]
    if unknown:
        known = list(BASELINES) + ["cnn", "resnet10|18|34|50 with optional _nodil, _scanonly suffixes"]
        raise InputError(f"unknown model(s) {', '.join(unknown)} in --models; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise InputError(f"--models names a model twice: {','.join(names)}")
    return names


def make_baseline(name: str):
    return BASELINES[name]()


def is_cnn(name: str) -> bool:
    return name in CNNS


def is_resnet(name: str) -> bool:
    return name in RESNETS


def make_cnn(name: str, shape: tuple[int, int, int]):
    """A fresh CNN by name; its initialisation draws from torch's global generator (seed it first)."""
    if name == "cnn":
        from icpcv.models.cnn import LightCNN3D

        return LightCNN3D(tuple(shape))
    from icpcv.models.resnet3d import build_resnet

    return build_resnet(name)
