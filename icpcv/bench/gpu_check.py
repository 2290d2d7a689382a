"""``icpcv bench gpu-check --out DIR``: the one prepared check for a machine with a GPU.

For whoever has a GPU (one H100/H200 takes a few minutes), in one command, every figure in one
JSON file (``DIR/gpu_check.json``, rewritten after each step, so a check cut short keeps what it
measured):

1. ``environment``: torch, CUDA, the device and its memory;
2. ``gpu_tests``: the tests marked ``gpu`` (``pytest -m gpu``): passed, failed, skipped;
3. ``bench_train``: training throughput of both presets (:mod:`icpcv.bench.train`), the
   step-only yardstick beside the end-to-end data path, with their ratio and peak memory;
4. ``memory_plan``: each preset's meta-device memory plan against ``torch.cuda.max_memory_allocated``
   of a real training step and a prediction at the planned batch (:func:`icpcv.models.memory.verify_plan_on_cuda`);
5. ``attribution_cost``: seconds per scan of each attribution method (:mod:`icpcv.explain.bench`)
   for ``resnet18`` at the ``fast`` preset's shape and the light ``cnn`` at the small phantom's;
6. ``run_fast``: a 2-fold run of ``resnet18`` at the ``fast`` preset on the tiny phantom, end to
   end (folds with ``--saliency 1`` maps, statistics, report), with its wall time, each fold's
   memory plan and its attribution cost per scan;
7. ``tune_estimate``: what ``run --tune`` with 4 candidates would cost on the seed preset (issue 21):
   the count of trainings it adds times an upper bound per training from step 3's throughput.

Each step records ``ok`` (true, false, or null when skipped), its seconds and its error (if any),
and the check goes on; the exit code is 1 when a step failed. ``--cpu`` rehearses the steps on
the CPU at tiny shapes, with the light CNN in the run (how the check itself is tested); without
CUDA and without ``--cpu`` it says that this is not a GPU machine and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import icpcv
from icpcv.bench.train import run_bench
from icpcv.cohort.phantom import PRESETS as PHANTOMS, design
from icpcv.config import PRESETS
from icpcv.explain.bench import bench_case
from icpcv.folds import nested_trainings
from icpcv.models.memory import verify_plan_on_cuda
from icpcv.util import atomic_write_json

REPO = Path(icpcv.__file__).resolve().parents[1]
#: the shapes and step counts of the CPU rehearsal (--cpu)
CPU_SHAPE = {"seed": (16, 16, 32), "fast": (12, 12, 24)}


def _environment(device: str) -> dict:
    env = dict(python=platform.python_version(), torch=torch.__version__, device=device,
               cuda=torch.version.cuda if torch.cuda.is_available() else None, cpu_count=os.cpu_count())
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   bf16_native=torch.cuda.is_bf16_supported())
    return env


def _gpu_tests(out: Path, tests: list[str]) -> dict:
    xml = out / "gpu_tests.xml"
    # -n 0: one process (one GPU), whatever the project's addopts say (pytest-xdist, -n auto)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-q", "-p", "no:cacheprovider", "--no-header",
           f"--junitxml={xml}", *tests]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {word.rstrip("s"): int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)",
                                                                   summary)}
    return dict(command=" ".join(cmd[1:]), returncode=proc.returncode, summary=summary, counts=counts,
                junit=str(xml), ok=proc.returncode in (0, 5))  # 5: no test collected


def _bench_train(preset: str, cpu: bool) -> dict:
    p = PRESETS[preset]
    kw = dict(model=p.model, shape=p.shape, batch_size=p.train.batch_size,
              precision=p.train.precision, seed_loop=False)
    if cpu:
        kw.update(shape=CPU_SHAPE[preset], batch_size=2, steps=1, warmup=0, device="cpu", base_width=4,
                  precision="fp32")
    r = run_bench(**kw)
    ph = r["phases"]
    return dict(model=r["model"], shape=r["shape"], batch_size=r["batch_size"], device=r["device_name"],
                step_only_samples_per_s=ph["step_only"]["samples_per_s"],
                end_to_end_samples_per_s=ph["end_to_end"]["samples_per_s"],
                end_to_end_over_step_only=r["ratios"]["end_to_end / step_only"],
                step_only_tflops=ph["step_only"]["tflops"], end_to_end_tflops=ph["end_to_end"]["tflops"],
                step_only_peak_gib=ph["step_only"]["peak_gib"], end_to_end_peak_gib=ph["end_to_end"]["peak_gib"],
                data_mode=ph["end_to_end"]["data_mode"], precision=ph["step_only"]["precision"], ok=True)


def _memory_plan(preset: str, cpu: bool) -> dict:
    """The plan against max_memory_allocated; within 10% is the issue's bar."""
    if cpu:
        return {"skipped": "no CUDA (--cpu): the plan is checked against the CPU heap in tests/test_memory.py"}
    r = verify_plan_on_cuda(preset)
    r["ok"] = all(0.9 <= r[k] <= 1.1 for k in ("train_ratio", "eval_ratio"))
    return r


def _attribution_cost(cpu: bool) -> dict:
    """Seconds per scan of each method: resnet18 at the fast preset's shape, the light cnn at 20x20x48."""
    cases = [("cnn", (12, 12, 24))] if cpu else [("resnet18", PRESETS["fast"].shape), ("cnn", (20, 20, 48))]
    rows = []
    for name, shape in cases:
        rows += bench_case(name, shape, device="cpu" if cpu else "cuda", n_scans=2, repeat=1 if cpu else 3,
                           steps=4 if cpu else 32)
    return dict(rows=rows, ok=True)


def _run_fast(out: Path, cpu: bool) -> dict:
    run_dir = out / "run_fast"
    # the CPU rehearsal trains the light CNN: a ResNet-18 takes minutes a fold on a CPU
    network = "cnn" if cpu else "resnet18"
    cmd = [sys.executable, "-m", "icpcv", "run", "--preset", "fast", "--phantom", "tiny", "--folds", "2",
           "--models", f"mean,ols_iop,{network}", "--epochs", "2" if cpu else "5", "--n-boot", "1000",
           "--saliency", "1", "--out", str(run_dir), "--fresh", "--quiet"]
    if cpu:
        cmd += ["--shape", "16x16x32", "--device", "cpu", "--precision", "fp32", "--batch-size", "8"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                                         os.environ.get("PYTHONPATH")]))))
    seconds = time.perf_counter() - t0
    res = dict(command=" ".join(cmd[1:]), returncode=proc.returncode, wall_seconds=seconds,
               ok=proc.returncode == 0, stderr_tail=proc.stderr[-2000:])
    stats = run_dir / "stats.json"
    if stats.exists():
        s = json.loads(stats.read_text())
        res.update(verdict=s.get("verdict"), mae={m: v["mae"]["estimate"] for m, v in s.get("models", {}).items()})
        records = [json.loads(p.read_text()) for p in sorted((run_dir / "folds").glob("fold_*/record.json"))]
        res["folds"] = [dict(fold=r["fold"], seconds=r["seconds"], device=r["device"],
                             memory_plan=r["models"].get(network, {}).get("memory_plan")) for r in records]
    attribution = run_dir / "attribution.json"
    if attribution.exists():
        a = json.loads(attribution.read_text())
        res["attribution_seconds_per_scan"] = {m["model"]: m.get("cost", {}).get("seconds_per_scan")
                                               for m in a.get("models", [])}
    return res


def _tune_estimate(result: dict, candidates: int = 4) -> dict:
    """Issue 21: what ``run --tune`` with ``candidates`` recipes would cost on the seed preset, estimated from this
    check's seed-preset throughput: (trainings it adds, :func:`icpcv.folds.nested_trainings`) x (the seed preset's
    epochs x its training scans per fold / end-to-end samples per second). An upper bound per training (early
    stopping ends most sooner); validation passes not counted."""
    bench = result["steps"].get("bench_train_seed") or {}
    rate = bench.get("end_to_end_samples_per_s")
    p = PRESETS["seed"]
    ph = PHANTOMS[p.phantom]
    count = nested_trainings(ph.n_subjects, candidates=candidates, repeats=p.repeats)
    if not rate:
        return {"skipped": "no seed-preset throughput measured (bench_train_seed)", **count}
    scans = len(design(ph, np.random.default_rng(0)))  # the seed phantom's scans (its design, nothing rendered)
    train_scans = scans * (ph.n_subjects - 1) / ph.n_subjects * 0.75  # a fold's training part (--val-fraction 0.25)
    per_training = p.train.epochs * train_scans / rate
    return dict(count, per_training_upper_s=per_training, plain_upper_h=count["plain"] * per_training / 3600,
                tune_upper_h=count["total"] * per_training / 3600, samples_per_s=rate, train_scans=train_scans)


def check(out, *, cpu: bool = False, tests: list[str] | None = None, steps: list[str] | None = None) -> dict:
    """Run the check's steps (all, or ``steps``), writing ``out/gpu_check.json`` after each; returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if cpu else "cuda"
    result: dict = dict(icpcv=icpcv.__version__, started=time.strftime("%Y-%m-%dT%H:%M:%S"), mode=device, steps={})
    plan = [("environment", lambda: _environment(device)),
            ("gpu_tests", lambda: _gpu_tests(out, tests or ["tests"])),
            ("bench_train_seed", lambda: _bench_train("seed", cpu)),
            ("bench_train_fast", lambda: _bench_train("fast", cpu)),
            ("memory_plan_fast", lambda: _memory_plan("fast", cpu)),
            ("memory_plan_seed", lambda: _memory_plan("seed", cpu)),
            ("attribution_cost", lambda: _attribution_cost(cpu)),
            ("run_fast", lambda: _run_fast(out, cpu)),
            ("tune_estimate", lambda: _tune_estimate(result))]  # issue 21
    for name, step in plan:
        if steps and name not in steps:
            continue
        t0 = time.perf_counter()
        try:
            res = step()
            res.setdefault("ok", None if "skipped" in res else True)
        except Exception as exc:  # a failed step is a finding: record it and go on
            res = dict(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        res["seconds"] = time.perf_counter() - t0
        result["steps"][name] = res
        atomic_write_json(out / "gpu_check.json", result)
        status = {True: "ok", False: "FAILED", None: "skipped"}[res["ok"]]
        print(f"{name}: {status} ({res['seconds']:.1f} s)", flush=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(out / "gpu_check.json", result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icpcv bench gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder for gpu_check.json and the run (default: a new temporary one)")
    p.add_argument("--cpu", action="store_true", help="rehearse every step on the CPU at tiny shapes")
    p.add_argument("--tests", nargs="+", help="test paths for pytest -m gpu (default: tests)")
    p.add_argument("--steps", nargs="+", help="only these steps (environment, gpu_tests, bench_train_seed, "
                                              "bench_train_fast, memory_plan_fast, memory_plan_seed, attribution_cost, run_fast)")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("icpcv bench gpu-check: no CUDA device here; run it on a GPU machine (or --cpu to rehearse it)",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="icpcv-gpu-check-"))
    result = check(out, cpu=args.cpu, tests=args.tests, steps=args.steps)
    failed = [k for k, v in result["steps"].items() if v.get("ok") is False]
    print(f"wrote {out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else "; every step ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
