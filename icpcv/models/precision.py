"""Where the CNNs leave bf16 autocast: the regression heads, so that predictions are fp32.

Under ``torch.autocast(dtype=torch.bfloat16)`` every ``Linear`` runs in bf16, so a head inside
the autocast region rounds each prediction to bf16 (8 significant bits: ~0.4% relative, ~0.1
mmHg at 25 mmHg) before it is written. The heads are a few thousand multiply-adds per scan:
running them in fp32 costs nothing measurable, while the convolutions keep bf16.
"""
from __future__ import annotations

import contextlib

import torch

#: the device types on which icpcv enables autocast (icpcv.train.datapath.autocast)
AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_off(device_type: str):
    """A context in which autocast is disabled on ``device_type`` (a no-op where icpcv never enables it, e.g. meta)."""
    if device_type in AUTOCAST_DEVICES:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
