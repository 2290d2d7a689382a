"""Attribution methods checked against closed forms: a linear network's maps are its weights times the input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from icpcv.explain.attribution import (AttributionMaps, attribute_scans, completeness_gap, gradient, gradient_x_input,
                                       integrated_gradients, occlusion, sample_scans)
from icpcv.explain.bench import bench_case
from icpcv.models.cnn import LightCNN3D
from icpcv.train.loop import Standardiser


class LinearScanModel(nn.Module):
    """f(v, iop) = sum(w * v) + c * iop + b: every method has a closed form here."""

    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(*shape, generator=g))
        self.c = nn.Parameter(torch.tensor(2.0))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, volume, iop):
        return (volume[:, 0] * self.w).sum(dim=(1, 2, 3)) + self.c * iop + self.b


class SmoothNet(nn.Module):
    """A conv net with tanh: smooth in the input, so integrated gradients converge fast."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 5 * 8 + 1, 1)

    def forward(self, volume, iop):
        h = torch.tanh(self.conv(volume)).flatten(1)
        return self.fc(torch.cat([h, iop[:, None]], dim=1)).squeeze(1)


SHAPE = (6, 5, 8)


@pytest.fixture
def linear_case():
    g = torch.Generator().manual_seed(1)
    return LinearScanModel(SHAPE), torch.randn(3, *SHAPE, generator=g), torch.randn(3, generator=g)


def test_gradient_methods_on_a_linear_network_are_weights_times_input(linear_case):
    model, x, iop = linear_case
    w = model.w.detach().numpy()
    b = 0.5
    np.testing.assert_allclose(gradient(model, x, iop, batch_size=2), np.broadcast_to(w, x.shape), atol=1e-6)
    expected = (x.numpy() - b) * w
    np.testing.assert_allclose(gradient_x_input(model, x, iop, baseline=b), expected, atol=1e-5)
    # the integrand is constant on the path: any number of steps is exact; IOP (c * iop) is not attributed
    np.testing.assert_allclose(integrated_gradients(model, x, iop, baseline=b, steps=3, batch_size=4), expected,
                               atol=1e-5)


def test_occlusion_on_a_linear_network_spreads_each_patch_drop_over_its_voxels(linear_case):
    model, x, iop = linear_case
    w, xv, b = model.w.detach().numpy(), x.numpy(), -0.25
    patch = (3, 5, 4)  # tiles (6, 5, 8) exactly: 2 x 1 x 2 patches
    maps = occlusion(model, x, iop, patch=patch, baseline=b, batch_size=3)
    for i in range(len(xv)):
        for a in (0, 3):
            for c in (0, 4):
                block = (slice(a, a + 3), slice(0, 5), slice(c, c + 4))
                drop = ((xv[i][block] - b) * w[block]).sum()  # f(x) - f(x with the patch at b)
                np.testing.assert_allclose(maps[i][block], drop / np.prod(patch), rtol=1e-4, atol=1e-5)
    assert np.abs(completeness_gap(model, x, iop, maps, baseline=b)).max() < 1e-4
    # overlapping patches: each voxel averages the patches covering it
    stride = occlusion(model, x, iop, patch=(2, 2, 2), stride=(1, 1, 1), baseline=b, batch_size=50)
    v = (1, 1, 1)  # covered by the 8 patches starting at (0|1, 0|1, 0|1)
    drops = [((xv[0][s0:s0 + 2, s1:s1 + 2, s2:s2 + 2] - b) * w[s0:s0 + 2, s1:s1 + 2, s2:s2 + 2]).sum() / 8
             for s0 in (0, 1) for s1 in (0, 1) for s2 in (0, 1)]
    np.testing.assert_allclose(stride[0][v], np.mean(drops), rtol=1e-4)


def test_integrated_gradients_is_complete_and_converges_on_networks():
    torch.manual_seed(0)
    smooth = SmoothNet()
    x, iop = torch.randn(4, *SHAPE), torch.randn(4)
    maps = integrated_gradients(smooth, x, iop, steps=16, batch_size=7)
    diff = (smooth(x[:, None], iop) - smooth(torch.zeros(4, 1, *SHAPE), iop)).detach().numpy()
    assert np.abs(diff).min() > 1e-2
    np.testing.assert_allclose(completeness_gap(smooth, x, iop, maps), 0, atol=1e-4 * np.abs(diff).max())
    # ReLU network: piecewise linear, so quadrature error, shrinking with the steps
    cnn = LightCNN3D((8, 8, 16))
    nn.init.normal_(cnn.head.weight)
    xc, ic = torch.randn(4, 8, 8, 16), torch.randn(4)
    gaps = [np.abs(completeness_gap(cnn, xc, ic, integrated_gradients(cnn, xc, ic, steps=s))).sum() for s in (4, 64)]
    assert gaps[1] < gaps[0] / 3


def test_batching_does_not_change_maps_and_the_training_flag_is_restored():
    torch.manual_seed(0)
    cnn = LightCNN3D((8, 8, 16))
    nn.init.normal_(cnn.head.weight)
    cnn.train()
    x, iop = torch.randn(3, 8, 8, 16), torch.randn(3)
    a = integrated_gradients(cnn, x, iop, steps=8, batch_size=5)
    b = integrated_gradients(cnn, x, iop, steps=8, batch_size=64)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    o1 = occlusion(cnn, x, iop, batch_size=13)
    o2 = occlusion(cnn, x, iop, batch_size=1000)
    np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=1e-6)
    assert cnn.training  # restored after eval-mode attribution
    with pytest.raises(ValueError, match="IOP"):
        gradient(cnn, x, iop[:2])


def test_attribute_scans_gives_mmhg_and_the_npz_round_trips(tmp_path):
    model = LinearScanModel(SHAPE, seed=3)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=(3,) + SHAPE).astype(np.uint8)
    iop = np.array([12.0, 20.0, 31.0])
    std = Standardiser(vol_mean=60.0, vol_std=30.0, iop_mean=20.0, iop_std=8.0, y_mean=15.0, y_std=10.0)
    maps = attribute_scans(model, raw, iop, std, scan_ids=["a", "b", "c"], subjects=["1", "1", "2"],
                           methods=("integrated_gradients", "gradient", "occlusion"), patch=(3, 5, 4), steps=4)
    w = model.w.detach().numpy()
    # predicted ICP in mmHg = y_mean + y_std * f(standardised scan): sum of IG = change from the mean-intensity scan
    expected_ig = std.y_std * (raw - std.vol_mean) / std.vol_std * w
    np.testing.assert_allclose(maps.maps["integrated_gradients"], expected_ig, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(maps.maps["gradient"], np.broadcast_to(std.y_std / std.vol_std * w, raw.shape),
                               rtol=1e-5)
    np.testing.assert_allclose(maps.maps["occlusion"].sum(axis=(1, 2, 3)), expected_ig.sum(axis=(1, 2, 3)),
                               rtol=1e-4)
    assert set(maps.seconds) == {"integrated_gradients", "gradient", "occlusion"}
    assert maps.baseline_intensity == 60.0
    path = tmp_path / "saliency_cnn.npz"
    maps.save(path)
    back = AttributionMaps.load(path)
    assert back.scan_ids == ["a", "b", "c"] and back.subjects == ["1", "1", "2"]
    assert back.settings["patch"] == [3, 5, 4] and back.settings["iop"] == "held at each scan's value"
    for k, m in maps.maps.items():
        scale = np.abs(m).reshape(3, -1).max(axis=1).reshape(-1, 1, 1, 1)
        assert np.abs(back.maps[k] - m).max() <= (scale * 2**-10).max()  # float16: 10-bit mantissa
    with np.load(path, allow_pickle=False) as stored:  # compact: float16 maps, one float32 scale per scan
        assert stored["map_occlusion"].dtype == np.float16 and stored["scale_occlusion"].shape == (3,)


def test_sample_scans_takes_up_to_n_per_monkey_reproducibly():
    ids = [f"s{i}" for i in range(20)]
    subjects = ["1"] * 12 + ["2"] * 3 + ["10"] * 5
    a = sample_scans(ids, subjects, 4, seed=1, fold=2)
    assert a == sample_scans(ids, subjects, 4, seed=1, fold=2)
    assert a != sample_scans(ids, subjects, 4, seed=1, fold=3)
    chosen = dict(zip(ids, subjects))
    counts = {s: sum(chosen[x] == s for x in a) for s in ("1", "2", "10")}
    assert counts == {"1": 4, "2": 3, "10": 4}
    assert a == [x for x in ids if x in set(a)]  # order kept


def test_bench_case_times_every_method():
    rows = bench_case("cnn", (8, 8, 16), n_scans=2, repeat=1, steps=4)
    assert [r["method"] for r in rows] == ["gradient", "gradient_x_input", "integrated_gradients", "occlusion"]
    assert all(r["seconds_per_scan"] > 0 for r in rows)
    assert rows[3]["passes"].startswith("~96 fwd")  # default patch 2x2x3 on 8x8x16: 4 x 4 x 6 patches


@pytest.mark.gpu
def test_maps_on_cuda_match_the_cpu_and_repeat_exactly():
    """For the device check: the same maps on the GPU as on the CPU (fp32, no TF32), bit-identical run to run."""
    from icpcv.models.resnet3d import ResNet3D

    torch.manual_seed(0)
    for net in (LightCNN3D((20, 20, 48)), ResNet3D(18, base_width=8)):
        last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.normal_(last.weight, std=0.1)
        x, iop = torch.randn(3, 20, 20, 48), torch.randn(3)
        cpu = {m: f(net, x, iop) for m, f in (("ig", integrated_gradients), ("occ", occlusion))}
        net.cuda()
        for m, f in (("ig", integrated_gradients), ("occ", occlusion)):
            first, second = f(net, x.cuda(), iop.cuda()), f(net, x.cuda(), iop.cuda())
            np.testing.assert_array_equal(first, second)
            scale = np.abs(cpu[m]).max()
            np.testing.assert_allclose(first, cpu[m], atol=1e-4 * scale)
