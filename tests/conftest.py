from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MONKEY_TABLE = SHARED / "data" / "monkey_data.csv"
REFERENCE = SHARED / "reference"


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
