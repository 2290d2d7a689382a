"""The CNNs as estimators: a network (the light :class:`~icpcv.models.cnn.LightCNN3D` or a 3D
ResNet) trained by :func:`icpcv.train.loop.fit` inside ``fit``, like any other model.

``fit(train, val)`` seeds torch's global generator with the fold's seed, builds a fresh network
(its initialisation draws from that generator), warm-starts a ResNet from ``--pretrained`` if
asked, then trains on the training monkeys and early-stops on the inner-validation monkeys,
resuming from the fold's epoch checkpoint when one exists. ``predict(scans)`` runs the held-out
scans through the same data path and precision.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icpcv.cohort import ScanSet
from icpcv.models.base import FitContext, Model
from icpcv.models.memory import plan_network
from icpcv.models.pretrained import load_pretrained
from icpcv.models.zoo import RESNETS, make_cnn
from icpcv.train.augment import AugmentConfig
from icpcv.train.datapath import load_compact
from icpcv.train.loop import Standardiser, checkpoint_epoch, fit, predict
from icpcv.util import file_sha256

class NetworkModel(Model):
    """A CNN of ``CNNS`` as a model: trained per fold from its :class:`FitContext`."""

    needs_volumes = True
    stochastic = True

    def __init__(self, name: str, context: FitContext | None = None, *, width: int | None = None):
        if width is not None and name != "cnn":
            raise ValueError(f"{name}: width is a setting of the light CNN only")
        self.name = name
        self.context = context if context is not None else FitContext()
        self.width = None if width is None else int(width)  # the light CNN's channel width (None: its default)

    def _net_options(self) -> dict:
        return {} if self.width is None else {"width": self.width}

    @property
    def needs_iop(self) -> bool:
        return not self.name.endswith("_scanonly")

    @property
    def augmentation(self) -> AugmentConfig:
        """The light CPU network gets flips and intensity only; the ResNets the full set."""
        return AugmentConfig.light() if self.name == "cnn" else AugmentConfig()

    def _say(self, text: str) -> None:
        if self.context.progress is not None:
            self.context.progress.message(f"{self.context.label} {self.name}: {text}")

    def fit(self, train: ScanSet, val: ScanSet | None = None) -> "NetworkModel":
        ctx = self.context
        if val is None or len(val) == 0:
            raise ValueError(f"{self.name}: a network early-stops on inner-validation scans; none were given")
        if ctx.checkpoint is not None and ctx.checkpoint.exists():
            epoch = checkpoint_epoch(ctx.checkpoint)
            self._say(f"resuming from the epoch checkpoint {ctx.checkpoint}"
                      + (f" (epoch {epoch} of {ctx.train.epochs})" if epoch is not None else " (unreadable)"))
        device = torch.device(ctx.device)
        # on a GPU, the step's memory is counted before any activation exists (docs/gpu.md, "Memory plan")
        self.plan_ = (plan_network(self.name, tuple(ctx.shape), ctx.train, device, width=self.width)
                      if device.type == "cuda" else None)
        torch.manual_seed(ctx.seed)
        network = make_cnn(self.name, tuple(ctx.shape), **self._net_options(),
                           **({} if self.name == "cnn" else {"shortcut_grad": ctx.shortcut_grad}))
        warm = None
        if ctx.pretrained and self.name in RESNETS:
            warm = load_pretrained(network, ctx.pretrained)  # InputError (naming the file) below 90% of the backbone
            self._say(warm.summary())

        def on_epoch(row):
            if ctx.progress is not None:
                ctx.progress.update(f"{ctx.label} {self.name} epoch {row['epoch']}/{ctx.train.epochs} train "
                                    f"{row['train_loss']:.3f} val {row['val_loss']:.3f} (best {row['best_epoch']})")

        data_path: dict = {}
        self.network_, self.standardiser_, history = fit(
            network, self._arrays(train), self._arrays(val), ctx.train, ctx.device, seed=ctx.seed,
            aug=self.augmentation, checkpoint=ctx.checkpoint, on_epoch=on_epoch, log=self._say, details=data_path,
            peak_bytes=self.plan_.train_peak if self.plan_ else None)
        self.learning_curve_ = pd.DataFrame(history).assign(model=self.name)
        info = dict(name=self.name, best_epoch=next(h["epoch"] for h in history if h["best"]),
                    epochs_run=history[-1]["epoch"], device=str(ctx.device),
                    parameters=int(sum(p.numel() for p in network.parameters())), data_path=data_path,
                    **self._net_options())
        if warm is not None:
            info["warm_start"] = warm.to_dict()
        if self.plan_ is not None:
            info["memory_plan"] = self.plan_.to_dict()
        self.info_ = info
        if ctx.weights is not None:
            torch.save({k: v.cpu() for k, v in network.state_dict().items()}, ctx.weights)
        return self

    @staticmethod
    def _arrays(scans: ScanSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return load_compact(scans.get_volumes, scans.ids), scans.iop, scans.icp

    def predict(self, scans: ScanSet) -> np.ndarray:
        ctx = self.context
        if self.plan_ is None:  # CPU: memory is not the limit (and a fixed batch keeps the bits as they were)
            batch = dict()
        else:
            batch = dict(batch_size=self.plan_.eval_batch, peak_bytes=self.plan_.eval_peak)
        return predict(self.network_, load_compact(scans.get_volumes, scans.ids), scans.iop, self.standardiser_,
                       ctx.device, precision=ctx.train.precision, **batch)

    def describe(self) -> dict:
        return dict(self.info_)

    # ---- kept (issue 20): the weights stay in <model>_weights.pt (tensors only); the JSON state holds
    # what predict needs beside them: the architecture's settings and the fold's standardisation
    def to_state(self) -> dict:
        ctx = self.context
        weights = Path(ctx.weights) if ctx.weights is not None else None
        if weights is None or not weights.exists():
            raise ValueError(f"{self.name}: no weights file to keep (FitContext.weights)")
        return dict(name=self.name, kind="network", shape=[int(s) for s in ctx.shape],
                    shortcut_grad=ctx.shortcut_grad, precision=ctx.train.precision,
                    standardiser=asdict(self.standardiser_), weights=weights.name,
                    weights_sha256=file_sha256(weights), **self._net_options())

    def load_state(self, state: dict) -> "NetworkModel":
        """Rebuild the network and load ``context.weights`` (``torch.load(weights_only=True)``: tensors only)."""
        ctx = self.context
        if ctx.weights is None:
            raise ValueError(f"{self.name}: FitContext.weights names no weights file")
        shape = tuple(int(s) for s in state["shape"])
        if state.get("width") is not None:
            self.width = int(state["width"])
        network = make_cnn(self.name, shape, **self._net_options(),
                           **({} if self.name == "cnn" else {"shortcut_grad": state.get("shortcut_grad", "standard")}))
        weights = torch.load(ctx.weights, map_location="cpu", weights_only=True)
        network.load_state_dict(weights)
        device = torch.device(ctx.device)
        self.network_ = network.to(device)
        self.standardiser_ = Standardiser(**state["standardiser"])
        self.plan_ = plan_network(self.name, shape, ctx.train, device, width=self.width) if device.type == "cuda" else None
        self.info_ = dict(name=self.name, reloaded=str(ctx.weights))
        return self
