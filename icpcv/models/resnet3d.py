"""3D ResNets laid out as MedicalNet's (Tencent/MedicalNet ``models/resnet.py``), with regression heads.

The backbone's parameter and buffer names and shapes are MedicalNet's (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer2.0.downsample.0`` / ``.1``), so its pretrained checkpoints load
tensor for tensor (see :mod:`icpcv.models.pretrained`):

* stem: ``conv1`` 7x7x7, stride 2, 64 channels, no bias; ``bn1``; ReLU; 3x3x3 max-pool, stride 2
  (computed so that its backward is deterministic on CUDA, see :class:`MaxPool3dS2`);
* ``layer1``..``layer4`` with 64, 128, 256, 512 planes: BasicBlock (two 3x3x3 convs) for depths
  10/18/34, Bottleneck (1x1x1, 3x3x3, 1x1x1, expansion 4) for depth 50;
* MedicalNet keeps the resolution after ``layer2``: ``layer3`` has stride 1 and dilation 2,
  ``layer4`` stride 1 and dilation 4 (a segmentation backbone). The ``nodil`` variant uses the
  classic strides (2 and 2, dilation 1) instead: the same tensors, 16x fewer positions in the
  last two stages;
* shortcut 'B' (1x1x1 conv + BN, tensors ``downsample.0`` and ``downsample.1``) or 'A'
  (parameter-free: subsample and zero-pad the channels). MedicalNet's released checkpoints use
  B for ResNet-10 and -50 and A for ResNet-18 and -34 (its README's "network structure
  parameter settings"); those are the defaults here. ``shortcut_grad``: shortcut A passes the
  gradient to its input (``'standard'``, the usual ResNet, the default) or, as MedicalNet's
  ``downsample_basic_block`` does with ``out.data``, detaches it (``'medicalnet'``, for a
  faithful replication of a MedicalNet fine-tuning); the forward pass is the same.

Heads replace MedicalNet's segmentation head (``conv_seg``, never loaded): the backbone's
feature map is averaged globally (accumulated and returned in fp32) and, outside autocast, so
that a bf16 run still writes fp32 predictions (:mod:`icpcv.models.precision`),

* ``fusion`` (the seed's): IOP repeated ``iop_repeat`` (512) times, joined *before* the pooled
  features, then ``fc`` = Linear(C + 512, (C + 512) // 2) -> ReLU -> Linear(., 1); for ResNet-50
  that is the seed's 2560 -> 1280 -> 1, under the seed's names ``fc.0`` / ``fc.2``;
* ``scanonly``: the pooled features alone, Linear(C, C // 2) -> ReLU -> Linear(., 1).

The last linear layer starts at zero, so the untrained network predicts the training mean
(epoch 0 of early stopping is then the mean model), as :class:`icpcv.models.cnn.LightCNN3D`.

Model names (``--models``): ``resnet{10,18,34,50}`` with optional suffixes ``_nodil`` (classic
strides, no dilation) and ``_scanonly`` (no IOP), in that order, e.g. ``resnet50_nodil``,
``resnet18_scanonly``, ``resnet34_nodil_scanonly``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icpcv.config import SHORTCUT_GRADS
from icpcv.errors import InputError
from icpcv.models.precision import autocast_off

DEPTHS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3))}
#: the shortcut type of MedicalNet's released checkpoints, by depth
MEDICALNET_SHORTCUT = {10: "B", 18: "A", 34: "A", 50: "B"}
SEED_IOP_REPEAT = 512
_NAME = re.compile(r"^resnet(10|18|34|50)(_nodil)?(_scanonly)?$")


@dataclass(frozen=True)
class ResNetSpec:
    depth: int
    dilated: bool = True
    use_iop: bool = True

    @property
    def name(self) -> str:
        return f"resnet{self.depth}" + ("" if self.dilated else "_nodil") + ("" if self.use_iop else "_scanonly")


def parse_name(name: str) -> ResNetSpec:
    m = _NAME.match(name)
    if not m:
        raise InputError(f"{name!r} is not a 3D ResNet name; use resnet10|18|34|50 with optional _nodil and "
                         "_scanonly suffixes, e.g. resnet50_nodil or resnet18_scanonly")
    return ResNetSpec(int(m.group(1)), dilated=m.group(2) is None, use_iop=m.group(3) is None)


def resnet_names() -> tuple[str, ...]:
    return tuple(ResNetSpec(d, dil, iop).name for d in DEPTHS for dil in (True, False) for iop in (True, False))


def _conv3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut 'A': keep every ``stride``-th position and pad the new channels with zeros (no tensors).

    MedicalNet writes it as a 1x1x1 average pool with that stride, which is the same subsampling,
    and wraps the result as ``Variable(torch.cat([out.data, zeros]))``: its shortcut passes no
    gradient back. ``detach=True`` reproduces that; the default passes it, as a standard ResNet.
    """

    def __init__(self, planes: int, stride: int, detach: bool = False):
        super().__init__()
        self.planes, self.stride, self.detach = planes, stride, detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s != 1:
            x = x[:, :, ::s, ::s, ::s]
        if self.detach:
            x = x.detach()
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.planes - x.shape[1]))

    def extra_repr(self) -> str:
        return f"planes={self.planes}, stride={self.stride}" + (", detach=True" if self.detach else "")


class MaxPool3dS2(nn.Module):
    """``MaxPool3d(3, stride=2, padding=1)`` whose backward is deterministic on CUDA.

    Where a gradient will be taken (grad mode on and the input requires grad) it is computed as
    three 1-D maxima of shifted views, one axis at a time (:meth:`elementwise`): its backward is
    elementwise, so it is deterministic on CUDA, where ``MaxPool3d``'s backward scatters
    gradients with atomic adds (run-to-run differences that would break bit-exact resume). The
    outputs equal ``nn.MaxPool3d``'s. The gradients equal ``nn.MaxPool3d``'s only where every
    window has a single maximum: where a window holds tied maxima, ``MaxPool3d`` gives the
    window's gradient to one of them, while ``torch.maximum``'s backward halves it between tied
    pairs, axis by axis, so it is spread over the tied maxima (the window's total is the same).
    Ties at zero after a ReLU do not matter (the ReLU's backward zeroes them); ties among
    positive values are common in bf16. It also keeps a padded copy of its input and two
    intermediate maxima for the backward: about 2.4x its input's bytes more than ``MaxPool3d``.

    Where no gradient is taken (validation, prediction: ``torch.no_grad``, inference mode, or an
    input that does not require grad) it is ``F.max_pool3d`` itself: same outputs, none of that
    extra memory. No tensors: checkpoints are unaffected.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self.elementwise(x)
        # a maximum is exact in any dtype: CPU autocast would upcast max_pool3d to fp32 for nothing
        with autocast_off(x.device.type):
            return F.max_pool3d(x, 3, stride=2, padding=1)

    @staticmethod
    def elementwise(x: torch.Tensor) -> torch.Tensor:
        """The pool as three 1-D maxima of shifted views (elementwise, deterministic backward)."""
        for dim in (2, 3, 4):
            n_out = (x.shape[dim] - 1) // 2 + 1
            pad = [0] * 6
            pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = 1
            xp = F.pad(x, pad, value=float("-inf"))

            def shifted(k):
                index = [slice(None)] * 5
                index[dim] = slice(k, k + 2 * n_out - 1, 2)
                return xp[tuple(index)]

            x = torch.maximum(torch.maximum(shifted(0), shifted(1)), shifted(2))
        return x


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = _conv3(c_in, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet3D(nn.Module):
    """A MedicalNet-layout 3D ResNet with a regression head; ``forward(volume, iop)`` returns ``(N,)``.

    ``volume`` is ``(N, 1, X, Y, Z)``; ``iop`` ``(N,)`` (ignored by scan-only models).
    ``base_width`` other than 64 gives a narrow network with the same names (for tests only:
    MedicalNet's checkpoints need 64). ``shortcut_grad='medicalnet'`` detaches shortcut A's
    input as MedicalNet does (no effect on shortcut B, whose gradient MedicalNet passes too).
    """

    def __init__(self, depth: int = 50, *, dilated: bool = True, use_iop: bool = True, shortcut: str | None = None,
                 iop_repeat: int = SEED_IOP_REPEAT, base_width: int = 64, shortcut_grad: str = "standard"):
        super().__init__()
        if depth not in DEPTHS:
            raise InputError(f"ResNet depth {depth} not available; choose from {', '.join(map(str, DEPTHS))}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        shortcut = shortcut or MEDICALNET_SHORTCUT[depth]
        if shortcut not in ("A", "B"):
            raise InputError(f"shortcut type {shortcut!r}: use 'A' (zero-pad) or 'B' (1x1x1 conv + BN)")
        if shortcut_grad not in SHORTCUT_GRADS:
            raise InputError(f"shortcut gradient {shortcut_grad!r}: use 'standard' (passes the gradient, the usual "
                             "ResNet) or 'medicalnet' (shortcut A detaches its input, as MedicalNet's out.data)")
        self.depth, self.dilated, self.use_iop, self.shortcut = depth, dilated, use_iop, shortcut
        self.shortcut_grad = shortcut_grad
        self.iop_repeat = iop_repeat if use_iop else 0
        w = base_width
        self._c = w
        self.conv1 = nn.Conv3d(1, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool3dS2()  # = nn.MaxPool3d(3, stride=2, padding=1), deterministic backward
        late = dict(stride=1, dilations=(2, 4)) if dilated else dict(stride=2, dilations=(1, 1))
        self.layer1 = self._make_layer(block, w, blocks[0])
        self.layer2 = self._make_layer(block, 2 * w, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * w, blocks[2], stride=late["stride"], dilation=late["dilations"][0])
        self.layer4 = self._make_layer(block, 8 * w, blocks[3], stride=late["stride"], dilation=late["dilations"][1])
        self.out_channels = 8 * w * block.expansion
        n_in = self.out_channels + self.iop_repeat
        hidden = n_in // 2
        self.fc = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc[2].weight)
        nn.init.zeros_(self.fc[2].bias)

    def _make_layer(self, block, planes: int, n_blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._c != planes * block.expansion:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(planes * block.expansion, stride,
                                             detach=self.shortcut_grad == "medicalnet")
            else:
                downsample = nn.Sequential(nn.Conv3d(self._c, planes * block.expansion, 1, stride=stride, bias=False),
                                           nn.BatchNorm3d(planes * block.expansion))
        layers = [block(self._c, planes, stride, dilation, downsample)]
        self._c = planes * block.expansion
        layers += [block(self._c, planes, 1, dilation) for _ in range(1, n_blocks)]
        return nn.Sequential(*layers)

    def feature_map(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(volume))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, volume: torch.Tensor, iop: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_iop and iop is None:
            raise ValueError(f"{self.name} joins IOP to the scan features: pass iop")
        head_dtype = self.fc[0].weight.dtype
        # a mean over the positions, not AdaptiveAvgPool3d: same numbers, deterministic backward on CUDA;
        # accumulated into the head's dtype (fp32) without an fp32 copy of a bf16 feature map
        h = self.feature_map(volume).mean(dim=(2, 3, 4), dtype=head_dtype)
        with autocast_off(h.device.type):  # a bf16 head would round every prediction to bf16
            if self.use_iop:
                h = torch.cat([iop.view(-1, 1).to(head_dtype).expand(-1, self.iop_repeat), h], dim=1)
            return self.fc(h).squeeze(1)

    @property
    def name(self) -> str:
        return ResNetSpec(self.depth, self.dilated, self.use_iop).name

    def head_names(self) -> set[str]:
        return {k for k in self.state_dict() if k.startswith("fc.")}


def build_resnet(name: str, **kwargs) -> ResNet3D:
    spec = parse_name(name)
    return ResNet3D(spec.depth, dilated=spec.dilated, use_iop=spec.use_iop, **kwargs)
