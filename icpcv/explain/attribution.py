"""Attribution maps: which voxels of a scan move a CNN's predicted ICP.

The networks take ``(volume[n, 1, X, Y, Z], iop[n])`` and return ``[n]``. Every method here
attributes to the **volume only**: IOP is an input too, but it is held at the scan's own value in
every forward pass, so a map answers "at this IOP, which voxels of the scan move the prediction".
What the network takes from IOP itself is not in the maps.

The low-level functions work in the network's own units (standardised volume in, standardised
ICP out) on whatever device the model is on, batched, in float32 (no autocast: bf16 gradients
are too coarse for maps), with the model in eval mode (BatchNorm uses its running statistics,
so the scans of a batch do not interact). :func:`attribute_scans` wraps them for a fold: it
standardises raw volumes and IOP with the fold's training statistics and returns maps in mmHg.

The reference ("baseline") volume of integrated gradients, gradient x input and occlusion is
``baseline`` in standardised units, 0 by default: **the training scans' mean voxel intensity**,
everywhere. It is the value the network has seen most and carries no structure; raw black (0) would
read as a strong, unusual signal on OCT, where most of the volume is dim but not black.

Methods (``METHODS``)
---------------------
``gradient``
    :math:`\\partial f / \\partial x_v` (Simonyan et al. 2014): local sensitivity, no reference.
``gradient_x_input``
    :math:`(x_v - b)\\,\\partial f / \\partial x_v` (Shrikumar et al. 2016), with reference b.
``integrated_gradients``
    :math:`(x_v - b)\\int_0^1 \\partial f(b + \\alpha (x - b)) / \\partial x_v \\, d\\alpha`
    (Sundararajan et al. 2017), the integral by ``steps``-point Gauss-Legendre quadrature on
    [0, 1]. Completeness: the map sums to :math:`f(x) - f(b)` (exactly for a network smooth in
    x as the steps grow; piecewise-linear ReLU networks leave a small quadrature error, which
    :func:`completeness_gap` measures).
``occlusion``
    A 3D patch sweep (Zeiler & Fergus 2014): patches of ``patch`` voxels on a grid of ``stride``
    (the last patch of each axis flush with the edge, so every voxel is covered) are set to the
    reference b one at a time, batched over patches; the drop :math:`\\Delta_P = f(x) - f(x_{P
    \\leftarrow b})` is spread evenly over the patch's voxels, and a voxel's value is the mean of
    :math:`\\Delta_P / |P|` over the patches that cover it. With ``stride = patch`` (the default)
    the map of a linear network sums to :math:`f(x) - f(b)`, like integrated gradients.
    The default patch is :func:`default_patch`: each axis cut into about 6, so the cost is about
    6^3 = 216 forward passes per scan whatever the shape.

References
----------
Simonyan K, Vedaldi A, Zisserman A (2014). Deep inside convolutional networks: visualising image
classification models and saliency maps. ICLR workshop, arXiv:1312.6034.
Shrikumar A, Greenside P, Shcherbina A, Kundaje A (2016). Not just a black box: learning important
features through propagating activation differences. arXiv:1605.01713.
Sundararajan M, Taly A, Yan Q (2017). Axiomatic attribution for deep networks. ICML, PMLR 70:3319-3328.
Zeiler MD, Fergus R (2014). Visualizing and understanding convolutional networks. ECCV, 818-833.
"""
from __future__ import annotations

import io
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from icpcv.config import SALIENCY_METHODS
from icpcv.util import atomic_write_bytes, natural_sorted, to_jsonable

METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "occlusion")
#: the methods a fold computes by default (``run --saliency N``): one gradient method and the perturbation method
DEFAULT_METHODS = SALIENCY_METHODS


def sample_scans(scan_ids, subjects, n: int, *, seed: int = 0, fold: int = 0) -> list[str]:
    """Up to ``n`` scans of each held-out monkey to map, drawn without replacement from
    ``numpy.random.default_rng([seed, fold])`` (monkeys in natural order); all of a monkey's scans when it
    has ``n`` or fewer. Returned in the order of ``scan_ids``."""
    ids = [str(x) for x in scan_ids]
    subjects = [str(s) for s in subjects]
    if len(ids) != len(subjects):
        raise ValueError(f"{len(ids)} scan ids but {len(subjects)} subjects")
    rng = np.random.default_rng([seed, fold])
    chosen = set()
    for subject in natural_sorted(set(subjects)):
        rows = [i for i, s in enumerate(subjects) if s == subject]
        if len(rows) > n:
            rows = rng.choice(rows, size=n, replace=False).tolist()
        chosen.update(rows)
    return [x for i, x in enumerate(ids) if i in chosen]


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode and deterministic, full-fp32 cuDNN for the duration; the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True,
                                        allow_tf32=False):
            yield model
    finally:
        model.train(was_training)


def _as_inputs(model, volumes, iop) -> tuple[torch.Tensor, torch.Tensor]:
    device = model_device(model)
    v = torch.as_tensor(volumes, dtype=torch.float32, device=device)
    if v.dim() == 4:
        v = v.unsqueeze(1)
    if v.dim() != 5 or v.shape[1] != 1:
        raise ValueError(f"volumes must be (n, 1, X, Y, Z) or (n, X, Y, Z); got {tuple(v.shape)}")
    i = torch.as_tensor(iop, dtype=torch.float32, device=device).reshape(-1)
    if len(i) != len(v):
        raise ValueError(f"{len(v)} volumes but {len(i)} IOP values")
    return v, i


def _input_gradient(model, x: torch.Tensor, iop: torch.Tensor) -> torch.Tensor:
    """d f / d x for a batch (the scans do not interact in eval mode, so the sum's gradient is per scan)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x, iop)
        (g,) = torch.autograd.grad(out.float().sum(), x)
    return g


def gradient(model, volumes, iop, *, batch_size: int = 16) -> np.ndarray:
    """Plain gradient of the output with respect to each voxel, ``(n, X, Y, Z)`` float32."""
    x, i = _as_inputs(model, volumes, iop)
    out = []
    with evaluating(model):
        for s in range(0, len(x), batch_size):
            out.append(_input_gradient(model, x[s:s + batch_size], i[s:s + batch_size])[:, 0].cpu())
    return torch.cat(out).numpy() if out else np.empty((0,) + tuple(x.shape[2:]), np.float32)


def gradient_x_input(model, volumes, iop, *, baseline: float = 0.0, batch_size: int = 16) -> np.ndarray:
    """``(x - baseline) * df/dx``, ``(n, X, Y, Z)`` float32."""
    x, i = _as_inputs(model, volumes, iop)
    out = []
    with evaluating(model):
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            out.append(((xb - baseline) * _input_gradient(model, xb, i[s:s + batch_size]))[:, 0].cpu())
    return torch.cat(out).numpy() if out else np.empty((0,) + tuple(x.shape[2:]), np.float32)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``steps``-point Gauss-Legendre rule on [0, 1] (weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(int(steps))
    return (nodes + 1) / 2, weights / 2


def integrated_gradients(model, volumes, iop, *, baseline: float = 0.0, steps: int = 32,
                         batch_size: int = 32) -> np.ndarray:
    """Integrated gradients from the reference ``baseline`` to each scan, ``(n, X, Y, Z)`` float32.

    The ``n * steps`` interpolated volumes go through the network ``batch_size`` at a time (a batch
    may mix scans); each scan's weighted gradients are summed on the device.
    """
    x, i = _as_inputs(model, volumes, iop)
    alphas, weights = (torch.as_tensor(a, dtype=torch.float32, device=x.device) for a in gauss_legendre(steps))
    n = len(x)
    total = torch.zeros_like(x)
    with evaluating(model):
        for start in range(0, n * steps, batch_size):
            stop = min(start + batch_size, n * steps)
            j = torch.arange(start, stop, device=x.device)
            scan, k = j // steps, j % steps
            a = alphas[k].view(-1, 1, 1, 1, 1)
            g = _input_gradient(model, baseline + a * (x[scan] - baseline), i[scan]) * weights[k].view(-1, 1, 1, 1, 1)
            # a plain sum per scan, not index_add_: its atomic adds on CUDA are not reproducible
            for one in range(start // steps, (stop - 1) // steps + 1):
                total[one] += g[scan == one].sum(dim=0)
    return ((x - baseline) * total)[:, 0].cpu().numpy()


def default_patch(shape, per_axis: int = 6) -> tuple[int, int, int]:
    """An occlusion patch that cuts each axis into about ``per_axis`` pieces (at least 1 voxel)."""
    return tuple(max(1, math.ceil(s / per_axis)) for s in shape)


def _starts(n: int, size: int, stride: int) -> list[int]:
    """Patch starts along one axis: a grid of ``stride``, the last one flush with the edge."""
    starts = list(range(0, max(n - size, 0) + 1, stride))
    if starts[-1] != max(n - size, 0):
        starts.append(max(n - size, 0))
    return starts


def occlusion(model, volumes, iop, *, patch=None, stride=None, baseline: float = 0.0,
              batch_size: int = 32) -> np.ndarray:
    """Occlusion sensitivity per voxel (see the module docstring), ``(n, X, Y, Z)`` float32."""
    x, i = _as_inputs(model, volumes, iop)
    shape = tuple(x.shape[2:])
    patch = tuple(int(p) for p in (patch or default_patch(shape)))
    stride = tuple(int(s) for s in (stride or patch))
    if len(patch) != 3 or len(stride) != 3 or min(patch) < 1 or min(stride) < 1:
        raise ValueError(f"patch and stride need three positive sizes; got patch={patch}, stride={stride}")
    patch = tuple(min(p, n) for p, n in zip(patch, shape))
    grids = [_starts(n, p, s) for n, p, s in zip(shape, patch, stride)]
    starts = torch.tensor([(a, b, c) for a in grids[0] for b in grids[1] for c in grids[2]], device=x.device)
    axes = [torch.arange(n, device=x.device) for n in shape]
    volume_of_patch = float(np.prod(patch))
    maps = []
    with evaluating(model), torch.no_grad():
        for xs, ist in zip(x, i):
            full = model(xs[None], ist[None]).float()
            delta_sum = torch.zeros(shape, device=x.device)
            covered = torch.zeros(shape, device=x.device)
            for s in range(0, len(starts), batch_size):
                st = starts[s:s + batch_size]
                # one boolean mask per patch, built from three 1-D indicators
                ind = [(axes[d][None, :] >= st[:, d, None]) & (axes[d][None, :] < st[:, d, None] + patch[d])
                       for d in range(3)]
                mask = ind[0][:, :, None, None] & ind[1][:, None, :, None] & ind[2][:, None, None, :]
                occluded = torch.where(mask[:, None], torch.tensor(baseline, device=x.device), xs[None])
                drop = full - model(occluded, ist.expand(len(st))).float()
                m = mask.float()
                delta_sum += torch.einsum("b,bxyz->xyz", drop / volume_of_patch, m)
                covered += m.sum(0)
            maps.append((delta_sum / covered.clamp(min=1)).cpu())
    return torch.stack(maps).numpy() if maps else np.empty((0,) + shape, np.float32)


def completeness_gap(model, volumes, iop, maps: np.ndarray, *, baseline: float = 0.0) -> np.ndarray:
    """``sum(map) - (f(x) - f(baseline))`` per scan, in the network's output units (0 = complete)."""
    x, i = _as_inputs(model, volumes, iop)
    with evaluating(model), torch.no_grad():
        diff = (model(x, i) - model(torch.full_like(x, baseline), i)).float().cpu().numpy()
    return np.asarray(maps, dtype=np.float64).reshape(len(x), -1).sum(axis=1) - diff


def run_method(method: str, model, volumes, iop, *, baseline: float = 0.0, batch_size: int | None = None,
               steps: int = 32, patch=None, stride=None) -> np.ndarray:
    """One method by name, in the network's units (standardised volume and output)."""
    kw = {} if batch_size is None else dict(batch_size=batch_size)
    if method == "gradient":
        return gradient(model, volumes, iop, **kw)
    if method == "gradient_x_input":
        return gradient_x_input(model, volumes, iop, baseline=baseline, **kw)
    if method == "integrated_gradients":
        return integrated_gradients(model, volumes, iop, baseline=baseline, steps=steps, **kw)
    if method == "occlusion":
        return occlusion(model, volumes, iop, patch=patch, stride=stride, baseline=baseline, **kw)
    raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")


@dataclass
class AttributionMaps:
    """Maps of some scans by one model, one array ``(n, X, Y, Z)`` per method, in mmHg.

    Units: ``gradient`` in mmHg of predicted ICP per raw intensity unit; the other methods in mmHg
    per voxel (a map sums to about the prediction's change from the reference volume, same IOP).
    ``seconds`` is the wall time per scan of each method (device synchronised).
    """
    scan_ids: list[str]
    subjects: list[str]
    maps: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)
    baseline_intensity: float = float("nan")  # the reference volume's raw intensity (training mean)
    settings: dict = field(default_factory=dict)
    #: absolute attribution per scan and labelled region (icpcv.explain.scoring.region_table, with model,
    #: method, fold), where the cohort has labels; None otherwise
    regions: pd.DataFrame | None = None
    #: anything else the fold found, as JSON (the run's fold job: the sanity check, the randomised copy's cost)
    extra: dict = field(default_factory=dict)

    def save(self, path) -> None:
        """One ``.npz`` (no pickles): ``scan_id``, ``subject``, ``map_<method>`` as float16, each scan
        scaled by its largest absolute value, which is stored as ``scale_<method>`` (float32);
        ``seconds_<method>``, ``baseline_intensity`` and ``settings_json`` (the settings as JSON text);
        ``regions_csv`` (the region table as CSV text) and ``extra_json`` when there are any."""
        arrays = dict(scan_id=np.asarray(self.scan_ids, dtype=str), subject=np.asarray(self.subjects, dtype=str),
                      baseline_intensity=np.float64(self.baseline_intensity),
                      settings_json=np.asarray(json.dumps(to_jsonable(self.settings))))
        if self.regions is not None:
            arrays["regions_csv"] = np.asarray(self.regions.to_csv(index=False))
        if self.extra:
            arrays["extra_json"] = np.asarray(json.dumps(to_jsonable(self.extra)))
        for name, m in self.maps.items():
            m = np.asarray(m, dtype=np.float32)
            scale = np.abs(m.reshape(len(m), -1)).max(axis=1) if len(m) else np.zeros(0, np.float32)
            safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
            arrays[f"map_{name}"] = (m / safe.reshape(-1, 1, 1, 1)).astype(np.float16)
            arrays[f"scale_{name}"] = safe
            arrays[f"seconds_{name}"] = np.float64(self.seconds.get(name, float("nan")))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> "AttributionMaps":
        with np.load(path, allow_pickle=False) as z:
            names = [k[len("map_"):] for k in z.files if k.startswith("map_")]
            maps = {n: z[f"map_{n}"].astype(np.float32) * z[f"scale_{n}"].reshape(-1, 1, 1, 1) for n in names}
            settings = json.loads(str(z["settings_json"])) if "settings_json" in z.files else {}
            regions = (pd.read_csv(io.StringIO(str(z["regions_csv"])), dtype={"scan_id": str, "subject": str,
                                                                               "model": str})
                       if "regions_csv" in z.files else None)
            extra = json.loads(str(z["extra_json"])) if "extra_json" in z.files else {}
            return cls([str(s) for s in z["scan_id"]], [str(s) for s in z["subject"]], maps,
                       {n: float(z[f"seconds_{n}"]) for n in names}, float(z["baseline_intensity"]), settings,
                       regions, extra)


def attribute_scans(model, volumes, iop_mmHg, standardiser, *, scan_ids, subjects,
                    methods=DEFAULT_METHODS, steps: int = 32, patch=None, stride=None,
                    batch_size: int | None = None) -> AttributionMaps:
    """Maps of raw scans in mmHg, for one trained fold model.

    ``volumes`` are the raw scans ``(n, X, Y, Z)`` (e.g. uint8), ``iop_mmHg`` their IOP and
    ``standardiser`` the fold's training statistics (``vol_mean, vol_std, iop_mean, iop_std,
    y_std``, as :class:`icpcv.train.loop.Standardiser` has them). The reference volume is the
    training mean intensity. Each method's wall time is measured per scan.
    """
    vol = (np.asarray(volumes, dtype=np.float32) - standardiser.vol_mean) / standardiser.vol_std
    iop = (np.asarray(iop_mmHg, dtype=np.float32) - standardiser.iop_mean) / standardiser.iop_std
    device = model_device(model)
    maps, seconds = {}, {}
    for method in methods:
        _sync(device)
        t0 = time.perf_counter()
        raw = run_method(method, model, vol, iop, steps=steps, patch=patch, stride=stride, batch_size=batch_size)
        _sync(device)
        seconds[method] = (time.perf_counter() - t0) / max(len(vol), 1)
        # network units -> mmHg: the output was standardised ICP; gradients were per standardised intensity
        unit = standardiser.y_std / (standardiser.vol_std if method == "gradient" else 1.0)
        maps[method] = (raw * unit).astype(np.float32)
    occlusion_patch = tuple(patch or default_patch(vol.shape[1:]))
    settings = dict(methods=list(methods), steps=steps, baseline="training mean intensity",
                    patch=list(occlusion_patch), stride=list(stride or occlusion_patch),
                    iop="held at each scan's value")
    return AttributionMaps(list(map(str, scan_ids)), list(map(str, subjects)), maps, seconds,
                           float(standardiser.vol_mean), settings)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
