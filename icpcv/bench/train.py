"""Training throughput on whatever device is here: step only, end to end, and the seed's way.

For one model and one input shape, in one run:

1. **step only**: standardised batches already on the device, no augmentation; the training
   step of :mod:`icpcv.train.loop` (bf16 autocast, channels-last 3D, fused AdamW on CUDA);
2. **end to end**: the data path :func:`icpcv.train.loop.fit` uses: uint8 volumes resident on
   the device (or streamed, ``--data-mode stream``), batches gathered and standardised there,
   batched augmentation with per-sample parameters, the same step;
3. **seed-style**: how the seed trained: fp32, one ``.pt`` file per scan read by a
   ``DataLoader`` with 2 workers, per-sample augmentation on the CPU, batch 4, a blocking copy
   to the device and ``loss.item()`` every step, Adamax.

It prints samples/s for each, the ratios between them, the achieved TFLOP/s (training FLOPs
per sample counted with ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
products, forward and backward), and the peak device memory on CUDA.

    python -m icpcv bench train --model resnet18 --shape 128x128x512 --batch-size 8 --steps 20
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from icpcv.config import DATA_MODES, PRECISIONS
from icpcv.models import make_cnn
from icpcv.models.resnet3d import build_resnet, parse_name
from icpcv.plausible import check_parsed
from icpcv.train import datapath as dp
from icpcv.train.augment import AugmentConfig, augment
from icpcv.train.loop import make_optimizer, pick_device, train_step
from icpcv.util import parse_shape

CPU_DEFAULTS = dict(shape=(16, 16, 32), batch_size=2, steps=2, warmup=1)
CUDA_DEFAULTS = dict(shape=(128, 128, 512), batch_size=8, steps=20, warmup=3)


def _shape(text: str) -> tuple[int, int, int]:
    return parse_shape(text, min_size=4)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="a CNN name as in --models (default resnet18)")
    p.add_argument("--shape", type=_shape, help="volume X x Y x Z(depth); default 128x128x512 on CUDA, 16x16x32 on CPU")
    p.add_argument("--batch-size", type=int, help="batch of the step-only and end-to-end phases (default 8 CUDA, "
                                                  "2 CPU)")
    p.add_argument("--steps", type=int, help="timed steps per phase (default 20 CUDA, 2 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3 CUDA, 1 CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="of phases 1 and 2 (auto: bf16 on CUDA)")
    p.add_argument("--data-mode", default="auto", choices=DATA_MODES, help="end-to-end phase: resident or stream")
    p.add_argument("--seed-batch-size", type=int, default=4, help="batch of the seed-style loop (the seed's: 4)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed-style loop")
    p.add_argument("--no-seed-loop", action="store_true", help="skip the seed-style loop")
    p.add_argument("--json", dest="json_out", help="also write the results here as JSON")
    p.add_argument("--base-width", type=int, default=64, help=argparse.SUPPRESS)  # tests: narrow ResNets


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _build(name, shape, base_width):
    if name == "cnn":
        return make_cnn(name, shape)
    parse_name(name)
    return build_resnet(name, base_width=base_width)


def train_flops_per_sample(name, shape, base_width=64) -> float:
    """Forward + backward FLOPs of one training sample, counted on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = _build(name, shape, base_width)
        model.train()
        x = torch.empty((2, 1) + tuple(shape))
        iop = torch.empty(2)
    with FlopCounterMode(display=False) as counter:
        model(x, iop).sum().backward()
    return counter.get_total_flops() / 2


def _timed(run_step, steps, warmup, device):
    for _ in range(warmup):
        run_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run_step()
    _sync(device)
    return time.perf_counter() - t0


def _phase_step_only(name, shape, batch, steps, warmup, device, precision, base_width, g):
    torch.manual_seed(0)
    settings = dp.step_settings(device, precision)
    model = dp.prepare_model(_build(name, shape, base_width), device, settings)
    opt = make_optimizer(model.parameters(), "adamw", 1e-4, 1e-4, device)
    x = torch.randn((batch, 1) + shape, generator=g).to(device)
    iop = torch.randn(batch, generator=g).to(device)
    y = torch.randn(batch, generator=g).to(device)
    model.train()
    with dp.deterministic_cudnn(device):
        seconds = _timed(lambda: train_step(model, opt, x, iop, y, settings), steps, warmup, device)
    return dict(samples_per_s=steps * batch / seconds, seconds=seconds, precision=settings.describe(),
                optimizer="adamw" + (" (fused)" if opt.defaults.get("fused") else ""))


def _volumes(n, shape, g) -> np.ndarray:
    return torch.randint(0, 256, (n,) + shape, generator=g, dtype=torch.uint8).numpy()


def _phase_end_to_end(name, shape, batch, steps, warmup, device, precision, data_mode, base_width, g):
    torch.manual_seed(0)
    n_batches = steps + warmup
    vols = _volumes(batch * n_batches, shape, g)
    mean, std = float(vols.mean()), float(vols.std())
    mode, why = dp.choose_mode(vols.nbytes, device, data_mode)
    source = dp.VolumeSource(vols, mean, std, device, mode)
    iop = torch.randn(source.n, generator=g).to(device)
    y = torch.randn(source.n, generator=g).to(device)
    settings = dp.step_settings(device, precision)
    model = dp.prepare_model(_build(name, shape, base_width), device, settings)
    opt = make_optimizer(model.parameters(), "adamw", 1e-4, 1e-4, device)
    cfg = AugmentConfig()
    irange = ((0 - mean) / std, (255 - mean) / std)
    model.train()
    order = torch.randperm(source.n, generator=g)
    batches = source.batches(order, batch, min_size=2)

    def run_step():  # the body of icpcv.train.loop.train_epoch
        idx, xb = next(batches)
        xb = augment(xb, g, cfg, irange)
        train_step(model, opt, xb, iop[idx], y[idx], settings)

    with dp.deterministic_cudnn(device):
        seconds = _timed(run_step, steps, warmup, device)
    return dict(samples_per_s=steps * batch / seconds, seconds=seconds, data_mode=mode, data_mode_reason=why,
                storage_dtype="uint8", precision=settings.describe())


class _SeedStyleScans(torch.utils.data.Dataset):
    """One float32 ``.pt`` file per scan, read and augmented per sample on the CPU, as the seed did."""

    def __init__(self, folder: Path, n: int, iop, icp, irange):
        self.folder, self.n, self.iop, self.icp, self.irange = folder, n, iop, icp, irange

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        scan = torch.load(self.folder / f"{i}.pt", weights_only=True)
        g = torch.Generator().manual_seed(i)
        scan = augment(scan[None, None], g, AugmentConfig(), self.irange)[0, 0]
        return dict(scan=scan, iop=self.iop[i], icp=self.icp[i])


def _phase_seed_style(name, shape, batch, steps, warmup, device, workers, base_width, g):
    torch.manual_seed(0)
    n = batch * (steps + warmup)
    with tempfile.TemporaryDirectory(prefix="icpcv-bench-") as tmp:
        folder = Path(tmp)
        vols = _volumes(n, shape, g)
        mean, std = float(vols.mean()), float(vols.std())
        for i in range(n):  # the seed's torch_standardized files: float32 tensors
            torch.save(torch.from_numpy((vols[i].astype(np.float32) - mean) / std), folder / f"{i}.pt")
        del vols
        irange = ((0 - mean) / std, (255 - mean) / std)
        data = _SeedStyleScans(folder, n, torch.randn(n, generator=g), torch.randn(n, generator=g), irange)
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, num_workers=workers,
                                             pin_memory=device.type == "cuda", drop_last=True,
                                             persistent_workers=False)
        model = _build(name, shape, base_width).to(device)
        opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
        model.train()
        it = iter(loader)

        def run_step():
            b = next(it)
            scan = b["scan"].float().to(device)
            iop, icp = b["iop"].float().to(device), b["icp"].float().to(device)
            opt.zero_grad()
            loss = F.mse_loss(model(scan.unsqueeze(1), iop), icp)
            loss.backward()
            opt.step()
            loss.item()  # the seed printed every batch's loss

        seconds = _timed(run_step, steps, warmup, device)
    return dict(samples_per_s=steps * batch / seconds, seconds=seconds, precision="fp32",
                loader=f"DataLoader, {workers} workers, per-sample CPU augmentation, .pt files", optimizer="adamax")


def run_bench(model="resnet18", shape=None, batch_size=None, steps=None, warmup=None, device="auto",
              precision="auto", data_mode="auto", seed_batch_size=4, workers=2, seed_loop=True,
              base_width=64) -> dict:
    dev = pick_device(device)
    defaults = CUDA_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    shape = tuple(shape or defaults["shape"])
    batch = batch_size or defaults["batch_size"]
    steps = steps or defaults["steps"]
    warmup = defaults["warmup"] if warmup is None else warmup
    if batch < 2 or seed_batch_size < 2:
        raise ValueError("batch sizes must be >= 2 (BatchNorm)")
    g = torch.Generator().manual_seed(0)
    flops = train_flops_per_sample(model, shape, base_width)
    params = sum(p.numel() for p in _build(model, shape, base_width).parameters())
    out = dict(device=str(dev), device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else
               platform.processor() or platform.machine(), torch=torch.__version__, threads=torch.get_num_threads(),
               model=model, parameters=params, shape=list(shape), batch_size=batch, steps=steps, warmup=warmup,
               train_flops_per_sample=flops, phases={})
    phases = [("step_only", lambda: _phase_step_only(model, shape, batch, steps, warmup, dev, precision, base_width,
                                                     g)),
              ("end_to_end", lambda: _phase_end_to_end(model, shape, batch, steps, warmup, dev, precision, data_mode,
                                                       base_width, g))]
    if seed_loop:
        phases.append(("seed_style", lambda: _phase_seed_style(model, shape, seed_batch_size, steps, warmup, dev,
                                                               workers, base_width, g)))
    for key, fn in phases:
        _reset_peak(dev)
        res = fn()
        res["tflops"] = flops * res["samples_per_s"] / 1e12
        res["peak_gib"] = _peak(dev)
        if key == "seed_style":
            res["batch_size"] = seed_batch_size
        out["phases"][key] = res
    ph = out["phases"]
    ratios = {"end_to_end / step_only": ph["end_to_end"]["samples_per_s"] / ph["step_only"]["samples_per_s"]}
    if "seed_style" in ph:
        ratios["end_to_end / seed_style"] = ph["end_to_end"]["samples_per_s"] / ph["seed_style"]["samples_per_s"]
        ratios["step_only / seed_style"] = ph["step_only"]["samples_per_s"] / ph["seed_style"]["samples_per_s"]
    out["ratios"] = ratios
    return out


def format_report(r: dict) -> str:
    x, y, z = r["shape"]
    lines = [f"icpcv bench train on {r['device']} ({r['device_name']}), torch {r['torch']}, {r['threads']} CPU threads",
             f"model {r['model']} ({r['parameters'] / 1e6:.2f} M parameters), input 1x{x}x{y}x{z}, "
             f"{r['steps']} timed steps after {r['warmup']} warm-up",
             f"training FLOPs per sample: {r['train_flops_per_sample'] / 1e9:.2f} GFLOP (forward + backward, "
             "FlopCounterMode)", "",
             f"{'phase':<64}{'batch':>6}{'samples/s':>12}{'TFLOP/s':>10}{'peak GiB':>10}"]
    names = {"step_only": "step only (on device, no augmentation)",
             "end_to_end": "end to end (data path + augmentation)",
             "seed_style": "seed-style (fp32, DataLoader, CPU augmentation)"}
    for key, res in r["phases"].items():
        label = names[key]
        extra = res.get("precision", "")
        if key == "end_to_end":
            extra += f", {res['data_mode']} {res['storage_dtype']}"
        label = f"{label} [{extra}]" if extra else label
        peak = f"{res['peak_gib']:.2f}" if res["peak_gib"] is not None else "-"
        lines.append(f"{label:<64}{res['batch_size'] if 'batch_size' in res else r['batch_size']:>6}"
                     f"{res['samples_per_s']:>12.2f}{res['tflops']:>10.3g}{peak:>10}")
    lines.append("")
    lines.append("ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in r["ratios"].items()))
    return "\n".join(lines)


def run_from_args(args) -> int:
    r = run_bench(model=args.model, shape=args.shape, batch_size=args.batch_size, steps=args.steps,
                  warmup=args.warmup, device=args.device, precision=args.precision, data_mode=args.data_mode,
                  seed_batch_size=args.seed_batch_size, workers=args.workers, seed_loop=not args.no_seed_loop,
                  base_width=args.base_width)
    print(format_report(r))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2) + "\n")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icpcv bench train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    check_parsed(parser, args, "bench")  # every number against its range (icpcv.plausible)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
