"""The networks by name: the light CPU CNN and MedicalNet-style 3D ResNets (``--models`` names)."""
from __future__ import annotations

import torch

from icpcv.models.cnn import LightCNN3D
from icpcv.models.resnet3d import build_resnet, resnet_names

#: the 3D ResNets (resnet10|18|34|50 with optional _nodil and _scanonly suffixes)
RESNETS = resnet_names()
CNNS = ("cnn",) + RESNETS


def make_cnn(name: str, shape: tuple[int, int, int], **resnet_options) -> torch.nn.Module:
    """A fresh network by name; its initialisation draws from torch's global generator (seed it first).

    ``resnet_options`` go to :func:`~icpcv.models.resnet3d.build_resnet` (e.g. ``shortcut_grad``).
    """
    if name == "cnn":
        return LightCNN3D(tuple(shape))
    return build_resnet(name, **resnet_options)
