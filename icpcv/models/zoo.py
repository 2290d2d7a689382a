"""The networks by name: the light CPU CNN and MedicalNet-style 3D ResNets (``--models`` names)."""
from __future__ import annotations

import torch

from icpcv.models.cnn import LightCNN3D
from icpcv.models.resnet3d import build_resnet, resnet_names

#: the 3D ResNets (resnet10|18|34|50 with optional _nodil and _scanonly suffixes)
RESNETS = resnet_names()
CNNS = ("cnn",) + RESNETS


#: the light CNN's default channel width (its first convolution's channels; the next two double it)
CNN_WIDTH = 8


def cnn_channels(width: int | None = None) -> tuple[int, int, int]:
    """The light CNN's three convolutions' channels at ``width`` (None: the default, 8, 16, 32)."""
    w = CNN_WIDTH if width is None else int(width)
    return (w, 2 * w, 4 * w)


def make_cnn(name: str, shape: tuple[int, int, int], *, width: int | None = None, **resnet_options) -> torch.nn.Module:
    """A fresh network by name; its initialisation draws from torch's global generator (seed it first).

    ``width``: the light CNN's channel width (:func:`cnn_channels`; ``run --tune "cnn: width=8,16"``).
    ``resnet_options`` go to :func:`~icpcv.models.resnet3d.build_resnet` (e.g. ``shortcut_grad``).
    """
    if name == "cnn":
        return LightCNN3D(tuple(shape), channels=cnn_channels(width))
    if width is not None:
        raise ValueError(f"{name}: width is a setting of the light CNN only")
    return build_resnet(name, **resnet_options)
