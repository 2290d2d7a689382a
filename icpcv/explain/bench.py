"""The cost of attribution per scan, for each method, on whatever device is here.

For each model and shape: random volumes through an untrained network (the cost does not depend on
the weights; the zero-initialised head is given random weights so the maps are not all zero), each
method timed on ``--scans`` scans after one warm-up scan, best of ``--repeat``, in seconds per scan
(device synchronised). Forward and backward passes per scan are printed with it: integrated
gradients ``steps`` forward+backward, gradient x input one, occlusion one forward per patch.

    python -m icpcv.explain.bench                       # CPU: cnn at 20x20x48, resnet18 at 32x32x64
    python -m icpcv.explain.bench --device cuda --case resnet18:128x128x512 --case resnet50:128x128x512
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from icpcv.explain.attribution import METHODS, default_patch, model_device, run_method
from icpcv.models import make_cnn
from icpcv.util import parse_shape

CPU_CASES = ("cnn:20x20x48", "resnet18:32x32x64")


def passes_per_scan(method: str, shape, *, steps: int = 32, patch=None) -> str:
    if method == "integrated_gradients":
        return f"{steps} fwd+bwd"
    if method in ("gradient", "gradient_x_input"):
        return "1 fwd+bwd"
    patch = patch or default_patch(shape)
    n = int(np.prod([-(-s // p) for s, p in zip(shape, patch)]))
    return f"~{n} fwd (patch {'x'.join(map(str, patch))})"


def time_method(model, method: str, volumes: torch.Tensor, iop: torch.Tensor, *, repeat: int = 3,
                **kw) -> float:
    """Best-of-``repeat`` wall seconds per scan of ``method`` on ``volumes`` (after one warm-up scan)."""
    device = model_device(model)
    run_method(method, model, volumes[:1], iop[:1], **kw)
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run_method(method, model, volumes, iop, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best / len(volumes)


def bench_case(name: str, shape, *, device: str = "cpu", n_scans: int = 4, methods=METHODS, steps: int = 32,
               batch_size: int | None = None, repeat: int = 3, seed: int = 0) -> list[dict]:
    """Seconds per scan of each method for model ``name`` at ``shape``: one dict per method."""
    torch.manual_seed(seed)
    model = make_cnn(name, tuple(shape))
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(last.weight, std=0.1)  # the heads start at zero: every gradient would be zero
    model.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    volumes = torch.randn((n_scans, 1) + tuple(shape), generator=g).to(device)
    iop = torch.randn(n_scans, generator=g).to(device)
    rows = []
    for method in methods:
        seconds = time_method(model, method, volumes, iop, repeat=repeat, steps=steps, batch_size=batch_size)
        rows.append(dict(model=name, shape="x".join(map(str, shape)), method=method, seconds_per_scan=seconds,
                         passes=passes_per_scan(method, shape, steps=steps), device=str(device)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m icpcv.explain.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", help="MODEL:XxYxZ (repeatable); default: " + ", ".join(CPU_CASES))
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    cases = args.case or list(CPU_CASES)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else ""))
    print("| model | shape | method | seconds per scan | passes per scan | device |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in cases:
        name, _, shape_text = case.partition(":")
        shape = parse_shape(shape_text)
        for r in bench_case(name, shape, device=args.device, n_scans=args.scans, steps=args.steps,
                            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                            batch_size=args.batch_size, repeat=args.repeat):
            print(f"| {r['model']} | {r['shape']} | {r['method']} | {r['seconds_per_scan']:.4f} | {r['passes']} "
                  f"| {r['device']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
