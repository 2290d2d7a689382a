"""One readable training loop for the CNNs of one fold.

Volumes, IOP and targets are standardised with statistics of the fold's *training* scans only.
The network is fitted on the training monkeys and early-stopped on the inner-validation
monkeys (the epoch with the lowest validation loss is restored, epoch 0 = the untrained network
that predicts the training mean included); the held-out monkey is predicted once, afterwards,
by the caller.

All randomness (initialisation, shuffling, augmentation) flows from one seed through one
``torch.Generator`` whose state is checkpointed each epoch, so a resumed fold ends with the same
weights as an uninterrupted one on the same hardware.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from icpcv.errors import RunDirError
from icpcv.util import atomic_write_bytes


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 10
    augment: bool = True
    seed: int = 0


@dataclass
class Standardiser:
    vol_mean: float
    vol_std: float
    iop_mean: float
    iop_std: float
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, volumes: np.ndarray, iop: np.ndarray, y: np.ndarray) -> "Standardiser":
        v = volumes.astype(np.float64)
        return cls(float(v.mean()), float(v.std() or 1.0), float(np.mean(iop)), float(np.std(iop) or 1.0),
                   float(np.mean(y)), float(np.std(y) or 1.0))


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RunDirError(f"--device {requested} asked for, but CUDA is not available here")
    return torch.device(requested)


def _to_tensors(volumes, iop, y, std: Standardiser, device):
    v = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))
    v = ((v - std.vol_mean) / std.vol_std).unsqueeze(1).to(device)
    i = torch.from_numpy(((np.asarray(iop, np.float32) - std.iop_mean) / std.iop_std).astype(np.float32)).to(device)
    t = None if y is None else torch.from_numpy(((np.asarray(y, np.float32) - std.y_mean) / std.y_std)
                                                 .astype(np.float32)).to(device)
    return v, i, t


def _augment(v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per sample: random lateral flips in X and Y (depth is never flipped) and a random gain and
    offset of intensity, so that brightness cannot serve as a monkey's fingerprint."""
    n = v.shape[0]
    r = torch.rand((n, 4), generator=g).to(v.device)
    fx = (r[:, 0] < 0.5).view(-1, 1, 1, 1, 1)
    fy = (r[:, 1] < 0.5).view(-1, 1, 1, 1, 1)
    v = torch.where(fx, v.flip(2), v)
    v = torch.where(fy, v.flip(3), v)
    gain = (0.8 + 0.4 * r[:, 2]).view(-1, 1, 1, 1, 1)
    offset = (0.4 * r[:, 3] - 0.2).view(-1, 1, 1, 1, 1)
    return v * gain + offset


@torch.no_grad()
def _evaluate(model, v, i, t, batch_size):
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(v), batch_size):
        p = model(v[s:s + batch_size], i[s:s + batch_size])
        total += float(F.mse_loss(p.float(), t[s:s + batch_size], reduction="sum"))
        n += len(p)
    return total / max(n, 1)


@torch.no_grad()
def predict(model, volumes, iop, std: Standardiser, device, batch_size: int = 64) -> np.ndarray:
    v, i, _ = _to_tensors(volumes, iop, None, std, device)
    model.eval()
    out = [model(v[s:s + batch_size], i[s:s + batch_size]).float().cpu() for s in range(0, len(v), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) * std.y_std + std.y_mean


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def fit(model: torch.nn.Module, train: tuple, val: tuple, cfg: TrainConfig, device: torch.device, *,
        checkpoint: Path | None = None, on_epoch: Callable[[dict], None] | None = None):
    """Train ``model`` on ``train = (volumes, iop, y)``, early-stop on ``val``.

    Returns ``(model, standardiser, history)``; history is a list of per-epoch dicts with
    ``epoch, train_loss, val_loss, seconds`` (losses are MSE on the standardised target).
    With ``checkpoint`` set, the state after every epoch is saved there atomically and an
    existing checkpoint is resumed from.
    """
    std = Standardiser.fit(*train)
    tv, ti, tt = _to_tensors(*train, std, device)
    vv, vi, vt = _to_tensors(*val, std, device)
    g = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start = 1
    best = dict(epoch=0, val_loss=_evaluate(model, vv, vi, vt, cfg.batch_size),
                state={k: x.detach().clone() for k, x in model.state_dict().items()})
    history.append(dict(epoch=0, train_loss=float("nan"), val_loss=best["val_loss"], seconds=0.0))
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            g.set_state(ck["generator"])
            best = dict(epoch=int(ck["best_epoch"]), val_loss=float(ck["best_val_loss"]),
                        state={k: x.to(device) for k, x in ck["best_state"].items()})
            history = [dict(zip(("epoch", "train_loss", "val_loss", "seconds"), row)) for row in ck["history"].tolist()]
            for h in history:
                h["epoch"] = int(h["epoch"])
            start = int(ck["epoch"]) + 1
        except Exception as exc:
            raise RunDirError(f"{checkpoint}: corrupt epoch checkpoint ({type(exc).__name__}: {exc}); delete it to "
                              "restart this fold from epoch 0, or rerun with --fresh") from None
    n = len(tv)
    for epoch in range(start, cfg.epochs + 1):
        if epoch - best["epoch"] > cfg.patience:
            break
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=g)
        total = torch.zeros((), device=device)
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size].to(device)
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = tv[idx]
            if cfg.augment:
                xb = _augment(xb, g)
            loss = F.mse_loss(model(xb, ti[idx]).float(), tt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        val_loss = _evaluate(model, vv, vi, vt, cfg.batch_size)
        row = dict(epoch=epoch, train_loss=float(total) / n, val_loss=val_loss, seconds=time.perf_counter() - t0)
        history.append(row)
        if val_loss < best["val_loss"]:
            best = dict(epoch=epoch, val_loss=val_loss,
                        state={k: x.detach().clone() for k, x in model.state_dict().items()})
        if checkpoint is not None:
            atomic_write_bytes(checkpoint, _state_bytes(dict(
                model=model.state_dict(), optimizer=opt.state_dict(), generator=g.get_state(), epoch=epoch,
                best_epoch=best["epoch"], best_val_loss=best["val_loss"],
                best_state={k: x.cpu() for k, x in best["state"].items()},
                history=torch.tensor([[h["epoch"], h["train_loss"], h["val_loss"], h["seconds"]] for h in history],
                                     dtype=torch.float64))))
        if on_epoch is not None:
            on_epoch(row | {"best_epoch": best["epoch"]})
    model.load_state_dict(best["state"])
    for h in history:
        h["best"] = h["epoch"] == best["epoch"]
    return model, std, history


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
