"""Benchmark ``icpcv prepare`` against load-everything-then-resample.

``python -m icpcv.prepare.bench`` (or ``python -m icpcv bench prepare``) writes a few raw
512 x 512 x 2048 uint8 volumes as multi-page TIFFs (512 B-scans of 2048 rows x 512 columns) in
a temporary folder, converts them to 128 x 128 x 512 with each approach in a fresh child
process, and prints volumes per second and the child's peak resident memory (``ru_maxrss`` from
``wait4``, i.e. VmHWM), with ratios against the naive approach measured in the same run:

* ``naive``: ``tifffile.imread`` of the whole stack -> float32 -> ``torch.nn.functional.interpolate``
  (mode ``area``, the same area average) -> ``.npy``; one volume at a time.
* ``stream``: :func:`icpcv.prepare.convert_volume` (page groups read with tifffile, reduced in
  plane, accumulated along Y), one volume at a time, no hashing.
* ``prepare-w1``: the whole ``prepare`` (sha256 of every raw file, manifest, tables), 1 worker.
* ``prepare-w2``: the same with ``--workers 2``; its memory is given per worker process and in sum.

Every approach's outputs are compared with the naive one's (largest absolute difference).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from icpcv.plausible import check_parsed

APPROACHES = ("naive", "stream", "prepare-w1", "prepare-w2")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def write_raw(path: Path, shape, seed: int) -> None:
    """A (X, Y, Z) uint8 volume as a TIFF of Y pages, each (rows Z, columns X); speckle on a depth profile."""
    import tifffile  # lazy: the benchmark measures each approach's process with its own imports only

    X, Y, Z = shape
    rng = np.random.default_rng(seed)
    profile = (60 + 80 * np.exp(-((np.arange(Z) - Z * 0.4) / (Z * 0.1)) ** 2)).astype(np.float32)[:, None]

    def pages():
        for _ in range(Y):
            speckle = rng.random((Z, X), dtype=np.float32)
            yield np.clip(profile * (0.5 + speckle), 0, 255).astype(np.uint8)

    tifffile.imwrite(str(path), data=pages(), shape=(Y, Z, X), dtype=np.uint8)


def _vmhwm_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(approach: str, files: list[str], out: str, target) -> dict:
    """Runs in the measured child process: imports first, then the timed conversions."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {}
    if approach == "naive":
        import tifffile  # lazy: the benchmark measures each approach's process with its own imports only
        import torch  # lazy: the benchmark measures each approach's process with its own imports only
        import torch.nn.functional as F  # lazy: the benchmark measures each approach's process with its own imports only

        torch.set_num_threads(1)
        X, Y, Z = target

        def run():
            for f in files:
                stack = tifffile.imread(f)  # (Y, Z, X) uint8: the whole volume
                t = torch.from_numpy(stack.astype(np.float32))[None, None]
                del stack
                small = F.interpolate(t, size=(Y, Z, X), mode="area")[0, 0].numpy()  # area average
                del t
                np.save(out_dir / (Path(f).stem + ".npy"), np.ascontiguousarray(np.transpose(small, (2, 0, 1))))
    elif approach == "stream":
        from icpcv.prepare.core import PrepareOptions, convert_volume  # lazy: the benchmark measures each approach's process with its own imports only

        opts = PrepareOptions(shape=tuple(target))

        def run():
            for f in files:
                convert_volume(f, out_dir / (Path(f).stem + ".npy"), opts)
    else:
        from icpcv.prepare.core import PrepareOptions, prepare  # lazy: the benchmark measures each approach's process with its own imports only

        workers = int(approach.rsplit("w", 1)[1])
        table = out_dir / "raw.csv"
        table.write_text("scan_id,subject,iop,icp,path\n" +
                         "".join(f"{Path(f).stem},1,15,10,{f}\n" for f in files))
        opts = PrepareOptions(shape=tuple(target), workers=workers)
        if workers > 1:  # start the worker processes and their imports before the clock (a fixed cost)
            from joblib import Parallel, delayed  # lazy: the benchmark measures each approach's process with its own imports only

            Parallel(n_jobs=workers, backend="loky")(delayed(_warm)() for _ in range(workers))

        def run():
            summary = prepare(table, out_dir, out_dir, opts)
            if summary.converted != len(files):
                raise RuntimeError(summary.line())

    info["import_peak_mib"] = _vmhwm_mib()
    t0 = time.perf_counter()
    run()
    info["convert_seconds"] = time.perf_counter() - t0
    info["self_peak_mib"] = _vmhwm_mib()
    if approach.startswith("prepare-w") and int(approach.rsplit("w", 1)[1]) > 1:
        info["worker_peaks_mib"] = _worker_peaks()
    return info


def _warm() -> int:
    import icpcv.prepare.core  # noqa: F401  # lazy: the benchmark measures each approach's process with its own imports only

    return os.getpid()


def _worker_peaks() -> list[float]:
    """VmHWM of this process's live child processes (joblib keeps its loky workers for reuse)."""
    peaks = []
    me = str(os.getpid())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == me and "VmHWM" in fields:
            peaks.append(int(fields["VmHWM"].split()[0]) / 1024)
    return sorted(peaks)


def measure(approach: str, files, out: Path, target) -> dict:
    cmd = [sys.executable, "-m", "icpcv.prepare.bench", "--child", approach, "--child-out", str(out),
           "--target", *map(str, target), *map(str, files)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{approach} failed ({proc.returncode}):\n{stderr}")
    info = json.loads(stdout.strip().splitlines()[-1])
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    res = dict(approach=approach, seconds=seconds, peak_mib=peak, **info)
    if info.get("worker_peaks_mib"):
        res["peak_mib"] = max(info["worker_peaks_mib"] + [peak])
        res["sum_mib"] = sum(info["worker_peaks_mib"]) + peak
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m icpcv.prepare.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=3, help="raw volumes to generate (default 3)")
    p.add_argument("--raw-shape", type=int, nargs=3, default=(512, 512, 2048), metavar=("X", "Y", "Z"))
    p.add_argument("--target", type=int, nargs=3, default=(128, 128, 512), metavar=("X", "Y", "Z"))
    p.add_argument("--approaches", default=",".join(APPROACHES), help=f"comma-separated of {', '.join(APPROACHES)}")
    p.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_parsed(p, args, "bench")  # every number against its range (icpcv.plausible)
    if args.child:
        print(json.dumps(child(args.child, args.files, args.child_out, args.target)))
        return 0

    approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    bad = [a for a in approaches if a not in APPROACHES]
    if bad:
        p.error(f"unknown approach(es) {bad}")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="icpcv-prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        raw_mib = np.prod(args.raw_shape) / 2**20
        files = []
        t0 = time.perf_counter()
        for i in range(args.volumes):
            f = work / f"raw{i}.tif"
            if not f.exists():
                write_raw(f, args.raw_shape, seed=i)
            files.append(f)
        gen = time.perf_counter() - t0
        for f in files:  # read once so every approach finds the files in the page cache
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass
        shape_txt = "x".join(map(str, args.raw_shape))
        target_txt = "x".join(map(str, args.target))
        print(f"machine : {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
        print(f"input   : {args.volumes} raw volumes {shape_txt} (X, Y, Z) uint8 = {raw_mib:.0f} MiB each, "
              f"multi-page TIFF in {work} (written in {gen:.1f} s, read from the page cache)")
        print(f"target  : {target_txt} float32 ({np.prod(args.target) * 4 / 2**20:.0f} MiB each)")
        results = []
        for a in approaches:
            out = work / f"out-{a}"
            shutil.rmtree(out, ignore_errors=True)
            results.append(measure(a, files, out, args.target))
        # agreement of the outputs with the first approach's
        def output(a, f):
            d = work / f"out-{a}"
            return np.load((d / "volumes" if (d / "volumes").is_dir() else d) / (f.stem + ".npy"))

        for r in results:
            r["max_abs_diff"] = max(float(np.abs(output(r["approach"], f) - output(approaches[0], f)).max())
                                    for f in files)
        base = next((r for r in results if r["approach"] == "naive"), results[0])
        name = base["approach"]
        print()
        print(f"| approach | volumes/s | s/volume | wall s (with start-up) | peak RSS MiB | of which imports | "
              f"speed vs {name} | peak RSS vs {name} | max abs diff vs {approaches[0]} |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            vps = args.volumes / r["convert_seconds"]
            peak = f"{r['peak_mib']:.0f}"
            if "sum_mib" in r:
                peak += f" (all processes {r['sum_mib']:.0f})"
            print(f"| {r['approach']} | {vps:.3f} | {r['convert_seconds'] / args.volumes:.2f} | {r['seconds']:.1f} | "
                  f"{peak} | {r['import_peak_mib']:.0f} | "
                  f"{vps / (args.volumes / base['convert_seconds']):.2f}x | {r['peak_mib'] / base['peak_mib']:.3f}x | "
                  f"{r['max_abs_diff']:.2g} |")
        print()
        print("volumes/s: conversion only, timed inside the child after its imports; wall: the whole child.")
        print("peak RSS: the child's ru_maxrss (= VmHWM, from wait4), interpreter and imports included ('of which "
              "imports': VmHWM before the first volume); with workers, the largest process (parent or loky worker).")
        print("stream = convert_volume alone; prepare-wN = the whole command (sha256 of each raw file, manifest, "
              "quality table) with N worker processes, started (and their imports done) before the clock.")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
