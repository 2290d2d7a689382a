from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MONKEY_TABLE = SHARED / "data" / "monkey_data.csv"
REFERENCE = SHARED / "reference"


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most 4. Each test file runs whole on
    one worker (``--dist loadfile``), so module fixtures are built once; the report's shared runs
    are made once for all workers (tests/test_report_support.py); the Slurm tests share one cluster
    and live in one file."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (run on the device)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def monkey_table():
    if not MONKEY_TABLE.exists():
        pytest.skip(f"real label table not found at {MONKEY_TABLE}")
    return MONKEY_TABLE


@pytest.fixture
def read_only():
    """``read_only(folder)`` makes an existing folder read-only for this process, and undoes it afterwards.

    Root ignores permission bits, so as root the folder is bind-mounted read-only onto itself (the
    ``Read-only file system`` a user meets on a shared or archived disk); otherwise it is chmod 0555.
    """
    import os
    import subprocess

    undo = []

    def make(folder):
        folder = Path(folder)
        if os.geteuid() == 0:
            for cmd in (["mount", "--bind", str(folder), str(folder)],
                        ["mount", "-o", "remount,bind,ro", str(folder)]):
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
                    pytest.skip(f"cannot make a read-only bind mount here ({r.stderr.strip()})")
            undo.append(lambda: subprocess.run(["umount", "-l", str(folder)], capture_output=True))
        else:
            mode = folder.stat().st_mode
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(mode))
        return folder

    yield make
    for u in reversed(undo):
        u()


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that changes torch's thread count in this process (an in-process command) leaves it as it
    was: CPU convolutions sum in a thread-dependent order, so a later test comparing predictions bytes
    with a shared run would otherwise compare runs made at different thread counts."""
    import torch  # lazy: torch is heavy; imported by the suite anyway

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
