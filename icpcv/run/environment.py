"""What ``environment.json`` records: versions, git hash, hardware, the Slurm job."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from icpcv import __version__
from icpcv.util import package_version


def environment() -> dict:
    env = dict(python=sys.version.split()[0], executable=sys.executable, platform=platform.platform(),
               machine=platform.machine(), host=socket.gethostname(), cpu_count=os.cpu_count(),
               torch=torch.__version__, **{k: package_version(d) for k, d in (
                   ("numpy", "numpy"), ("pandas", "pandas"), ("sklearn", "scikit-learn"), ("statsmodels", "statsmodels"),
                   ("scipy", "scipy"), ("joblib", "joblib"), ("submitit", "submitit"))},
               torch_threads=torch.get_num_threads(),
               cuda=torch.version.cuda if torch.cuda.is_available() else None,
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if torch.cuda.is_available() else [],
               cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
               slurm_job_id=os.environ.get("SLURM_JOB_ID"),
               time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    env["icpcv"] = __version__
    try:
        src = Path(__file__).resolve().parents[2]
        env["git"] = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        env["git_dirty"] = bool(dirty) if env["git"] else None
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    return env
