"""GPU memory of a fold, counted before any GPU is touched: training step, prediction, volumes.

``python -m icpcv bench memory --preset seed fast --gpu-mem 80 141`` prints, for each preset and
card, the peak memory of a training step and of a prediction forward at the planned batch, the
volumes' footprint, and whether the volumes stay resident on the card or are streamed, so that
a 4-hour Slurm job is not submitted to die of an out-of-memory in epoch 1 or at prediction.

How it counts. Every tensor is a fake CPU tensor (``torch._subclasses.FakeTensorMode``): real
shapes, dtypes and strides on the meta device, no memory and almost no time. A
``TorchDispatchMode`` on top (:class:`LiveBytes`) sees every aten op of the forward, the
backward and the optimiser step, registers the storages of each op's outputs through weak
references (it keeps nothing alive) and adds up the storages still alive after each op. A
tensor is freed when its last reference goes, as the CUDA caching allocator frees a block, so
the sum follows ``torch.cuda.memory_allocated`` op by op and its maximum follows
``torch.cuda.max_memory_allocated``. The step counted is the real one
(:func:`icpcv.train.datapath.train_step`, the augmentation of :mod:`icpcv.train.augment` with
every transform of the policy switched on, the optimiser with its CUDA settings: fused AdamW /
Adam, foreach Adamax), taken twice: the second step is the steady state, with the optimiser
state allocated and the previous step's gradients held until ``zero_grad``. The fold's device
copy of the best epoch's state (:func:`icpcv.train.loop.fit`) is counted too.

Assumptions (what is not counted):

* each storage is rounded up to 512 bytes, as the caching allocator's blocks; memory it has
  reserved but not allocated (fragmentation, ``torch.cuda.memory_reserved``) is not counted;
* workspaces that cuDNN and cuBLAS take inside a kernel are allocated by the kernel, not by an
  aten op, and are not seen; they do count in ``max_memory_allocated``;
* bf16 is counted with CPU autocast on fake CPU tensors: for these networks its op lists match
  CUDA's (convolutions and linear layers in bf16, batch norm, ReLU, additions and pooling in
  their input's dtype; ``max_pool3d``, which CPU autocast alone would upcast, is kept out of
  autocast by the model, and the heads run in fp32 on both);
* channels-last 3D (used on CUDA) changes strides, not bytes;
* the CUDA context and library handles live outside PyTorch's allocator: the card's free
  memory is taken as its total less :data:`CUDA_CONTEXT_BYTES`;
* streamed volumes need two batches of raw voxels on the device besides the step (small).

Hence :data:`MARGIN`: the residency decision keeps 10% of the counted training peak free. The
counts are checked against a real CPU run in ``tests/test_memory.py`` (saved-tensor bytes and
allocated bytes on real tensors) and against ``torch.cuda.max_memory_allocated`` by
:func:`verify_plan_on_cuda` on a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from icpcv.folds import nested_trainings  # issue 21: bench memory --tune-candidates
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from icpcv.cohort.phantom import PRESETS as PHANTOMS
from icpcv.cohort.phantom import design
from icpcv.models.zoo import make_cnn
from icpcv.config import OPTIMIZERS, PRESETS, TrainConfig
from icpcv.plausible import check_parsed
from icpcv.train import datapath as dp
from icpcv.train.datapath import MARGIN, plan_residency
from icpcv.train.loop import forward, make_optimizer, train_step
from icpcv.train.augment import AugmentConfig, AugmentParams, apply, draw
from icpcv.util import parse_shape

GiB = 2**30
BLOCK = 512  # the CUDA caching allocator rounds every allocation up to a multiple of 512 bytes
CUDA_CONTEXT_BYTES = 1 * GiB  # CUDA context, cuBLAS and cuDNN handles: outside PyTorch's allocator
EVAL_BATCH_CAP = 64  # the largest prediction batch proposed (icpcv.train.loop.predict's fixed batch so far)
COUNTED_PRECISIONS = ("fp32", "bf16")  # resolved precisions (auto is decided per device first)


_BATCH_NORM = torch.ops.aten.native_batch_norm.default
_expired = getattr(torch.UntypedStorage, "_expired", torch.Storage._expired)  # StorageWeakRef.expired, minus a wrapper


def _blocks(nbytes: int, block: int = BLOCK) -> int:
    return 0 if nbytes == 0 else -(-nbytes // block) * block


def _gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f}"


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive after each aten op (``now``) and their maximum (``peak``).

    Holds weak references only, so it never keeps a tensor alive; sizes are rounded up to
    ``block`` bytes (512: the CUDA caching allocator's blocks). :meth:`pin` moves storages that the caller holds for
    the whole count (weights, optimiser state) out of the per-op liveness check, for speed.
    """

    def __init__(self, block: int = BLOCK):
        super().__init__()
        self.block = block
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._live_bytes = 0
        self._pinned: dict[int, tuple[StorageWeakRef, int]] = {}
        self._pinned_bytes = 0
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._prune()
        outputs = tree_flatten(out)[0]
        for i, t in enumerate(outputs):
            if isinstance(t, torch.Tensor):
                # the meta kernel returns batch norm's saved mean and 1/SD in a bf16 input's dtype; the CPU
                # and CUDA kernels keep them in fp32
                fp32 = func is _BATCH_NORM and i in (1, 2) and t.dtype in (torch.bfloat16, torch.float16)
                self._add(t, t.numel() * 4 if fp32 else None)
        self._sum()
        return out

    def _add(self, t: torch.Tensor, nbytes: int | None = None) -> None:
        storage = t.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref.cdata in self._pinned:
            return
        old_ref, old = self._live.get(ref.cdata, (ref, 0))
        # a storage seen again is re-measured: out= ops may have resized it
        new = _blocks(storage.nbytes() if nbytes is None else nbytes, self.block)
        self._live[ref.cdata] = (old_ref, new)
        self._live_bytes += new - old

    def _prune(self) -> None:
        dead = [k for k in self._live if _expired(k)]
        for k in dead:
            self._live_bytes -= self._live.pop(k)[1]

    def _sum(self) -> None:
        self.now = self._pinned_bytes + self._live_bytes
        self.peak = max(self.peak, self.now)

    def pin(self, tensors) -> None:
        """Count the storages of ``tensors`` as alive without checking them after every op (the caller holds them)."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ref = StorageWeakRef(storage)
            if ref.cdata in self._pinned:
                continue
            entry = self._live.pop(ref.cdata, None)
            if entry is not None:
                self._live_bytes -= entry[1]
            n = _blocks(storage.nbytes(), self.block)
            self._pinned[ref.cdata] = (ref, n)
            self._pinned_bytes += n
        self._sum()

    def mark(self) -> int:
        """The bytes alive now (after dropping what died since the last op)."""
        self._prune()
        self._sum()
        return self.now

    def reset_peak(self) -> None:
        self.peak = self.mark()


def _fake_mode() -> FakeTensorMode:
    # real CPU tensors (the augmentation's drawn parameters) may meet fake ones
    return FakeTensorMode(allow_non_fake_inputs=True)


def _amp(precision: str) -> torch.dtype | None:
    if precision not in COUNTED_PRECISIONS:
        raise ValueError(f"precision {precision!r}: the plan counts one of {', '.join(COUNTED_PRECISIONS)}")
    return torch.bfloat16 if precision == "bf16" else None


def _storage_bytes(tensors, block: int = BLOCK) -> int:
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            seen[StorageWeakRef(s).cdata] = _blocks(s.nbytes(), block)
    return sum(seen.values())


def _optimizer(params, name: str, weight_decay: float):
    try:  # the CUDA settings (fused AdamW and Adam, foreach Adamax) on the fake CPU tensors
        return make_optimizer(params, name, 1e-3, weight_decay, torch.device("cuda"))
    except (RuntimeError, TypeError, ValueError):  # torch without fused CPU kernels: same state, other temporaries
        return make_optimizer(params, name, 1e-3, weight_decay, torch.device("cpu"))


class _Decided(AugmentParams):
    """Drawn parameters whose host-side decisions were taken before the fake mode (they read values)."""

    def __init__(self, params: AugmentParams):
        super().__init__(params.theta, params.jitter, params.scalars, params.seed)
        self._any = {c: params.any(c) for c in range(params.scalars.shape[1])}

    def any(self, column: int) -> bool:
        return self._any[column]


def _worst_case_augmentation(shape, cfg: AugmentConfig) -> _Decided:
    """Parameters of a batch in which every transform the policy can apply is applied (the most memory)."""
    always = dataclasses.replace(cfg, **{f.name: 1.0 for f in dataclasses.fields(cfg)
                                         if f.name.startswith("p_") and getattr(cfg, f.name) > 0})
    return _Decided(draw(shape, always, torch.Generator().manual_seed(0)))


def _standardised_batch(batch_size: int, shape) -> torch.Tensor:
    # as icpcv.train.datapath.VolumeSource: uint8 voxels gathered, then standardised in float32 on the device
    raw = torch.empty((batch_size,) + tuple(shape), dtype=torch.uint8)
    return ((raw.to(torch.float32) - 100.0) / 50.0).unsqueeze(1)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class TrainingStepMemory:
    """Counted memory of one steady-state training step (bytes)."""
    model: str
    shape: tuple
    batch_size: int
    precision: str
    optimizer: str
    weights: int  # parameters and buffers
    best_state: int  # the fold's device copy of the best epoch's state
    gradients: int
    optimizer_state: int
    saved: int  # alive after the forward beyond what was alive before it: what the backward needs
    augmentation_peak: int  # the step's peak while the batch is augmented, before the forward
    peak: int  # the step's peak, everything included

    @property
    def held(self) -> int:
        """What stays on the device between steps."""
        return self.weights + self.best_state + self.gradients + self.optimizer_state

    @property
    def transient(self) -> int:
        """What the step needs on top of the held state: the memory a validation forward may use."""
        return self.peak - self.held

    def summary(self) -> str:
        return (f"training step at batch {self.batch_size}: peak {_gib(self.peak)} GiB = held "
                f"{_gib(self.held)} (weights {_gib(self.weights)}, best-state copy {_gib(self.best_state)}, gradients "
                f"{_gib(self.gradients)}, {self.optimizer} state {_gib(self.optimizer_state)}) + activations and "
                f"transients {_gib(self.transient)}; the forward keeps {_gib(self.saved)} GiB for the backward")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | dict(held=self.held, transient=self.transient)


@dataclass(frozen=True)
class ForwardMemory:
    """Counted memory of one forward without gradients (validation, prediction), in bytes."""
    model: str
    shape: tuple
    batch_size: int
    precision: str
    weights: int
    peak: int  # weights + input batch + the activations alive at the worst op

    @property
    def transient(self) -> int:
        return self.peak - self.weights

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | dict(transient=self.transient)


# ---------------------------------------------------------------- counting


def count_training_step(name: str, shape, batch_size: int, *, precision: str = "fp32",
                        optimizer: str = "adamw", weight_decay: float = 0.0, augment: bool = True,
                        model_fn: Callable[[], torch.nn.Module] | None = None,
                        block: int = BLOCK) -> TrainingStepMemory:
    """Count a steady-state training step of ``name`` (``make_cnn(name, shape)``, or ``model_fn()``).

    ``block``: allocation granularity (512 for CUDA; 64, the CPU allocator's alignment, to compare
    with a CPU run). Results are cached per arguments (a count of ResNet-50 takes seconds).
    """
    return _count_training_step(name, tuple(int(s) for s in shape), int(batch_size), precision, optimizer,
                                float(weight_decay), augment, model_fn, block)


@functools.lru_cache(maxsize=64)
def _count_training_step(name, shape, batch_size, precision, optimizer, weight_decay, augment, model_fn,
                         block) -> TrainingStepMemory:
    settings = dp.StepSettings(_amp(precision), channels_last=False)
    cpu = torch.device("cpu")
    cfg = AugmentConfig.light() if name == "cnn" else AugmentConfig()
    aug = _worst_case_augmentation((batch_size, 1) + shape, cfg) if augment else None
    with _fake_mode(), LiveBytes(block) as live:
        model = model_fn() if model_fn is not None else make_cnn(name, shape)
        model.train()
        weights = live.mark()
        best = {k: x.detach().clone() for k, x in model.state_dict().items()}  # held, as fit holds it
        best_state = live.mark() - weights
        opt = _optimizer(model.parameters(), optimizer, weight_decay)
        ends: list[int] = []
        hook = model.register_forward_hook(lambda *_: ends.append(live.mark()))
        for step in range(2):  # the second step is the steady state
            if step == 1:  # held by this function until the end: no need to check them after every op
                live.pin([*model.parameters(), *model.buffers(), *best.values(),
                          *(t for st in opt.state.values() for t in st.values())])
            live.reset_peak()
            xb = _standardised_batch(batch_size, shape)
            if aug is not None:
                xb = apply(xb, aug, cfg, (-2.0, 3.0))
            aug_peak = live.peak
            ib, tb = torch.empty(batch_size), torch.empty(batch_size)
            before = live.mark()
            train_step(model, opt, xb, ib, tb, settings)
            del xb, ib, tb
        hook.remove()
        return TrainingStepMemory(
            name, shape, batch_size, precision, optimizer, weights=weights, best_state=best_state,
            gradients=_storage_bytes((p.grad for p in model.parameters()), block),
            optimizer_state=_storage_bytes((t for st in opt.state.values() for t in st.values()), block),
            saved=ends[-1] - before, augmentation_peak=aug_peak, peak=live.peak)


def count_forward(name: str, shape, batch_size: int, *, precision: str = "fp32",
                  model_fn: Callable[[], torch.nn.Module] | None = None, block: int = BLOCK) -> ForwardMemory:
    """Count a forward without gradients at ``batch_size``, as validation and prediction run it (cached)."""
    return _count_forward(name, tuple(int(s) for s in shape), int(batch_size), precision, model_fn, block)


@functools.lru_cache(maxsize=256)
def _count_forward(name, shape, batch_size, precision, model_fn, block) -> ForwardMemory:
    settings = dp.StepSettings(_amp(precision), channels_last=False)
    with _fake_mode(), LiveBytes(block) as live:
        model = model_fn() if model_fn is not None else make_cnn(name, shape)
        model.eval()
        weights = live.mark()
        with torch.no_grad():
            xb = _standardised_batch(batch_size, shape)
            ib = torch.empty(batch_size)
            forward(model, xb, ib, settings)
        return ForwardMemory(name, shape, batch_size, precision, weights=weights, peak=live.peak)


def largest_eval_batch(name: str, shape: tuple, budget_bytes: int, *, precision: str = "fp32",
                       cap: int = EVAL_BATCH_CAP, model_fn: Callable[[], torch.nn.Module] | None = None) -> int:
    """The largest batch (at most ``cap``) whose no-grad forward needs at most ``budget_bytes`` beyond the weights.

    0 when not even one scan fits. The need grows linearly with the batch; the linear guess is
    checked by counting at it and at the next batch.
    """
    def need(b):
        return count_forward(name, tuple(shape), b, precision=precision, model_fn=model_fn).transient

    one, two = need(1), need(2)
    if one > budget_bytes:
        return 0
    per_scan = max(two - one, 1)
    b = int(min(cap, max(1, 1 + (budget_bytes - one) // per_scan)))
    while b > 1 and need(b) > budget_bytes:
        b -= 1
    while b < cap and need(b + 1) <= budget_bytes:
        b += 1
    return b


def volume_bytes(n_scans: int, shape, itemsize: int = 1) -> int:
    """Device bytes of ``n_scans`` volumes stored as the data path keeps them (uint8 for OCT: 1 byte per voxel)."""
    return int(n_scans) * int(np.prod(shape)) * int(itemsize)


def old_rule_resident(volume_bytes: int, free_bytes: int) -> bool:
    """What ``choose_mode`` decides today: resident when the volumes take at most half of the free memory."""
    return volume_bytes <= dp.RESIDENT_FRACTION * free_bytes


@dataclass(frozen=True)
class NetworkPlan:
    """What a fold's network may use on a GPU: the training step's peak (for the residency
    decision), and the largest prediction batch whose forward fits in what training proved."""

    precision: str  # fp32 | bf16, as resolved on the device
    train_peak: int
    eval_batch: int
    eval_peak: int

    def to_dict(self) -> dict:
        return dict(precision=self.precision, train_peak_gib=round(self.train_peak / GiB, 3),
                    eval_batch=self.eval_batch, eval_peak_gib=round(self.eval_peak / GiB, 3))


@functools.lru_cache(maxsize=16)
def _light_cnn_at(shape: tuple, width: int) -> Callable[[], torch.nn.Module]:
    """The light CNN at another channel width, as a ``model_fn`` (one object per shape and width: the counts cache)."""
    return functools.partial(make_cnn, "cnn", shape, width=width)


def plan_network(name: str, shape, train: TrainConfig, device, *, cap: int = EVAL_BATCH_CAP,
                 width: int | None = None) -> NetworkPlan:
    """The memory plan of training ``name`` with ``train`` on ``device`` (counted on the meta device, cached);
    ``width``: the light CNN's channel width (None: its default)."""
    precision = "bf16" if dp.resolve_precision(train.precision, torch.device(device)) is not None else "fp32"
    fn = None if width is None else _light_cnn_at(tuple(int(s) for s in shape), int(width))
    step = count_training_step(name, shape, train.batch_size, precision=precision, optimizer=train.optimizer,
                               weight_decay=train.weight_decay, augment=train.augment, model_fn=fn)
    eval_batch = max(1, largest_eval_batch(name, shape, step.transient, precision=precision, cap=cap, model_fn=fn))
    return NetworkPlan(precision, step.peak, eval_batch,
                       count_forward(name, shape, eval_batch, precision=precision, model_fn=fn).peak)


@functools.lru_cache(maxsize=8)
def phantom_fold_scans(phantom: str = "seed", data_seed: int = 0) -> int:
    """Scans of the largest leave-one-monkey-out fold (all but the smallest monkey) of a phantom cohort."""
    scans = design(PHANTOMS[phantom], np.random.default_rng(data_seed))
    return int(len(scans) - scans["subject"].value_counts().min())


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MemoryPlan:
    """A fold's memory on one card: what ``bench memory`` prints (bytes)."""
    preset: str | None
    card_bytes: int
    free_bytes: int
    n_scans: int
    volume_bytes: int
    train: TrainingStepMemory
    eval_batch: int
    eval: ForwardMemory | None  # at eval_batch
    eval_at_cap: ForwardMemory  # at EVAL_BATCH_CAP, loop.predict's fixed batch so far
    mode: str
    mode_reason: str
    old_rule_resident: bool
    margin: float = MARGIN

    @property
    def fits(self) -> bool:
        return self.train.peak * (1 + self.margin) <= self.free_bytes

    def summary(self) -> str:
        t = self.train
        head = (f"{self.preset or 'custom'}: {t.model} at {'x'.join(map(str, t.shape))}, batch {t.batch_size}, "
                f"{t.precision}, {t.optimizer}; card {self.card_bytes / GiB:.0f} GiB "
                f"({_gib(self.free_bytes)} free after {_gib(CUDA_CONTEXT_BYTES)} GiB for the CUDA context)")
        per_scan = self.eval_at_cap.transient / self.eval_at_cap.batch_size
        lines = [head, "  " + t.summary()]
        if self.eval is not None:
            lines.append(f"  validation / prediction forward (no grad): planned batch {self.eval_batch} needs "
                         f"{_gib(self.eval.transient)} GiB beyond the weights (training proved "
                         f"{_gib(t.transient)}); at batch {self.eval_at_cap.batch_size} "
                         f"{_gib(self.eval_at_cap.transient)} GiB (~{per_scan / GiB:.3f} GiB per scan)")
        else:
            lines.append("  validation / prediction forward: not even one scan fits")
        lines.append(f"  volumes: {self.n_scans:,} scans x {'x'.join(map(str, t.shape))} uint8 = "
                     f"{_gib(self.volume_bytes)} GiB")
        lines.append(f"  {self.mode}: {self.mode_reason}")
        old = "resident" if self.old_rule_resident else "stream"
        lines.append(f"  the old rule (resident when the volumes take at most half of the free memory): {old}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        d["eval"] = None if self.eval is None else self.eval.to_dict()
        d["eval_at_cap"] = self.eval_at_cap.to_dict()
        return d | dict(fits=self.fits, free_gib=self.free_bytes / GiB, train_peak_gib=self.train.peak / GiB,
                        volume_gib=self.volume_bytes / GiB)


def preset_settings(name: str) -> dict:
    """A preset's network, shape and training set-up as one flat dict (icpcv.config.PRESETS)."""
    p = PRESETS[name]
    return dict(model=p.model, shape=p.shape, **p.train.to_dict())


def plan_memory(preset: str | None = "seed", *, gpu_mem_gib: float = 80.0, n_scans: int | None = None,
                model: str | None = None, shape: tuple | None = None, batch_size: int | None = None,
                precision: str | None = None, optimizer: str | None = None, weight_decay: float | None = None,
                cap: int = EVAL_BATCH_CAP, margin: float = MARGIN) -> MemoryPlan:
    """The memory plan of a preset's fold (explicit arguments override it) on a card of ``gpu_mem_gib`` GiB.

    ``n_scans`` defaults to the largest fold of the ``seed`` phantom cohort.
    """
    p = preset_settings(preset) if preset else {}
    model = model or p.get("model")
    shape = tuple(shape or p.get("shape") or ())
    batch_size = batch_size or p.get("batch_size")
    precision = precision or p.get("precision") or "fp32"
    optimizer = optimizer or p.get("optimizer") or "adamw"
    weight_decay = p.get("weight_decay", 0.0) if weight_decay is None else weight_decay
    if not model or len(shape) != 3 or not batch_size:
        raise ValueError("name a preset, or give model, shape and batch size")
    n_scans = phantom_fold_scans() if n_scans is None else int(n_scans)
    card = int(gpu_mem_gib * GiB)
    free = card - CUDA_CONTEXT_BYTES
    train = count_training_step(model, shape, batch_size, precision=precision, optimizer=optimizer,
                                weight_decay=weight_decay)
    # prediction and validation follow the memory training proved, and the card
    budget = min(train.transient, int(free / (1 + margin)) - train.held)
    b = largest_eval_batch(model, shape, budget, precision=precision, cap=cap)
    vol = volume_bytes(n_scans, shape)
    mode, why = plan_residency(vol, train.peak, free, margin)
    return MemoryPlan(preset, card, free, n_scans, vol, train, b,
                      count_forward(model, shape, b, precision=precision) if b else None,
                      count_forward(model, shape, cap, precision=precision), mode, why,
                      old_rule_resident(vol, free), margin)


# ---------------------------------------------------------------- the check on a GPU


class CudaMeter:
    """``torch.cuda`` allocator statistics of one device, read after the device has finished its work."""

    def __init__(self, device: torch.device):
        self.device = device

    def allocated(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def run_step_and_prediction(name: str, shape: tuple, batch_size: int, eval_batch: int, *, precision: str,
                            optimizer: str, lr: float, weight_decay: float, device: torch.device, meter,
                            seed: int = 0) -> tuple[int, int]:
    """Measure, with ``meter``, what :func:`count_training_step` and :func:`count_forward` count, for real.

    Two training steps as ``fit`` takes them (the model, its best-state copy, the optimiser,
    the augmentation with every transform on), the second measured from the memory allocated
    before the model existed; then one prediction forward at ``eval_batch``, measured beyond
    what was allocated before it. Returns ``(training peak, prediction transient)`` in bytes.
    """
    shape = tuple(shape)
    settings = dp.step_settings(device, precision)
    cfg = AugmentConfig.light() if name == "cnn" else AugmentConfig()
    torch.manual_seed(seed)

    def batch(n):
        raw = torch.randint(0, 256, (n,) + shape, dtype=torch.uint8, device=device)
        return ((raw.to(torch.float32) - 100.0) / 50.0).unsqueeze(1)

    gc.collect()
    base = meter.allocated()
    with dp.deterministic_cudnn(device):
        model = dp.prepare_model(make_cnn(name, shape), device, settings)
        best = {k: x.detach().clone() for k, x in model.state_dict().items()}  # noqa: F841 (held, as in fit)
        opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, device)
        model.train()
        for step in range(2):
            if step == 1:
                meter.reset_peak()
            xb = apply(batch(batch_size), _worst_case_augmentation((batch_size, 1) + shape, cfg), cfg, (-2.0, 3.0))
            ib, tb = torch.randn(batch_size, device=device), torch.randn(batch_size, device=device)
            train_step(model, opt, xb, ib, tb, settings)
            del xb, ib, tb
        train = meter.peak() - base
        model.eval()
        before = meter.allocated()
        meter.reset_peak()
        with torch.no_grad():
            forward(model, batch(eval_batch), torch.randn(eval_batch, device=device), settings)
        prediction = meter.peak() - before
    return train, prediction


def verify_plan_on_cuda(preset: str = "seed", *, device: str = "cuda", eval_batch: int | None = None,
                        seed: int = 0) -> dict:
    """Run the preset's training step and a prediction at the planned batch on CUDA; compare with the plan.

    Returns planned and measured (``torch.cuda.max_memory_allocated``) bytes and their ratio
    (measured / planned) for the steady-state training step and for the prediction forward
    (:func:`run_step_and_prediction`). Without CUDA: ``{"skipped": reason}``.
    """
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    dev = torch.device(device)
    p = preset_settings(preset)
    name, shape, b = p["model"], tuple(p["shape"]), p["batch_size"]
    plan = plan_memory(preset, gpu_mem_gib=torch.cuda.get_device_properties(dev).total_memory / GiB)
    eval_batch = eval_batch or plan.eval_batch
    planned_eval = count_forward(name, shape, eval_batch, precision=p["precision"])
    train, prediction = run_step_and_prediction(name, shape, b, eval_batch, precision=p["precision"],
                                                optimizer=p["optimizer"], lr=p["lr"],
                                                weight_decay=p["weight_decay"], device=dev, meter=CudaMeter(dev),
                                                seed=seed)
    return dict(preset=preset, model=name, shape=list(shape), device=torch.cuda.get_device_name(dev),
                torch=torch.__version__, train_batch=b, train_planned=plan.train.peak, train_measured=train,
                train_ratio=train / plan.train.peak, eval_batch=eval_batch, eval_planned=planned_eval.transient,
                eval_measured=prediction, eval_ratio=prediction / planned_eval.transient)


# ---------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", nargs="+", default=["seed"], choices=sorted(PRESETS),
                   help="training preset(s) to plan (default seed)")
    p.add_argument("--gpu-mem", nargs="+", type=float, default=[80.0], metavar="GIB",
                   help="card memory in GiB (nvidia-smi's MiB / 1024), one or more (default 80)")
    p.add_argument("--n-scans", type=int, help="scans in a fold's training and validation part (default: the "
                                               "largest fold of the seed phantom)")
    p.add_argument("--model", help="override the preset's network (a --models CNN name)")
    p.add_argument("--shape", type=lambda t: parse_shape(t, min_size=4), help="override the volume shape X x Y x Z")
    p.add_argument("--batch-size", type=int, help="override the training batch")
    p.add_argument("--precision", choices=COUNTED_PRECISIONS, help="override the precision")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="override the optimiser")
    p.add_argument("--eval-cap", type=int, default=EVAL_BATCH_CAP, help="largest prediction batch proposed")
    p.add_argument("--json", dest="json_out", help="also write the plans here as JSON")
    p.add_argument("--tune-candidates", type=int, metavar="C",
                   help="also count what run --tune with C candidates trains on the preset's phantom (issue 21)")
    p.add_argument("--inner-folds", type=int, metavar="K", help="with --tune-candidates: inner folds (default: "
                                                                 "one per training monkey)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icpcv bench memory", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_parsed(parser, args, "bench")  # every number against its range (icpcv.plausible)
    print("icpcv memory plan: counted on the meta device (FakeTensorMode), not measured on a GPU; "
          f"torch {torch.__version__}")
    plans = []
    for preset in args.preset:
        for gib in args.gpu_mem:
            plan = plan_memory(preset, gpu_mem_gib=gib, n_scans=args.n_scans, model=args.model, shape=args.shape,
                               batch_size=args.batch_size, precision=args.precision, optimizer=args.optimizer,
                               cap=args.eval_cap)
            print()
            print(plan.summary())
            plans.append(plan.to_dict())
        if args.tune_candidates:  # issue 21: a count, not a measurement; each training has the plan above
            from icpcv.cohort.phantom import PRESETS as PHANTOMS  # lazy: only with --tune-candidates

            p = PRESETS[preset]
            n = nested_trainings(PHANTOMS[p.phantom].n_subjects, candidates=args.tune_candidates,
                                 inner_folds=args.inner_folds, repeats=p.repeats)
            print(f"\nrun --tune with {n['candidates']} candidates on the {preset} preset ({n['outer_folds']} outer folds, "
                  f"{n['inner_folds']} inner folds each): {n['inner']} inner trainings + {n['outer_fits']} outer fits = "
                  f"{n['total']} trainings against {n['plain']} for a plain run of one recipe: x{n['ratio']:.0f} the "
                  "GPU time (one training per unit, so each needs the memory above, no more); e.g. at the GPU "
                  "check's seconds per training, multiply by that count")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(plans, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
