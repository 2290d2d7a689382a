"""The GPU data path of a fold: compact volumes resident on the device (or streamed), and the step's precision.

* Storage: a fold's volumes are kept as uint8 when every voxel is an integer in 0-255 (OCT
  exports and the phantom are), else as float16 when that is exact, else float32
  (:func:`compact_dtype`); they are standardised per batch on the device, so the device holds
  1 byte per voxel, not 4.
* Residency (:func:`choose_mode`): ``resident`` when the fold's volumes fit in half of the free
  device memory (``torch.cuda.mem_get_info``), else ``stream``: batches are gathered on the
  host into pinned buffers and copied with ``non_blocking=True`` on a side stream one batch
  ahead, so the copy of batch k+1 overlaps the step of batch k. On a CPU both are plain tensors.
* The step's settings (:class:`StepSettings`): bf16 autocast on CUDA (where supported) and the
  channels-last 3D memory format on CUDA; indices and augmentation parameters travel in pinned,
  non-blocking copies. The step itself (forward, backward, the fused optimiser) is in
  :mod:`icpcv.train.loop`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from icpcv.config import DATA_MODES, PRECISIONS

#: without a count of the step's memory: the share of the free device memory the volumes may take
RESIDENT_FRACTION = 0.5
#: with a count: the share of the counted peak kept free for what is not counted (workspaces, fragmentation)
MARGIN = 0.10


# ---------------------------------------------------------------- storage

def _fits_uint8(v: np.ndarray) -> bool:
    if v.dtype == np.uint8:
        return True
    if v.size == 0:
        return True
    if np.issubdtype(v.dtype, np.integer):
        return bool(v.min() >= 0 and v.max() <= 255)
    return bool(np.isfinite(v).all() and v.min() >= 0 and v.max() <= 255 and np.array_equal(v, np.floor(v)))


def _fits_fp16(v: np.ndarray) -> bool:
    if v.dtype in (np.uint8, np.int8, np.float16):
        return True
    with np.errstate(over="ignore"):
        return bool(np.array_equal(v.astype(np.float16).astype(v.dtype), v))


def compact_dtype(v: np.ndarray) -> np.dtype:
    """The smallest of uint8, float16, float32 that holds every value of ``v`` exactly."""
    if _fits_uint8(v):
        return np.dtype(np.uint8)
    if _fits_fp16(v):
        return np.dtype(np.float16)
    return np.dtype(np.float32)


_RANK = {np.dtype(np.uint8): 0, np.dtype(np.float16): 1, np.dtype(np.float32): 2}


def load_compact(get: Callable[[list], np.ndarray], ids, chunk: int = 32) -> np.ndarray:
    """Volumes of ``ids`` through ``get`` (e.g. ``VolumeStore.get``) in the smallest exact dtype.

    Reads ``chunk`` scans at a time, so the host never holds the whole fold as float32.
    """
    ids = list(ids)
    out = None
    for s in range(0, len(ids), chunk):
        part = np.asarray(get(ids[s:s + chunk]))
        dt = compact_dtype(part)
        if out is None:
            out = np.empty((len(ids),) + part.shape[1:], dtype=dt)
        elif _RANK[dt] > _RANK[out.dtype]:
            out = out.astype(dt)  # widening is exact: 0-255 integers are exact in float16
        out[s:s + len(part)] = part.astype(out.dtype, copy=False)
    if out is None:
        out = np.empty((0,), dtype=np.float32)
    return out


# ---------------------------------------------------------------- device choices

def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    ``auto`` is bf16 only where the GPU runs it natively (compute capability 8.0 or newer, or
    ROCm): ``torch.cuda.is_bf16_supported()`` also says True where bf16 is only emulated
    (V100, T4), slower than fp32, so it is asked with ``including_emulation=False``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without that argument: native bf16 is ROCm or compute capability 8.0+
            native = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native else None
    return torch.bfloat16


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f}"


def plan_residency(volume_bytes: int, peak_bytes: int, free_bytes: int, margin: float = MARGIN) -> tuple[str, str]:
    """``(mode, why)``: keep the volumes on the device only if the step (training or prediction)
    still fits beside them: resident when ``volume_bytes + peak_bytes * (1 + margin) <= free_bytes``,
    else streamed. ``why`` states the numbers, and says so when even a streamed step does not fit.

    ``peak_bytes`` is the step's counted peak (:mod:`icpcv.models.memory`, on the meta device):
    the decision is made before any activation exists.
    """
    need = peak_bytes * (1 + margin)
    numbers = (f"{_gib(volume_bytes)} GiB volumes + {_gib(peak_bytes)} GiB step "
               f"(+{margin:.0%}) = {_gib(volume_bytes + need)} GiB")
    if volume_bytes + need <= free_bytes:
        return "resident", f"{numbers} fit in the {_gib(free_bytes)} GiB free"
    if need <= free_bytes:
        return "stream", f"{numbers} exceed the {_gib(free_bytes)} GiB free; streamed, the step fits"
    return "stream", (f"{numbers} exceed the {_gib(free_bytes)} GiB free, and the step alone "
                      f"({_gib(need)} GiB) does too: it will run out of memory; lower the batch size")


def choose_mode(nbytes: int, device: torch.device, requested: str = "auto",
                peak_bytes: int | None = None) -> tuple[str, str]:
    """``(mode, why)``: keep ``nbytes`` of volumes on the device, or stream them from the host.

    On CUDA with the step's counted peak (``peak_bytes``): :func:`plan_residency`. Without a
    count (a network the planner was not asked about): resident when the volumes take at most
    half of the free memory, and ``why`` says that the step was not counted.
    """
    if requested not in DATA_MODES:
        raise ValueError(f"data mode {requested!r}: use one of {', '.join(DATA_MODES)}")
    if requested != "auto":
        return requested, "as asked"
    if device.type != "cuda":
        return "resident", f"{device.type} device: the volumes stay in host memory"
    free, total = torch.cuda.mem_get_info(device)
    if peak_bytes is not None:
        return plan_residency(nbytes, peak_bytes, free)
    budget = RESIDENT_FRACTION * free
    if nbytes <= budget:
        return "resident", (f"{_gib(nbytes)} GiB fit in half of the {free / 2**30:.1f} GiB free "
                            "(the step's memory was not counted)")
    return "stream", f"{_gib(nbytes)} GiB exceed half of the {free / 2**30:.1f} GiB free"


def _pinned_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait (pinned + non_blocking on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---------------------------------------------------------------- volumes

class VolumeSource:
    """A fold part's volumes (compact dtype), served as standardised float32 batches on ``device``.

    ``batches(order, batch_size)`` yields ``(idx_on_device, volumes)`` with volumes
    ``(n, 1, X, Y, Z)`` float32 = ``(raw - mean) / std``, computed on the device.
    """

    def __init__(self, volumes: np.ndarray, mean: float, std: float, device: torch.device, mode: str = "resident"):
        if mode not in ("resident", "stream"):
            raise ValueError(f"mode {mode!r}")
        self.device, self.mode = torch.device(device), mode
        self.mean, self.std = float(mean), float(std)
        host = torch.from_numpy(np.ascontiguousarray(volumes))
        self.dtype = host.dtype
        self.n = host.shape[0]
        self.nbytes = host.numel() * host.element_size()
        if mode == "resident":
            self.data = host.to(self.device)
        else:
            self.data = host  # pageable; batches are gathered into pinned buffers
        self._copy_stream = torch.cuda.Stream(self.device) if mode == "stream" and self.device.type == "cuda" else None

    def _standardise(self, raw: torch.Tensor) -> torch.Tensor:
        return ((raw.to(torch.float32) - self.mean) / self.std).unsqueeze(1)

    def _issue(self, idx_cpu: torch.Tensor):
        """Stream mode: gather on the host and start the copy; returns (tensor, ready event)."""
        if self._copy_stream is None:
            return self.data.index_select(0, idx_cpu), None
        buf = torch.empty((len(idx_cpu),) + tuple(self.data.shape[1:]), dtype=self.dtype, pin_memory=True)
        torch.index_select(self.data, 0, idx_cpu, out=buf)
        with torch.cuda.stream(self._copy_stream):
            dev = buf.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return dev, ready

    def batches(self, order: torch.Tensor, batch_size: int, min_size: int = 1) -> Iterator[tuple[torch.Tensor,
                                                                                                   torch.Tensor]]:
        """Batches of the CPU index tensor ``order``; batches smaller than ``min_size`` are skipped."""
        order = order.to(torch.int64)
        cuts = [(s, min(s + batch_size, len(order))) for s in range(0, len(order), batch_size)]
        cuts = [c for c in cuts if c[1] - c[0] >= min_size]
        order_dev = _pinned_to(order, self.device)
        if self.mode == "resident":
            for a, b in cuts:
                idx = order_dev[a:b]
                yield idx, self._standardise(self.data.index_select(0, idx))
            return
        pending = self._issue(order[cuts[0][0]:cuts[0][1]]) if cuts else None
        for k, (a, b) in enumerate(cuts):
            raw, ready = pending
            if k + 1 < len(cuts):  # start the next copy before this batch's step is queued
                pending = self._issue(order[cuts[k + 1][0]:cuts[k + 1][1]])
            if ready is not None:
                cur = torch.cuda.current_stream(self.device)
                cur.wait_event(ready)
                raw.record_stream(cur)
            yield order_dev[a:b], self._standardise(raw)

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.mode}, {self.n} volumes as {dtype} ({self.nbytes / 2**20:.1f} MiB)"


# ---------------------------------------------------------------- the step

@dataclass
class StepSettings:
    amp_dtype: torch.dtype | None
    channels_last: bool

    def describe(self) -> str:
        amp = "bf16 autocast" if self.amp_dtype == torch.bfloat16 else "fp32"
        return amp + (", channels-last 3D" if self.channels_last else "")


def step_settings(device: torch.device, precision: str = "auto") -> StepSettings:
    return StepSettings(resolve_precision(precision, device), channels_last=device.type == "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device, settings: StepSettings) -> torch.nn.Module:
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return model


@contextlib.contextmanager
def deterministic_cudnn(device: torch.device):
    """cuDNN in deterministic mode without autotuning while a fold trains, so reruns and resumes
    on the same GPU give the same weights; restores the previous settings afterwards."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old
