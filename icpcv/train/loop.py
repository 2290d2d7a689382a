"""One readable training loop for the CNNs of one fold: forward, backward, step, evaluation, checkpoint.

Read top to bottom: :func:`forward` (one batch through the network, under the step's precision),
:func:`train_step` (loss, backward, optimiser step), :func:`train_epoch` (a shuffled, augmented
pass), :func:`evaluate` (the inner-validation loss), :func:`predict` (the held-out scans, once),
and :func:`fit`, which runs the epochs, early-stops, checkpoints every epoch and resumes.

Volumes, IOP and targets are standardised with statistics of the fold's *training* scans only.
The network is fitted on the training monkeys and early-stopped on the inner-validation
monkeys (the epoch with the lowest validation loss is restored, epoch 0 = the untrained network
that predicts the training mean included); the held-out monkey is predicted once, afterwards,
by the caller.

All randomness (initialisation, shuffling, augmentation) flows from one seed through one
``torch.Generator`` whose state is checkpointed each epoch, so a resumed fold ends with the same
weights as an uninterrupted one on the same hardware.

The data path (:mod:`icpcv.train.datapath`): volumes stay in their compact dtype (uint8 for
OCT) on the device, or stream from pinned host memory when they do not fit; each batch is
standardised and augmented on the device (:mod:`icpcv.train.augment`); the step runs under
bf16 autocast with channels-last memory and a fused optimiser on CUDA, and never waits for the
device: the loss is summed on the device and read once per epoch.
"""
from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from icpcv.config import OPTIMIZERS, TrainConfig
from icpcv.errors import RunDirError
from icpcv.train import datapath as dp
from icpcv.train.augment import AugmentConfig, augment as augment_batch
from icpcv.util import atomic_write_bytes

@dataclass
class Standardiser:
    vol_mean: float
    vol_std: float
    iop_mean: float
    iop_std: float
    y_mean: float
    y_std: float
    vol_min: float = 0.0
    vol_max: float = 1.0

    @classmethod
    def fit(cls, volumes: np.ndarray, iop: np.ndarray, y: np.ndarray, chunk: int = 16) -> "Standardiser":
        # two passes over chunks of scans in float64: exact enough, and never a float64 copy of the fold
        n = max(volumes.size, 1)
        total = sum(float(volumes[s:s + chunk].sum(dtype=np.float64)) for s in range(0, len(volumes), chunk))
        mean = total / n
        ss = sum(float(np.square(volumes[s:s + chunk].astype(np.float64) - mean).sum())
                 for s in range(0, len(volumes), chunk))
        std = float(np.sqrt(ss / n)) or 1.0
        lo = float(volumes.min()) if volumes.size else 0.0
        hi = float(volumes.max()) if volumes.size else 1.0
        return cls(float(mean), std, float(np.mean(iop)), float(np.std(iop) or 1.0),
                   float(np.mean(y)), float(np.std(y) or 1.0), lo, hi)

    def intensity_range(self) -> tuple[float, float]:
        """The standardised values of the training minimum and maximum voxel."""
        return (self.vol_min - self.vol_mean) / self.vol_std, (self.vol_max - self.vol_mean) / self.vol_std


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RunDirError(f"--device {requested} asked for, but CUDA is not available here")
    return torch.device(requested)


def _compact(volumes: np.ndarray) -> np.ndarray:
    if volumes.dtype in (np.uint8, np.float16, np.float32):
        return volumes
    return volumes.astype(dp.compact_dtype(volumes))


@dataclass
class _Part:
    """One part of a fold (training, validation or test scans) on the device."""
    source: dp.VolumeSource
    iop: torch.Tensor
    y: torch.Tensor | None


def _part(volumes, iop, y, std: Standardiser, device, mode: str) -> _Part:
    i = torch.from_numpy(((np.asarray(iop, np.float32) - std.iop_mean) / std.iop_std).astype(np.float32))
    t = None if y is None else torch.from_numpy(((np.asarray(y, np.float32) - std.y_mean) / std.y_std)
                                                .astype(np.float32))
    src = dp.VolumeSource(_compact(np.asarray(volumes)), std.vol_mean, std.vol_std, device, mode)
    return _Part(src, i.to(device), None if t is None else t.to(device))


def make_optimizer(params, name: str, lr: float, weight_decay: float, device: torch.device):
    """AdamW fused on CUDA; Adam fused on CUDA; Adamax (the seed's) with foreach on CUDA."""
    cuda = device.type == "cuda"
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=cuda or None)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=cuda or None)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=weight_decay, foreach=cuda or None)
    raise ValueError(f"optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")


def forward(model, xb, ib, settings: dp.StepSettings) -> torch.Tensor:
    """One batch through the network, as float32 predictions (standardised units)."""
    if settings.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last_3d)
    with dp.autocast(xb.device, settings.amp_dtype):
        return model(xb, ib).float()


def train_step(model, opt, xb, ib, tb, settings: dp.StepSettings) -> torch.Tensor:
    """One optimiser step; returns the batch's mean loss as a device tensor (no host sync)."""
    loss = F.mse_loss(forward(model, xb, ib, settings), tb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_epoch(model, opt, part: _Part, cfg: TrainConfig, g: torch.Generator, settings: dp.StepSettings,
                aug: AugmentConfig, intensity_range=(0.0, 1.0)) -> torch.Tensor:
    """One pass over ``part`` in an order drawn from ``g``, each batch augmented (draws from ``g``)
    when ``cfg.augment``; returns the summed loss on the device."""
    model.train()
    order = torch.randperm(part.source.n, generator=g)
    total = torch.zeros((), device=part.source.device)
    for idx, xb in part.source.batches(order, cfg.batch_size, min_size=2):  # BatchNorm needs two samples
        if cfg.augment:
            xb = augment_batch(xb, g, aug, intensity_range)
        total += train_step(model, opt, xb, part.iop[idx], part.y[idx], settings) * len(idx)
    return total


@torch.no_grad()
def evaluate(model, part: _Part, batch_size: int, settings: dp.StepSettings) -> float:
    """Mean squared error on ``part`` (standardised target), read once from the device."""
    model.eval()
    total = torch.zeros((), device=part.source.device, dtype=torch.float64)
    for idx, xb in part.source.batches(torch.arange(part.source.n), batch_size):
        p = forward(model, xb, part.iop[idx], settings)
        total += F.mse_loss(p, part.y[idx], reduction="sum").double()
    return float(total) / max(part.source.n, 1)  # the one host sync of an evaluation


@torch.no_grad()
def predict(model, volumes, iop, std: Standardiser, device, batch_size: int = 64, *, precision: str = "auto",
            data_mode: str = "auto", peak_bytes: int | None = None) -> np.ndarray:
    """Predictions in mmHg for ``volumes``, through the same data path and precision as training.

    On a GPU, ``batch_size`` should be the planned prediction batch and ``peak_bytes`` the
    counted peak of its forward (:mod:`icpcv.models.memory`): the training batch proved only
    the training step's memory.
    """
    device = torch.device(device)
    volumes = _compact(np.asarray(volumes))
    mode, _ = dp.choose_mode(volumes.nbytes, device, data_mode, peak_bytes)
    part = _part(volumes, iop, None, std, device, mode)
    settings = dp.step_settings(device, precision)
    model.eval()
    out = [forward(model, xb, part.iop[idx], settings)
           for idx, xb in part.source.batches(torch.arange(part.source.n), batch_size)]
    if not out:
        return np.empty(0)
    return torch.cat(out).cpu().numpy().astype(np.float64) * std.y_std + std.y_mean


# ---- the epoch checkpoint


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rng_states() -> dict:
    """Every global RNG a training step could touch (torch CPU and CUDA, numpy, random), as tensors."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return dict(torch=torch.get_rng_state(),
                cuda=list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
                numpy=torch.from_numpy(np_state[1].astype(np.int64)),
                numpy_pos=torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
                numpy_gauss=torch.tensor([np_state[4]], dtype=torch.float64),
                python=torch.tensor(py_state[1], dtype=torch.int64), python_version=py_state[0])


def _set_rng_states(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if st["cuda"] and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
    pos, has_gauss = (int(x) for x in st["numpy_pos"])
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(st["numpy_gauss"][0])))
    random.setstate((int(st["python_version"]), tuple(int(x) for x in st["python"]), None))


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch an epoch checkpoint was written after, or None if it is unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # corrupt: fit() reports it with what to do
        return None


def fit(model: torch.nn.Module, train: tuple, val: tuple, cfg: TrainConfig, device: torch.device, *,
        seed: int = 0, aug: AugmentConfig | None = None, checkpoint: Path | None = None,
        on_epoch: Callable[[dict], None] | None = None, log: Callable[[str], None] | None = None,
        details: dict | None = None, peak_bytes: int | None = None):
    """Train ``model`` on ``train = (volumes, iop, y)``, early-stop on ``val``.

    ``seed`` seeds the one generator behind shuffling and augmentation (``aug``, default
    :class:`AugmentConfig`, applied when ``cfg.augment``); the caller seeds the initialisation.
    Returns ``(model, standardiser, history)``; history is a list of per-epoch dicts with
    ``epoch, train_loss, val_loss, seconds`` (losses are MSE on the standardised target).
    With ``checkpoint`` set, the state after every epoch is saved there atomically and an
    existing checkpoint is resumed from. ``log`` receives a line saying which data path ran;
    ``details``, if given, is filled with the same as a dict (for the fold record).
    ``peak_bytes``: the training step's counted peak on a GPU, for the resident/streamed decision.
    """
    device = torch.device(device)
    aug = aug if aug is not None else AugmentConfig()
    std = Standardiser.fit(*train)
    nbytes = sum(_compact(np.asarray(p[0])).nbytes for p in (train, val))
    mode, why = dp.choose_mode(nbytes, device, cfg.data_mode, peak_bytes)
    settings = dp.step_settings(device, cfg.precision)
    tr = _part(*train, std, device, mode)
    va = _part(*val, std, device, mode)
    g = torch.Generator().manual_seed(seed)
    dp.prepare_model(model, device, settings)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, device)
    # everything with a state_dict that the epoch checkpoint carries (add a grad scaler / scheduler here)
    stateful = dict(model=model, optimizer=opt)
    fused = bool(opt.defaults.get("fused") or opt.defaults.get("foreach"))
    info = dict(device=str(device), data_mode=mode, data_mode_reason=why,
                storage_dtype=str(tr.source.dtype).replace("torch.", ""), volume_mib=round(nbytes / 2**20, 1),
                precision=settings.describe(), optimizer=cfg.optimizer + (" (fused)" if opt.defaults.get("fused")
                                                                          else " (foreach)" if fused else ""))
    if details is not None:
        details.update(info)
    if log is not None:
        log(f"data path: volumes {info['data_mode']} on {device} ({why}) as {info['storage_dtype']}; "
            f"{info['precision']}; {info['optimizer']}")
    with dp.deterministic_cudnn(device):
        history: list[dict] = []
        start = 1
        best = dict(epoch=0, val_loss=evaluate(model, va, cfg.batch_size, settings),
                    state={k: x.detach().clone() for k, x in model.state_dict().items()})
        history.append(dict(epoch=0, train_loss=float("nan"), val_loss=best["val_loss"], seconds=0.0))
        if checkpoint is not None and Path(checkpoint).exists():
            start, best, history = _resume(checkpoint, stateful, g, device)
        n = tr.source.n
        irange = std.intensity_range()
        for epoch in range(start, cfg.epochs + 1):
            if epoch - best["epoch"] > cfg.patience:
                break
            t0 = time.perf_counter()
            total = train_epoch(model, opt, tr, cfg, g, settings, aug, irange)
            val_loss = evaluate(model, va, cfg.batch_size, settings)
            row = dict(epoch=epoch, train_loss=float(total) / n, val_loss=val_loss, seconds=time.perf_counter() - t0)
            history.append(row)
            if val_loss < best["val_loss"]:
                best = dict(epoch=epoch, val_loss=val_loss,
                            state={k: x.detach().clone() for k, x in model.state_dict().items()})
            if checkpoint is not None:
                atomic_write_bytes(checkpoint, _state_bytes(dict(
                    **{name: obj.state_dict() for name, obj in stateful.items()}, generator=g.get_state(),
                    rng=_rng_states(), epoch=epoch,
                    best_epoch=best["epoch"], best_val_loss=best["val_loss"],
                    best_state={k: x.cpu() for k, x in best["state"].items()},
                    history=torch.tensor([[h["epoch"], h["train_loss"], h["val_loss"], h["seconds"]]
                                          for h in history], dtype=torch.float64))))
            if on_epoch is not None:
                on_epoch(row | {"best_epoch": best["epoch"]})
        model.load_state_dict(best["state"])
    for h in history:
        h["best"] = h["epoch"] == best["epoch"]
    return model, std, history


def _resume(checkpoint: Path, stateful: dict, g: torch.Generator, device) -> tuple[int, dict, list[dict]]:
    """Load an epoch checkpoint into ``stateful`` and ``g``; returns (next epoch, best, history)."""
    try:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for name, obj in stateful.items():
            obj.load_state_dict(ck[name])
        g.set_state(ck["generator"])
        if "rng" in ck:
            _set_rng_states(ck["rng"])
        best = dict(epoch=int(ck["best_epoch"]), val_loss=float(ck["best_val_loss"]),
                    state={k: x.to(device) for k, x in ck["best_state"].items()})
        history = [dict(zip(("epoch", "train_loss", "val_loss", "seconds"), row))
                   for row in ck["history"].tolist()]
        for h in history:
            h["epoch"] = int(h["epoch"])
        return int(ck["epoch"]) + 1, best, history
    except Exception as exc:
        raise RunDirError(f"{checkpoint}: corrupt epoch checkpoint ({type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0][:200]}); delete it "
                          "to restart this fold from epoch 0, or rerun with --fresh") from None
