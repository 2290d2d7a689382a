"""``icpcv prepare``: raw OCT exports to model-ready volumes and a plain scan table (icpcv.prepare)."""
from __future__ import annotations

import argparse

from icpcv.commands.run import add_geometry_options, geometry_config
from icpcv.errors import InputError
from icpcv.prepare.core import EXIT_SKIPPED, OUTPUT_DTYPES, PrepareOptions, prepare as prepare_volumes
from icpcv.plausible import check_options, check_shape
from icpcv.progress import Progress
from icpcv.util import parse_shape


#: ``icpcv prepare --help``
DESCRIPTION = (
    "Read each row's raw volume (multi-page TIFF, folder of single-page TIFFs, NIfTI, .npy, .pt, vendor .OCT "
    "with icpcv[oct], Heidelberg Spectralis .vol or XML export folder with icpcv[heyex]: their spacing, eye and "
    "device go into table.csv; line, circle and radial scans are refused), resample it to --shape with area averaging (anti-aliased), and write float32 .npy volumes "
    "(X, Y, Z=depth), table.csv for `icpcv run --manifest`, and quality.csv. Reruns convert only new or changed "
    f"inputs. Exit code 0: every row converted; {EXIT_SKIPPED}: some rows were skipped (listed on stderr and in "
    "quality.csv); 2: a usage or table error.")


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", description=DESCRIPTION,
                       help="convert raw OCT volumes into model-ready .npy volumes and a plain scan table")
    p.add_argument("table", help="scan table (CSV): the seed's format (id, monkey_id, iop, icp, ... and a column "
                                 "naming the raw file, e.g. constructed_filepath) or the plain one "
                                 "(scan_id, subject, iop, icp, path)")
    p.add_argument("--raw", help="folder the table's raw paths are relative to (default: the table's folder)")
    p.add_argument("--out", required=True, help="output folder (volumes/, table.csv, quality.csv, manifest)")
    p.add_argument("--shape", nargs="+", required=True, metavar="N",
                   help="target shape X Y Z(depth), as three numbers or 128x128x512; Z is depth (the A-scan axis)")
    p.add_argument("--path-column", help="column naming the raw file (default: path for the plain format; "
                                         "constructed_filepath, path, raw_path, filepath, file_path or file for "
                                         "the seed's)")
    p.add_argument("--dtype", default="float32", choices=OUTPUT_DTYPES,
                   help="output type: float32 (default; area averages kept to float32 precision), float16 (half "
                        "the disk, ~3 significant digits), uint8 (rounded to whole grey levels)")
    p.add_argument("--saturation", type=float,
                   help="voxel value counted as saturated (default: the raw integer type's maximum, e.g. 255; "
                        "float volumes are not counted unless given)")
    p.add_argument("--workers", type=int, default=1, help="volumes converted in parallel (processes)")
    p.add_argument("--force", action="store_true", help="reconvert every volume")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every raw file even when its size and modification time are unchanged")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_geometry_options(p.add_argument_group("geometry (docs/acquisition.md)"))
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    try:
        shape = parse_shape(args.shape)
    except argparse.ArgumentTypeError as exc:
        raise InputError(str(exc)) from None
    check_shape(shape)
    check_options({"--workers": args.workers, "--saturation": args.saturation}, "prepare")
    options = PrepareOptions(shape=shape, dtype=args.dtype, saturation=args.saturation, workers=args.workers,
                             force=args.force, verify=args.verify, **geometry_config(args))
    progress = Progress("quiet" if args.quiet else "lines")
    summary = prepare_volumes(args.table, args.raw, args.out, options, path_column=args.path_column, progress=progress)
    print(summary.line())
    print(f"table: {summary.table}")
    print(f"quality: {summary.quality}")
    return summary.exit_code
