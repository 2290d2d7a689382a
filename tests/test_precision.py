"""Predictions are fp32 under bf16 autocast, and --precision auto picks bf16 only where it is native.

CUDA cannot be real on the CPU machine, so the bf16 choice is tested by replacing
``torch.cuda.is_available`` / ``is_bf16_supported`` / ``get_device_capability`` with stand-ins
that answer as a V100 (bf16 emulated) or an A100 (native) would.
"""
import numpy as np
import pytest
import torch

from icpcv.models.cnn import LightCNN3D
from icpcv.models.resnet3d import ResNet3D
from icpcv.train import datapath as dp
from icpcv.train.loop import Standardiser, predict

BF16 = torch.bfloat16


def _bf16_error(ref: torch.Tensor) -> torch.Tensor:
    return (ref.to(BF16).double() - ref).abs()


def _resnet():
    torch.manual_seed(0)
    m = ResNet3D(10, base_width=4, iop_repeat=4)
    torch.nn.init.normal_(m.fc[2].weight)
    torch.nn.init.normal_(m.fc[2].bias)
    return m.eval()


def test_resnet_head_runs_in_fp32_under_bf16_autocast():
    m = _resnet()
    x, iop = torch.randn(6, 1, 16, 16, 32), torch.linspace(-1.5, 1.5, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        pred = m(x, iop)
        features = m.feature_map(x)
    assert features.dtype == BF16  # the backbone keeps bf16
    # the head recomputed here in float64 from the bf16 feature map
    h = torch.cat([iop.double().view(-1, 1).expand(-1, 4), features.double().mean(dim=(2, 3, 4))], dim=1)
    w0, b0, w2, b2 = (t.double() for t in (m.fc[0].weight, m.fc[0].bias, m.fc[2].weight, m.fc[2].bias))
    ref = (torch.relu(h @ w0.T + b0) @ w2.T + b2).squeeze(1)
    assert pred.dtype == torch.float32
    err = (pred.double() - ref).abs()
    assert err.max() <= 1e-5 * ref.abs().max()
    assert err.max() * 20 < _bf16_error(ref).max()  # rounding to bf16 would be far larger


def test_light_cnn_head_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    m = LightCNN3D((16, 16, 32))
    torch.nn.init.normal_(m.head.weight)
    m.eval()
    x, iop = torch.randn(6, 1, 16, 16, 32), torch.linspace(-1.5, 1.5, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        pred = m(x, iop)
        h = m.embed(m.features(x))
    h = torch.cat([h.double(), iop.double().view(-1, 1)], dim=1)
    ref = (h @ m.head.weight.double().T + m.head.bias.double()).squeeze(1)
    assert pred.dtype == torch.float32
    err = (pred.double() - ref).abs()
    assert err.max() <= 1e-5 * ref.abs().max()
    assert err.max() * 20 < _bf16_error(ref).max()


def test_written_predictions_are_not_rounded_to_bf16():
    m = _resnet()
    rng = np.random.default_rng(0)
    volumes = rng.integers(0, 256, (12, 16, 16, 32)).astype(np.uint8)
    std = Standardiser(vol_mean=100.0, vol_std=50.0, iop_mean=0.0, iop_std=1.0, y_mean=0.0, y_std=1.0)
    pred = predict(m, volumes, np.linspace(-1, 1, 12), std, torch.device("cpu"), 4, precision="bf16")
    as_bf16 = torch.from_numpy(pred).to(BF16).double().numpy()
    assert (pred != as_bf16).mean() > 0.9  # on bf16 heads every prediction was a bf16 value


class _FakeCuda:
    """Stand-ins for torch.cuda's answers on a card with (or without) native bf16."""

    def __init__(self, native: bool, capability=(7, 0)):
        self.native, self.capability, self.calls = native, capability, []

    def is_bf16_supported(self, including_emulation: bool = True):
        self.calls.append(including_emulation)
        return self.native or including_emulation  # every CUDA card can emulate bf16

    def is_bf16_supported_old(self):  # torch without the including_emulation argument
        self.calls.append(None)
        return True

    def get_device_capability(self, device=None):
        return self.capability


@pytest.mark.parametrize("native,expected", [(False, None), (True, BF16)])
def test_auto_precision_asks_for_native_bf16(monkeypatch, native, expected):
    fake = _FakeCuda(native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake.is_bf16_supported)
    assert dp.resolve_precision("auto", torch.device("cuda")) is expected
    assert fake.calls == [False]
    assert dp.resolve_precision("bf16", torch.device("cuda")) is BF16  # asked for explicitly: as asked
    assert dp.resolve_precision("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("capability,expected", [((7, 0), None), ((7, 5), None), ((8, 0), BF16), ((9, 0), BF16)])
def test_auto_precision_on_torch_without_the_emulation_argument(monkeypatch, capability, expected):
    fake = _FakeCuda(native=False, capability=capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake.is_bf16_supported_old)
    monkeypatch.setattr(torch.cuda, "get_device_capability", fake.get_device_capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert dp.resolve_precision("auto", torch.device("cuda")) is expected

