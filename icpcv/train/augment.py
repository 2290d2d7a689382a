"""Batched OCT augmentation on the device, with per-sample random parameters.

Covers the seed's torchio chain (flip, affine rotation/translation/scale, Gaussian blur, noise,
gamma), two OCT-specific ones: multiplicative speckle and A-scan (depth) shifts, a shift of
the whole volume along depth plus a per-B-scan jitter (axial eye motion between B-scans), and
an intensity gain and offset (so that brightness cannot serve as a monkey's fingerprint). It
differs from the seed on purpose in one place: the seed's ``RandomFlip(axes=2)`` flipped the
*depth* axis, turning the eye inside out; here only the lateral axes X and Y are flipped.

Randomness: every parameter of every sample is drawn from the caller's CPU ``torch.Generator``
(:func:`draw`), always the same number of draws per batch whatever the probabilities, and moved
to the device in one pinned, non-blocking copy. Voxel-wise noise (speckle, additive noise) comes
from a device generator seeded by one more draw from the same CPU generator, so the CPU
generator's state alone fixes the augmentation: checkpointing it makes resume exact. Decisions
such as "does any sample in this batch blur?" are taken from the CPU copy of the parameters, so
the step never waits for the device. A sample whose transform is off is passed through
unchanged, bit for bit.

Volumes are ``(N, 1, X, Y, Z)`` with Z = depth, already standardised; intensity transforms
(speckle, gamma) act on the intensity mapped to [0, 1] by the training range
(``intensity_range``, the standardised values of the training minimum and maximum), and the
affine pads with the training minimum (dark background), not with the mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    p_flip: float = 0.5  # each lateral axis (X, Y) independently
    p_affine: float = 0.5
    rotate_deg: float = 10.0  # en-face rotation about the depth axis, +- (the seed: torchio degrees (0, 0, 10))
    tilt_deg: float = 3.0  # rotation about X and about Y, +-
    translate: float = 0.03  # +- fraction of each axis
    scale: tuple[float, float] = (0.9, 1.1)  # > 1 zooms in
    p_depth_shift: float = 0.5
    depth_shift: float = 0.03  # +- fraction of the depth axis, whole volume
    bscan_jitter: float = 0.004  # SD of the per-B-scan depth shift, fraction of depth
    p_blur: float = 0.2
    blur_sigma: float = 1.0  # largest Gaussian SD, voxels (the seed: RandomBlur(1))
    p_noise: float = 0.5
    noise_std: float = 0.1  # largest additive noise SD, in training-intensity SDs
    p_gamma: float = 0.3
    log_gamma: float = 0.3  # gamma = exp(U(-0.3, 0.3)) (torchio's default)
    p_speckle: float = 0.3
    speckle_sigma: float = 0.3  # largest SD of the log of the multiplicative speckle
    p_gain: float = 1.0  # intensity gain and offset, so brightness cannot fingerprint a monkey
    gain: tuple[float, float] = (0.8, 1.2)
    offset: float = 0.2  # +- training-intensity SDs

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(p_flip=0.0, p_affine=0.0, p_depth_shift=0.0, p_blur=0.0, p_noise=0.0, p_gamma=0.0, p_speckle=0.0,
                   p_gain=0.0)

    @classmethod
    def light(cls) -> "AugmentConfig":
        """The light CPU network's: lateral flips and an intensity gain and offset, nothing geometric."""
        return replace(cls.off(), p_flip=0.5, p_gain=1.0)


# columns of the per-sample scalar table
FLIP_X, FLIP_Y, SPATIAL, BLUR, NOISE, GAMMA, SPECKLE, GAIN, OFFSET = range(9)
_N_ON = 9  # uniforms for on/off decisions per sample
_N_VAL = 14  # uniforms for values per sample


@dataclass
class AugmentParams:
    """One batch's parameters on the CPU: ``theta`` (n, 3, 4) for ``affine_grid``, ``jitter`` (n, Y)
    per-B-scan depth offsets (normalised units), ``scalars`` (n, 9) per the columns above (flags
    0/1 for flips and spatial; blur SD in voxels, noise SD, gamma, speckle SD, gain, offset),
    ``seed`` for the device generator."""
    theta: torch.Tensor
    jitter: torch.Tensor
    scalars: torch.Tensor
    seed: int

    def any(self, column: int) -> bool:
        v = self.scalars[:, column]
        return bool((v != 1.0).any()) if column in (GAMMA, GAIN) else bool((v != 0.0).any())

    def packed(self) -> torch.Tensor:
        n = self.theta.shape[0]
        return torch.cat([self.theta.reshape(n, 12), self.jitter, self.scalars], dim=1).to(torch.float32)


def _rotation(rx, ry, rz) -> torch.Tensor:
    """Rotation matrices (n, 3, 3) acting on (x, y, z) vectors: Rz @ Ry @ Rx."""
    cx, sx, cy, sy, cz, sz = rx.cos(), rx.sin(), ry.cos(), ry.sin(), rz.cos(), rz.sin()
    one, zero = torch.ones_like(rx), torch.zeros_like(rx)
    Rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    Ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    Rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return Rz @ Ry @ Rx


def affine_theta(size, rx, ry, rz, scale, t) -> torch.Tensor:
    """``affine_grid`` matrices (n, 3, 4) for rotations ``rx, ry, rz`` (radians, about the X, Y and
    depth axes, in voxel units), zoom ``scale`` (> 1 magnifies) and translations ``t`` (n, 3) in
    normalised units (x, y, z order; 2 = the whole axis) of a volume of ``size = (X, Y, Z)``.

    ``affine_grid`` orders coordinates (W, H, D) = (Z, Y, X) and normalises each axis to [-1, 1];
    undoing that normalisation around the rotation keeps angles true on non-cubic volumes.
    """
    nx, ny, nz = size
    perm = torch.tensor([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)
    half = torch.diag(torch.tensor([nz / 2, ny / 2, nx / 2], dtype=torch.float64))
    R = perm @ _rotation(rx, ry, rz) @ perm.T
    A = torch.linalg.inv(half) @ R @ half / scale.view(-1, 1, 1)
    return torch.cat([A, (t.to(torch.float64) @ perm.T).unsqueeze(2)], dim=2)


def draw(shape, cfg: AugmentConfig, g: torch.Generator) -> AugmentParams:
    """Draw the parameters of a batch of ``shape = (N, 1, X, Y, Z)`` from the CPU generator ``g``.

    Always consumes the same amount of ``g`` for a given shape, whatever ``cfg`` says.
    """
    n, _, nx, ny, nz = (int(s) for s in shape)
    on = torch.rand((n, _N_ON), generator=g, dtype=torch.float64)
    u = torch.rand((n, _N_VAL), generator=g, dtype=torch.float64)
    z = torch.randn((n, ny), generator=g, dtype=torch.float64)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))  # a CPU tensor: no device sync

    def sym(col, half):  # U(-half, half)
        return (2 * u[:, col] - 1) * half

    flip_x = (on[:, 0] < cfg.p_flip).double()
    flip_y = (on[:, 1] < cfg.p_flip).double()
    affine = on[:, 2] < cfg.p_affine
    depth = on[:, 3] < cfg.p_depth_shift
    blur = on[:, 4] < cfg.p_blur
    noise = on[:, 5] < cfg.p_noise
    gamma = on[:, 6] < cfg.p_gamma
    speckle = on[:, 7] < cfg.p_speckle
    gain = on[:, 8] < cfg.p_gain
    deg = math.pi / 180
    a = affine.double()
    rx, ry, rz = sym(0, cfg.tilt_deg * deg) * a, sym(1, cfg.tilt_deg * deg) * a, sym(2, cfg.rotate_deg * deg) * a
    lo, hi = cfg.scale
    scale = torch.where(affine, lo + u[:, 3] * (hi - lo), torch.ones_like(rx))
    t = torch.stack([sym(4, cfg.translate), sym(5, cfg.translate), sym(6, cfg.translate)], 1) * 2 * a[:, None]
    t[:, 2] += sym(7, cfg.depth_shift) * 2 * depth.double()  # normalised units span 2 per axis
    theta = affine_theta((nx, ny, nz), rx, ry, rz, scale, t)
    jitter = z * cfg.bscan_jitter * 2 * depth.double()[:, None]
    zero, one = torch.zeros_like(rx), torch.ones_like(rx)
    scalars = torch.stack([
        flip_x, flip_y, (affine | depth).double(),
        torch.where(blur, u[:, 8] * cfg.blur_sigma, zero),
        torch.where(noise, u[:, 9] * cfg.noise_std, zero),
        torch.where(gamma, torch.exp(sym(10, cfg.log_gamma)), one),
        torch.where(speckle, u[:, 11] * cfg.speckle_sigma, zero),
        torch.where(gain, cfg.gain[0] + u[:, 12] * (cfg.gain[1] - cfg.gain[0]), one),
        torch.where(gain, sym(13, cfg.offset), zero),
    ], 1)
    return AugmentParams(theta.float(), jitter.float(), scalars.float(), seed)


def _to_device(params: AugmentParams, device: torch.device):
    n, ny = params.jitter.shape
    packed = params.packed()
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    theta = packed[:, :12].view(n, 3, 4)
    jitter = packed[:, 12:12 + ny]
    scalars = packed[:, 12 + ny:]
    return theta, jitter, scalars


def _blur(v: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample SD (n,), replicate padding; SD 0 is the identity."""
    n = v.shape[0]
    offs = torch.arange(-radius, radius + 1, device=v.device, dtype=v.dtype)
    s = sigma.clamp_min(1e-3).view(n, 1)
    w = torch.exp(-offs.view(1, -1) ** 2 / (2 * s**2))
    w = w / w.sum(dim=1, keepdim=True)
    for dim in (2, 3, 4):
        size = v.shape[dim]
        pad = [0] * 6
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = radius  # F.pad lists the last axis first
        vp = F.pad(v, pad, mode="replicate")
        out = torch.zeros_like(v)
        for j in range(2 * radius + 1):
            out += w[:, j].view(n, 1, 1, 1, 1) * vp.narrow(dim, j, size)
        v = out
    return v


def apply(v: torch.Tensor, params: AugmentParams, cfg: AugmentConfig,
          intensity_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Apply drawn parameters to a standardised batch ``v`` (N, 1, X, Y, Z) on any device."""
    n = v.shape[0]
    theta, jitter, scalars = _to_device(params, v.device)

    def on(col):
        return scalars[:, col].view(n, 1, 1, 1, 1)

    lo, hi = intensity_range
    if params.any(FLIP_X):
        v = torch.where(on(FLIP_X) > 0.5, v.flip(2), v)
    if params.any(FLIP_Y):
        v = torch.where(on(FLIP_Y) > 0.5, v.flip(3), v)
    if params.any(SPATIAL):
        grid = F.affine_grid(theta, list(v.shape), align_corners=False)
        grid[..., 0] += jitter.view(n, 1, -1, 1)  # depth coordinate, one offset per B-scan (Y)
        warped = F.grid_sample(v - lo, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + lo
        v = torch.where(on(SPATIAL) > 0.5, warped, v)
    if params.any(BLUR):
        radius = max(1, math.ceil(3 * cfg.blur_sigma))
        v = torch.where(on(BLUR) > 0, _blur(v, scalars[:, BLUR], radius), v)
    dg = None
    if params.any(SPECKLE) or params.any(GAMMA):
        dg = torch.Generator(device=v.device)
        dg.manual_seed(params.seed)
        span = (hi - lo) or 1.0
        x = (v - lo) / span
        if params.any(SPECKLE):
            sd = on(SPECKLE)
            x = x * torch.exp(sd * torch.randn(v.shape, generator=dg, device=v.device) - sd**2 / 2)
        if params.any(GAMMA):
            x = torch.where(on(GAMMA) != 1.0, x.clamp_min(0).pow(on(GAMMA)), x)
        touched = (on(SPECKLE) > 0) | (on(GAMMA) != 1.0)
        v = torch.where(touched, x * span + lo, v)
    if params.any(GAIN) or params.any(OFFSET):
        touched = (on(GAIN) != 1.0) | (on(OFFSET) != 0.0)
        v = torch.where(touched, v * on(GAIN) + on(OFFSET), v)
    if params.any(NOISE):
        if dg is None:
            dg = torch.Generator(device=v.device)
            dg.manual_seed(params.seed)
        v = torch.where(on(NOISE) > 0, v + on(NOISE) * torch.randn(v.shape, generator=dg, device=v.device), v)
    return v


def augment(v: torch.Tensor, g: torch.Generator, cfg: AugmentConfig | None = None,
            intensity_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Draw parameters from ``g`` (CPU) and apply them to the batch ``v``."""
    cfg = cfg or AugmentConfig()
    return apply(v, draw(v.shape, cfg, g), cfg, intensity_range)
