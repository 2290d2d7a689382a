"""Atomic writes: every writer goes through icpcv.util.atomic_write and gets the umask's permissions.

mkstemp makes 0600 files; stats.json and prepared volumes were once left that way (unreadable by
the coauthors a report is sent to), because they had their own copies of the write-fsync-rename.
"""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from icpcv.prepare.core import atomic_save_npy
from icpcv.stats import write_stats
from icpcv.util import atomic_write, atomic_write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_writers_keep_the_umask_permissions(tmp_path, umask_022):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    write_stats({"verdict": "v", "n": 1.5}, tmp_path / "stats.json")
    size = atomic_save_npy(tmp_path / "v.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    for name in ("a.json", "stats.json", "v.npy"):
        assert _mode(tmp_path / name) == umask_022, name
    assert size == (tmp_path / "v.npy").stat().st_size
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_stats({"verdict": "old"}, tmp_path / "stats.json")

    def half_then_fail(fh):
        fh.write(b'{"verdict": "new", ')
        raise OSError("device went away")

    with pytest.raises(OSError, match="device went away"):
        atomic_write(tmp_path / "stats.json", half_then_fail)
    assert '"old"' in (tmp_path / "stats.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]
