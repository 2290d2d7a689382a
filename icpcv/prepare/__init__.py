"""``icpcv prepare``: turn raw OCT exports into model-ready volumes and a plain scan table.

Axis order everywhere in icpcv is (X, Y, Z=depth): ``--shape 128 128 512`` (or ``128x128x512``)
means X = 128, Y = 128 and 512 samples along depth (the A-scan axis). A torch ``Conv3d`` sees a
volume ``v[x, y, z]`` as (D, H, W) = (X, Y, Z). See docs/prepare.md.
"""
from __future__ import annotations

from icpcv.prepare.core import (CODE_VERSION, EXIT_SKIPPED, OUTPUT_DTYPES, PrepareOptions, Summary, convert_volume,
                                prepare, quality_table, read_table, robust_z)
from icpcv.prepare.sources import REASONS, VolumeError, open_source

__all__ = ["prepare", "PrepareOptions", "Summary", "convert_volume", "read_table", "quality_table", "robust_z",
           "open_source", "VolumeError", "REASONS", "EXIT_SKIPPED", "OUTPUT_DTYPES", "CODE_VERSION"]
