"""A light 3D CNN that trains on a CPU: scan features joined with IOP, as the seed's fusion head.

Strided 3x3x3 convolutions shrink the volume 8-fold per axis; the feature map is flattened,
not globally pooled, because *where* the lamina sits along depth is the signal. The regression
head starts at zero weight, so before training the network predicts the training mean. The
head runs in fp32 even under bf16 autocast, so predictions are not rounded to bf16
(:mod:`icpcv.models.precision`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from icpcv.models.precision import autocast_off


class LightCNN3D(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], channels=(8, 16, 32), hidden: int = 64, use_iop: bool = True):
        super().__init__()
        layers, c_in, shape = [], 1, list(in_shape)
        for c in channels:
            layers += [nn.Conv3d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
            c_in = c
            shape = [math.floor((s + 2 - 3) / 2) + 1 for s in shape]
        self.features = nn.Sequential(*layers)
        self.flat = c_in * math.prod(shape)
        self.use_iop = use_iop
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(self.flat, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden + int(use_iop), 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, volume: torch.Tensor, iop: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(self.features(volume))
        with autocast_off(h.device.type):  # a bf16 head would round every prediction (and IOP) to bf16
            h = h.to(self.head.weight.dtype)
            if self.use_iop:
                h = torch.cat([h, iop.view(-1, 1).to(h.dtype)], dim=1)
            return self.head(h).squeeze(1)
