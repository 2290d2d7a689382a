"""Batched augmentation: per-sample parameters, exact identity when off, geometry, determinism."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from icpcv.train.augment import (AugmentConfig, BLUR, GAIN, GAMMA, NOISE, OFFSET, SPATIAL, SPECKLE, _blur,
                                 affine_theta, apply, augment, draw)

ALL_ON = AugmentConfig(p_flip=1.0, p_affine=1.0, p_depth_shift=1.0, p_blur=1.0, p_noise=1.0, p_gamma=1.0,
                       p_speckle=1.0, p_gain=1.0)
OFF = AugmentConfig.off()


def _vol(n=4, shape=(8, 12, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1) + shape, generator=g) * 3 - 1


def test_shapes_and_dtype_preserved():
    v = _vol()
    out = augment(v, torch.Generator().manual_seed(1), ALL_ON, (-1.0, 2.0))
    assert out.shape == v.shape and out.dtype == v.dtype and torch.isfinite(out).all()


def test_identity_when_probabilities_are_zero():
    v = _vol()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        assert torch.equal(augment(v, g, OFF, (-1.0, 2.0)), v)


def test_off_samples_pass_unchanged_in_a_mixed_batch():
    v = _vol(n=40)
    cfg = replace(ALL_ON, p_flip=0.0, p_affine=0.3, p_depth_shift=0.0, p_blur=0.3, p_noise=0.3, p_gamma=0.3,
                  p_speckle=0.3, p_gain=0.3)
    p = draw(v.shape, cfg, torch.Generator().manual_seed(3))
    out = apply(v, p, cfg, (-1.0, 2.0))
    s = p.scalars
    untouched = (s[:, SPATIAL] == 0) & (s[:, BLUR] == 0) & (s[:, NOISE] == 0) & (s[:, GAMMA] == 1) & \
        (s[:, SPECKLE] == 0) & (s[:, GAIN] == 1) & (s[:, OFFSET] == 0)
    assert 0 < int(untouched.sum()) < 40
    changed = [not torch.equal(out[i], v[i]) for i in range(40)]
    for i in range(40):
        if untouched[i]:
            assert not changed[i]
    assert sum(changed) >= 0.8 * (40 - int(untouched.sum()))  # (a blur SD of 0.05 voxel changes nothing)


def test_every_sample_gets_its_own_parameters():
    v = _vol(n=1).expand(6, -1, -1, -1, -1).contiguous()  # six copies of one volume
    p = draw(v.shape, ALL_ON, torch.Generator().manual_seed(5))
    assert len({tuple(row.tolist()) for row in p.theta.view(6, -1)}) == 6
    assert len(set(p.scalars[:, BLUR].tolist())) == 6
    out = apply(v, p, ALL_ON, (-1.0, 2.0))
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.allclose(out[i], out[j])


def test_deterministic_given_the_generator_state():
    v = _vol()
    a = augment(v, torch.Generator().manual_seed(11), ALL_ON, (-1.0, 2.0))
    b = augment(v, torch.Generator().manual_seed(11), ALL_ON, (-1.0, 2.0))
    c = augment(v, torch.Generator().manual_seed(12), ALL_ON, (-1.0, 2.0))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    first = augment(v, g, ALL_ON, (-1.0, 2.0))
    g.set_state(state)
    assert torch.equal(augment(v, g, ALL_ON, (-1.0, 2.0)), first)


def test_generator_consumption_does_not_depend_on_the_probabilities():
    shape = (3, 1, 6, 7, 9)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    draw(shape, OFF, g1)
    draw(shape, ALL_ON, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_flips_are_lateral_and_exact():
    v = _vol()
    cfg = replace(OFF, p_flip=1.0)
    out = augment(v, torch.Generator().manual_seed(0), cfg)
    assert torch.equal(out, v.flip(2).flip(3))  # X and Y; never depth (dim 4)


def test_identity_theta_and_rotation_in_voxel_units():
    zero = torch.zeros(1, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    v = torch.zeros(1, 1, 16, 32, 8)
    v[0, 0, 4:12, 16, :] = 1.0  # a bar along X (8 voxels) at the middle of Y
    theta = affine_theta((16, 32, 8), zero, zero, zero, one, torch.zeros(1, 3)).float()
    grid = F.affine_grid(theta, list(v.shape), align_corners=False)
    assert torch.allclose(F.grid_sample(v, grid, align_corners=False), v, atol=1e-5)
    # a quarter turn about the depth axis on a 16 x 32 face: the bar stands along Y, still 8 voxels long
    theta = affine_theta((16, 32, 8), zero, zero, torch.tensor([math.pi / 2], dtype=torch.float64), one,
                         torch.zeros(1, 3)).float()
    out = F.grid_sample(v, F.affine_grid(theta, list(v.shape), align_corners=False), align_corners=False)
    profile_y = out[0, 0, :, :, 4].sum(0)
    profile_x = out[0, 0, :, :, 4].sum(1)
    assert (profile_y > 0.5).sum() == 8  # along Y now
    assert (profile_x > 0.5).sum() <= 2  # and thin along X


def test_depth_shift_moves_a_layer_along_depth():
    v = torch.zeros(4, 1, 6, 6, 40)
    v[:, :, :, :, 20] = 1.0  # a bright layer at depth 20
    cfg = replace(OFF, p_depth_shift=1.0, depth_shift=0.1, bscan_jitter=0.0)
    p = draw(v.shape, cfg, torch.Generator().manual_seed(4))
    out = apply(v, p, cfg, (0.0, 1.0))
    shift_vox = p.theta[:, 0, 3] * 40 / 2  # normalised units -> voxels along depth
    for i in range(4):
        profile = out[i, 0].mean((0, 1))
        centre = float((profile * torch.arange(40)).sum() / profile.sum())
        assert abs(centre - (20 - float(shift_vox[i]))) < 0.05
    assert float(shift_vox.abs().max()) > 1.0


def test_bscan_jitter_shifts_each_bscan_differently():
    v = torch.zeros(1, 1, 4, 10, 40)
    v[..., 20] = 1.0
    cfg = replace(OFF, p_depth_shift=1.0, depth_shift=0.0, bscan_jitter=0.02)
    out = augment(v, torch.Generator().manual_seed(0), cfg, (0.0, 1.0))
    centres = [(out[0, 0, :, y].mean(0) * torch.arange(40)).sum() / out[0, 0, :, y].mean(0).sum() for y in range(10)]
    assert len({round(float(c), 3) for c in centres}) == 10


def test_blur_keeps_constants_and_sigma_zero_is_identity():
    v = torch.full((2, 1, 5, 6, 7), 3.0)
    out = _blur(v, torch.tensor([0.8, 1.5]), 3)
    assert torch.allclose(out, v, atol=1e-6)
    noise = _vol(n=2, shape=(12, 12, 12))
    assert torch.equal(_blur(noise, torch.tensor([0.0, 0.0]), 3), noise)
    smoothed = _blur(noise, torch.tensor([1.0, 1.0]), 3)
    assert smoothed.std() < 0.6 * noise.std()


def test_gamma_acts_on_the_unit_intensity_range():
    v = torch.linspace(0, 1, 40).view(1, 1, 2, 4, 5).repeat(2, 1, 1, 1, 1)
    cfg = replace(OFF, p_gamma=1.0, log_gamma=0.5)
    p = draw(v.shape, cfg, torch.Generator().manual_seed(0))
    out = apply(v, p, cfg, (0.0, 1.0))
    for i in range(2):
        assert torch.allclose(out[i], v[i].pow(float(p.scalars[i, GAMMA])), atol=1e-6)
    # the same on standardised values whose training range is (-2, 3)
    w = v * 5 - 2
    out2 = apply(w, p, cfg, (-2.0, 3.0))
    assert torch.allclose((out2 + 2) / 5, out, atol=1e-5)


def test_speckle_is_multiplicative_and_mean_preserving():
    v = torch.full((2, 1, 16, 16, 16), 0.5)
    cfg = replace(OFF, p_speckle=1.0, speckle_sigma=0.3)
    out = augment(v, torch.Generator().manual_seed(0), cfg, (0.0, 1.0))
    assert abs(float(out.mean()) - 0.5) < 0.01 and float(out.std()) > 0.02
    assert torch.all(out > 0)


@pytest.mark.parametrize("cfg", [replace(OFF, p_noise=1.0), replace(OFF, p_speckle=1.0)])
def test_voxel_noise_comes_from_the_cpu_generator(cfg):
    v = _vol()
    g = torch.Generator().manual_seed(9)
    a = augment(v, g, cfg, (-1.0, 2.0))
    b = augment(v, g, cfg, (-1.0, 2.0))  # the next batch: new noise
    assert not torch.equal(a, b)
    assert torch.equal(a, augment(v, torch.Generator().manual_seed(9), cfg, (-1.0, 2.0)))


def test_gain_and_offset_per_sample():
    v = _vol(n=3)
    cfg = replace(OFF, p_gain=1.0)
    p = draw(v.shape, cfg, torch.Generator().manual_seed(0))
    out = apply(v, p, cfg)
    for i in range(3):
        gain, offset = float(p.scalars[i, GAIN]), float(p.scalars[i, OFFSET])
        assert 0.8 <= gain <= 1.2 and -0.2 <= offset <= 0.2
        assert torch.allclose(out[i], v[i] * gain + offset, atol=1e-6)


def test_the_light_networks_policy_is_flips_and_intensity_only():
    light = AugmentConfig.light()
    assert light.p_flip == 0.5 and light.p_gain == 1.0
    assert light.p_affine == light.p_depth_shift == light.p_blur == light.p_noise == light.p_gamma == 0.0
    assert light.p_speckle == 0.0
