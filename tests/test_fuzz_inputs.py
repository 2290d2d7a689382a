"""Fuzz: generated bad tables and volumes through ``run`` and ``analyze`` (issue 11).

Each case breaks a small good input at random (columns dropped or renamed, cells of the wrong
type, extreme and non-finite values, duplicated rows, unreadable encodings, truncated files,
volumes of other shapes, types and values, links that go nowhere) and calls the command line
in-process. For every case: the exit code is 0 or 2, stderr never holds a traceback, and a run
or analysis directory that existed before keeps its stats.json and predictions.csv byte for byte
unless the command completed. A new output directory of a refused command holds neither file.

Issue 22 added kinds of values, not only values: numbers a lab does not write (``2_0``,
full-width and Arabic-Indic digits), cells of 100,000 characters, labels that spell one monkey
several ways, ids and paths that climb out of their folder, volumes of exotic types (time spans,
dates, text, records; sparse, quantized, nested, meta, float8 tensors, and the harmless ones:
requires_grad, a trailing axis of 1), hostile option values (NaN, infinities, huge, negative,
underscores, full-width digits, text) and ``prepare`` cases (with an --out that holds its input
table). Every case also checks that no ``.tmp`` file is left behind, that a refused option wrote
nothing, and that no input was overwritten.

The generator is seeded: a failure names its case number and what was broken, and
``ICPCV_FUZZ_SEED`` / ``ICPCV_FUZZ_CASES`` rerun or widen it (``ICPCV_FUZZ_CASES=2000`` for a
deeper search than CI's). Labels-only and ridge_scan models on 6x6x12 volumes keep it fast: the
CNN is not needed for input handling.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_support import icpcv

SEED = int(os.environ.get("ICPCV_FUZZ_SEED", "11"))
N_CASES = int(os.environ.get("ICPCV_FUZZ_CASES", "250"))
SHAPE = (6, 6, 12)
#: the good cohort: 4 monkeys of 4 scans (3 would be the fewest a run accepts, but then losing one monkey refuses it)
N_SCANS = 16
#: a scan model and the reference: the fewest that give a comparison (and a report's every figure) on volumes
VOLUME_MODELS = "ols_iop,ridge_scan"
LABEL_MODELS = "mean,ols_iop"

BAD_CELLS = ["", " ", "nan", "NaN", "NA", "inf", "-inf", "1e300", "-1e300", "1e-300", "1e999", "abc", "0-2",
             "5,5", "\u0665", "\u00a05", "0x10", "TRUE", "x" * 300, "<b>5</b>", "5e", "--5", "+5", "NULL", "-0",
             "\t", '"', "\u00e9", "-5", "150", "-25", "4000", "1e15", "\x00",
             # issue 22: digit separators, full-width and Arabic-Indic digits, a 100,000-character cell, overflow
             "2_0", "1_000", "\uff12\uff10", "\uff11.\uff15", "\u0662\u0660", "x" * 100_000, "1e309", "infinity"]
LABELS = ["", " ", "1.0", "01", "<script>alert(1)</script>", "m\u00fcnchen", "\U0001F435", "a,b", "x" * 200,
          "../../etc", "NaN", "None", "0", "-1", "1e3",
          # issue 22: one monkey spelled several ways, ids and paths out of their folder, a huge label
          "1.00", "+1", "\uff11", "../outside", "../outside.npy", "vol/../../outside.npy", "a/../../b", "/etc/passwd",
          "x" * 100_000]
#: numeric options of `run` the fuzz gives hostile values (issue 22); the data-dependent ones are refused only once
#: the table is read, after the cohort is written
RUN_OPTIONS = ["--seed", "--data-seed", "--weight-decay", "--n-boot", "--ci-level", "--threads", "--workers", "--time",
               "--folds", "--val-fraction", "--signal", "--repeats", "--epochs", "--lr", "--saliency", "--mem",
               "--deadline", "--batch-size"]
DATA_DEPENDENT = ("--folds", "--val-fraction")
#: hostile values of numeric options (issue 22): each kind of value, not only these values
OPTION_VALUES = ["nan", "inf", "-inf", "-1", "-0", "0", "1e300", "99999999999999999999", "1_0", "\uff11\uff10", "",
                 "abc", "0.5", "1e-300"]
#: issue 19: bad acquisition cells (field of view, eye, date, time, depth, voxel grid)
ACQ_BAD = ["abc", "0x5", "7x", "x7", "-3x3", "7x0.1", "3x3x3", "1e999x3", "25:99", "13/45/2015", "2/30/16", "left",
           "OU", "-3", "0", "inf", "2015-13-01", "yesterday", "[0, 5, 5]", "12:60", "99", "\u00d7", "3 x 3 mm"]
ACQ_COLUMNS = ("scan area", "fov_x_mm", "fov_y_mm", "depth_mm", "eye", "scan date", "scan time", "acquired_at",
               "scan_shape", "protocol")
#: issue 19: geometry options of a run into a new folder (some refused, some skip every scan)
GEOMETRY_OPTIONS = [["--fov-mm", "2", "2"], ["--fov-mm", "5", "5"], ["--fov-mm", "0", "3"], ["--fov-mm", "3", "0.2"],
                    ["--fov-mm", "nan", "3"], ["--depth-mm", "1"], ["--depth-mm", "-1"], ["--mirror-os"],
                    ["--axes", "XZY"], ["--axes", "QQQ"], ["--axes", ""], ["--fov-mm", "2", "2", "--mirror-os"]]
ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "crlf", "semicolon", "truncated",
             "garbage", "empty", "header_only"]


@dataclass
class Case:
    number: int
    command: str
    broken: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"case {self.number} ({self.command}): " + "; ".join(self.broken)


def _pick(rng: np.random.Generator, options):
    """One of ``options``, the draw ``rng.choice(options)`` makes (the same stream), without turning the list into
    a numpy array first: with a 100,000-character cell among them that array is 18 MB, at every draw."""
    return options[int(rng.integers(len(options)))]


# --------------------------------------------------------------------------- good inputs


def _good_volumes(folder: Path, n: int, rng: np.random.Generator) -> list[str]:
    """n small OCT-like volumes: a bright band at a scan-dependent depth over speckle."""
    folder.mkdir(parents=True, exist_ok=True)
    z = np.arange(SHAPE[2])
    import torch

    names = []
    for i in range(n):
        band = 40 * np.exp(-0.5 * ((z - 4 - i % 5) / 1.5) ** 2)
        vol = np.clip(60 + band[None, None, :] + rng.normal(0, 8, SHAPE), 0, 255).astype(np.uint8)
        if i % 4 == 3:  # a quarter as tensors, so that exotic tensors have somewhere to go
            torch.save(torch.from_numpy(vol.astype(np.float32)), folder / f"v{i:02d}.pt")
            names.append(f"vol/v{i:02d}.pt")
        else:
            np.save(folder / f"v{i:02d}.npy", vol)
            names.append(f"vol/v{i:02d}.npy")
    return names


def _good_table(paths: list[str]) -> pd.DataFrame:
    rows = []
    for k, p in enumerate(paths):
        s, i = divmod(k, 4)
        rows.append(dict(scan_id=f"s{k:02d}", subject=str(s + 1), iop=f"{10 + 5 * i:g}", icp=f"{4 + 2 * s + 0.5 * i:g}",
                         path=p, **{"scan area": "3x3" if s % 2 else "4x4", "fov_x_mm": "", "fov_y_mm": "",
                                    "depth_mm": "2", "eye": "OS" if s == 1 else "OD", "scan date": "3/30/15",
                                    "scan time": f"1:{10 + 5 * i:02d}", "acquired_at": "", "scan_shape": "6x6x12",
                                    "protocol": ""}))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- breaking them


def _break_table(df: pd.DataFrame, rng: np.random.Generator, case: Case, numeric: tuple[str, ...],
                 labels: tuple[str, ...], least: int = 1, most: int = 3) -> pd.DataFrame:
    df = df.copy()
    for _ in range(int(rng.integers(least, most + 1))):
        kind = _pick(rng, ["cells", "cells", "cells", "drop_column", "rename_column", "whole_column", "duplicate",
                           "shuffle", "extra_column", "labels", "few_subjects", "no_rows", "acquisition"])
        if kind == "cells" and len(df):
            for _ in range(int(rng.integers(1, 4))):
                r, c = int(rng.integers(len(df))), _pick(rng, list(df.columns))
                v = _pick(rng, BAD_CELLS)
                df.iloc[r, df.columns.get_loc(c)] = v
                case.broken.append(f"row {r + 1} {c}={v[:20]!r}")
        elif kind == "drop_column" and len(df.columns) > 1:
            c = _pick(rng, list(df.columns))
            df = df.drop(columns=[c])
            case.broken.append(f"no column {c}")
        elif kind == "rename_column":
            c = _pick(rng, list(df.columns))
            new = _pick(rng, [c.upper(), c + " ", c[:-1], "\ufeff" + c, c + "_x"])
            df = df.rename(columns={c: new})
            case.broken.append(f"column {c} renamed {new!r}")
        elif kind == "whole_column":
            c = _pick(rng, [c for c in df.columns if c in numeric] or list(df.columns))
            v = _pick(rng, BAD_CELLS)
            df[c] = v
            case.broken.append(f"every {c}={v[:20]!r}")
        elif kind == "duplicate" and len(df):
            df = pd.concat([df, df.sample(int(rng.integers(1, 4)), random_state=int(rng.integers(1 << 30)))])
            case.broken.append("duplicated rows")
        elif kind == "shuffle":
            df = df.sample(frac=1, random_state=int(rng.integers(1 << 30)))[list(rng.permutation(df.columns))]
            case.broken.append("rows and columns shuffled")
        elif kind == "extra_column":
            df["notes"] = [_pick(rng, BAD_CELLS) for _ in range(len(df))]
            case.broken.append("extra column of junk")
        elif kind == "labels" and len(df):
            c = _pick(rng, [c for c in labels if c in df.columns] or list(df.columns))
            r = int(rng.integers(len(df)))
            v = _pick(rng, LABELS)
            df.iloc[r, df.columns.get_loc(c)] = v
            case.broken.append(f"row {r + 1} {c}={v[:20]!r}")
        elif kind == "few_subjects" and "subject" in df.columns:
            keep = list(df["subject"].unique())[: int(rng.integers(1, 3))]
            df = df[df["subject"].isin(keep)]
            case.broken.append(f"only subjects {keep}")
        elif kind == "acquisition" and len(df):  # issue 19: a bad field of view, eye, date, time, depth or grid
            for _ in range(int(rng.integers(1, 4))):
                c = _pick(rng, [c for c in ACQ_COLUMNS if c in df.columns] or list(df.columns))
                v = _pick(rng, ACQ_BAD + BAD_CELLS[:8])
                if rng.random() < 0.2:
                    df[c] = v
                    case.broken.append(f"every {c}={v[:20]!r}")
                else:
                    r = int(rng.integers(len(df)))
                    df.iloc[r, df.columns.get_loc(c)] = v
                    case.broken.append(f"row {r + 1} {c}={v[:20]!r}")
        elif kind == "no_rows":
            df = df.iloc[:0]
            case.broken.append("no rows")
    return df


def _write_table(df: pd.DataFrame, path: Path, rng: np.random.Generator, case: Case) -> None:
    how = _pick(rng, ENCODINGS)
    if how != "utf-8":
        case.broken.append(f"written as {how}")
    text = df.to_csv(index=False)
    if how in ("utf-8", "utf-8-sig", "utf-16", "latin-1"):
        path.write_bytes(text.encode(how, errors="replace"))
    elif how == "crlf":
        path.write_bytes(text.replace("\n", "\r\n").encode())
    elif how == "semicolon":
        path.write_text(df.to_csv(index=False, sep=";"))
    elif how == "truncated":
        data = text.encode()
        path.write_bytes(data[: int(rng.integers(1, max(len(data), 2)))])
    elif how == "garbage":
        path.write_bytes(rng.bytes(int(rng.integers(1, 400))))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header_only":
        path.write_text(",".join(df.columns) + "\n")


NPY_KINDS = ["extreme", "nan", "inf", "one_voxel", "transposed", "flat", "five_d", "empty", "bool", "complex", "object",
             "truncated", "garbage", "folder", "loop", "int64", "float16", "constant", "missing", "other_scale",
             "quarter_depth", "fortran",
             # issue 22: exotic types, and a trailing axis of 1 (harmless: read as the volume)
             "timedelta", "datetime", "text", "record", "xyz1"]
PT_KINDS = ["sparse", "sparse_csr", "quantized", "nested", "meta", "requires_grad", "float8", "bfloat16", "int8",
            "complex", "bool", "dict", "list", "truncated", "garbage", "nan", "xyz1", "missing"]


def _bad_tensor(path: Path, rng: np.random.Generator) -> str:
    import warnings

    import torch

    kind = _pick(rng, PT_KINDS)
    t = torch.load(path, weights_only=True)
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR and quantized tensors warn that they are beta
        make = {"sparse": lambda: t.to_sparse(), "sparse_csr": lambda: t.reshape(-1, SHAPE[2]).to_sparse_csr(),
                "quantized": lambda: torch.quantize_per_tensor(t, 0.5, 0, torch.quint8),
                "nested": lambda: torch.nested.nested_tensor([t, t]), "meta": lambda: t.to("meta"),
                "requires_grad": lambda: t.clone().requires_grad_(True), "float8": lambda: t.to(torch.float8_e4m3fn),
                "bfloat16": lambda: t.to(torch.bfloat16), "int8": lambda: t.to(torch.int8),
                "complex": lambda: t.to(torch.complex64), "bool": lambda: t > 60, "dict": lambda: {"a": t, "b": t},
                "list": lambda: [t], "nan": lambda: t.clone().fill_(float("nan")), "xyz1": lambda: t[..., None]}
        if kind in make:
            torch.save(make[kind](), path)
        elif kind == "truncated":
            torch.save(t, path)
            path.write_bytes(path.read_bytes()[: int(rng.integers(1, 200))])
        elif kind == "garbage":
            path.write_bytes(rng.bytes(300))
    return kind


def _bad_volume(path: Path, rng: np.random.Generator) -> str:
    if path.suffix == ".pt":
        return _bad_tensor(path, rng)
    kind = _pick(rng, NPY_KINDS)
    good = np.load(path)
    path.unlink()
    if kind == "extreme":
        np.save(path, np.full(SHAPE, 1e38, np.float32))
    elif kind in ("nan", "inf"):
        v = good.astype(np.float32)
        v.flat[int(rng.integers(v.size))] = np.nan if kind == "nan" else np.inf
        np.save(path, v)
    elif kind == "one_voxel":
        np.save(path, good[:1, :1, :1])
    elif kind == "transposed":
        np.save(path, np.ascontiguousarray(good.transpose(2, 0, 1)))
    elif kind == "flat":
        np.save(path, good[:, :, 0])
    elif kind == "five_d":
        np.save(path, good[None, None])
    elif kind == "empty":
        np.save(path, good[:0])
    elif kind == "bool":
        np.save(path, good > 60)
    elif kind == "complex":
        np.save(path, good.astype(np.complex64))
    elif kind == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "truncated":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[: int(rng.integers(1, 120))])
    elif kind == "garbage":
        path.write_bytes(rng.bytes(200))
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "int64":
        np.save(path, good.astype(np.int64) * (2 ** 55))
    elif kind == "float16":
        np.save(path, good.astype(np.float16))
    elif kind == "constant":
        np.save(path, np.full(SHAPE, 7, np.uint8))
    elif kind == "other_scale":
        np.save(path, good.astype(np.float64) * 1e6)
    elif kind == "quarter_depth":
        np.save(path, good[:, :, :3])
    elif kind == "fortran":
        np.save(path, np.asfortranarray(good))  # fine: the same volume in another memory order
    elif kind == "timedelta":
        np.save(path, good.astype(np.int64).astype("timedelta64[s]"))
    elif kind == "datetime":
        np.save(path, good.astype(np.int64).astype("datetime64[D]"))
    elif kind == "text":
        np.save(path, good.astype("U3"))
    elif kind == "record":
        np.save(path, good.astype([("v", "u1")]))
    elif kind == "xyz1":
        np.save(path, good[..., None])  # fine: a trailing axis of 1, as NIfTI writes it
    # "missing": the file is gone
    return kind


# --------------------------------------------------------------------------- the checks


def _outputs(folder: Path) -> dict[str, bytes | None]:
    return {name: (folder / name).read_bytes() if (folder / name).is_file() else None
            for name in ("stats.json", "predictions.csv")}


def _check(case: Case, rc: int, err: str, *folders: Path, codes=(0, 2)) -> None:
    assert "Traceback" not in err, f"{case}\n{err}"
    assert rc in codes, f"{case}: exit code {rc}\n{err}"
    # below the command line's net (icpcv.commands.MESSAGE_CHARS): a cell is clipped where it is quoted
    assert len(err) < 9_000, f"{case}: a message of {len(err)} characters (a cell copied verbatim?)"
    for folder in folders:  # nothing half-written left behind
        left = [p for p in Path(folder).rglob("*.tmp")] if Path(folder).is_dir() else []
        assert not left, f"{case}: temporary files left: {left}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A good table with volumes, its complete run, and that run's predictions analysed once."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    paths = _good_volumes(root / "data" / "vol", N_SCANS, rng)
    np.save(root / "outside.npy", np.full(SHAPE, 60, np.uint8))  # what '../outside.npy' would load
    table = _good_table(paths)
    table.to_csv(root / "data" / "scans.csv", index=False)
    run_dir = root / "run"
    rc, _, err = icpcv("run", "--manifest", root / "data" / "scans.csv", "--models", VOLUME_MODELS, "--shape",
                       "x".join(map(str, SHAPE)), "--n-boot", "10", "--out", run_dir, "--quiet")
    assert rc == 0, err
    analysis = root / "analysis"
    rc, _, err = icpcv("analyze", run_dir / "predictions.csv", "--out", analysis, "--n-boot", "10")
    assert rc == 0, err
    return root, table, run_dir, analysis


def _run_case(base, number: int, rng: np.random.Generator) -> tuple[Case, int]:
    root, good, run_dir, _ = base
    case = Case(number, "run")
    # into the complete run (same table path: refused fast once the table is read and checked), or into a
    # new folder (the whole way: every completion costs folds and a report, so fewer of these)
    existing = bool(rng.random() < 0.7)
    data = root / "data" if existing else root / f"case{number}"
    saved = None
    if existing:
        saved = {p: p.read_bytes() for p in (data / "vol").iterdir()} | {data / "scans.csv": (data / "scans.csv")
                                                                         .read_bytes()}
    else:
        shutil.copytree(root / "data", data)
    with_volumes = bool(rng.random() < 0.5)
    try:
        if not with_volumes or rng.random() < 0.7:  # every case breaks something
            _write_table(_break_table(good, rng, case, ("iop", "icp"), ("scan_id", "subject", "path")),
                         data / "scans.csv", rng, case)
        if with_volumes:
            for i in rng.choice(N_SCANS, size=int(rng.integers(1, 3)), replace=False):
                name = good["path"].iloc[i].split("/")[-1]  # v00.npy, ..., v03.pt
                case.broken.append(f"{name} {_bad_volume(data / 'vol' / name, rng)}")
        args = ["run", "--manifest", data / "scans.csv", "--n-boot", "10", "--quiet"]
        if existing or with_volumes:  # the complete run's own options: only its inputs differ
            args += ["--models", VOLUME_MODELS, "--shape", "x".join(map(str, SHAPE))]
        else:
            args += ["--models", LABEL_MODELS]
        if not existing and rng.random() < 0.5:
            args.append("--skip-bad-scans")
        if not existing and with_volumes and rng.random() < 0.3:  # issue 19: the geometry options
            geo = GEOMETRY_OPTIONS[int(rng.integers(len(GEOMETRY_OPTIONS)))]
            args += geo
            case.broken.append(" ".join(geo))
        if not existing and rng.random() < 0.15:
            folds = _pick(rng, ["1", "2", "3", "0", "-1", "100"])
            args += ["--folds", folds]
            case.broken.append(f"--folds {folds}")
        option = None
        if not existing and rng.random() < 0.3:  # issue 22: a hostile value of a numeric option
            option, value = _pick(rng, RUN_OPTIONS), _pick(rng, OPTION_VALUES)
            args += [f"{option}={value}"]
            case.broken.append(f"{option} {value!r}")
        out = run_dir if existing else root / f"out{number}"
        case.command = "run into the complete run" if existing else "run"
        before = _outputs(out)
        inputs = _inputs(data)
        rc, _, err = icpcv(*args, "--out", out)
        _check(case, rc, err, out, data)
        assert _inputs(data) == inputs, f"{case}: an input was changed"
        if option and rc == 2 and option in err and option not in DATA_DEPENDENT:
            assert not out.exists(), f"{case}: refused {option} after writing into {out}"
        if rc != 0:
            assert _outputs(out) == before, f"{case}: a refused run changed stats.json or predictions.csv"
        if not existing and rc == 0:  # what was dropped is on record, with a reason
            q = pd.read_csv(out / "data_quality.csv", dtype=str, keep_default_na=False)
            assert ((q["status"] == "kept") == (q["reason"] == "")).all(), f"{case}: a row dropped without a reason"
            if "warnings" in q.columns:  # issue 19: every warning names its code, column and value
                for w in (w for ws in q["warnings"] for w in ws.split("; ") if w):
                    assert " (column " in w and ", value " in w, f"{case}: warning {w!r}"
    finally:
        if saved is not None:  # restore the complete run's inputs for the next case
            vol = data / "vol"
            for p in list(vol.iterdir()):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            for p, b in saved.items():
                p.write_bytes(b)
    return case, rc


def _inputs(folder: Path) -> dict:
    """The bytes of every file under an input folder (what no command may overwrite)."""
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.is_symlink()}


def _prepare_case(base, number: int, rng: np.random.Generator) -> tuple[Case, int]:
    """``prepare`` on a broken copy of the good data (issue 22): a skip is exit 3, never a traceback."""
    root, good, _, _ = base
    case = Case(number, "prepare")
    data = root / f"prep_data{number}"
    shutil.copytree(root / "data", data)
    _write_table(_break_table(good, rng, case, ("iop", "icp"), ("scan_id", "subject", "path")), data / "scans.csv",
                 rng, case)
    for i in rng.choice(N_SCANS, size=int(rng.integers(1, 4)), replace=False):
        name = good["path"].iloc[i].split("/")[-1]
        case.broken.append(f"{name} {_bad_volume(data / 'vol' / name, rng)}")
    table = data / "scans.csv"
    out = root / f"prep_out{number}"
    if rng.random() < 0.2:  # an --out that holds the input table under the name prepare writes
        table = data / "table.csv"
        table.write_bytes((data / "scans.csv").read_bytes())
        out = data
        case.broken.append("--out holds the input table.csv")
    args = ["prepare", table, "--out", out, "--shape", "x".join(map(str, SHAPE)), "--quiet"]
    if rng.random() < 0.3:
        option, value = _pick(rng, ["--workers", "--saturation"]), _pick(rng, OPTION_VALUES)
        args += [f"{option}={value}"]
        case.broken.append(f"{option} {value!r}")
    inputs = _inputs(data)
    rc, _, err = icpcv(*args)
    _check(case, rc, err, out, data, codes=(0, 2, 3))
    assert {p: b for p, b in _inputs(data).items() if p in inputs} == inputs, f"{case}: an input was overwritten"
    return case, rc


def _analyze_case(base, number: int, rng: np.random.Generator) -> tuple[Case, int]:
    root, _, run_dir, analysis = base
    case = Case(number, "analyze")
    good = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
    path = root / f"preds{number}.csv"
    # 2 to 4 breaks: a predictions table has no rows to drop, so few of these complete (each costs a report)
    _write_table(_break_table(good, rng, case, ("y_true", "y_pred", "iop"), ("fold", "subject", "scan_id", "model"),
                              least=2, most=4), path, rng, case)
    existing = bool(rng.random() < 0.5)
    out = analysis if existing else root / f"analysis{number}"
    case.command = "analyze into an analysis directory" if existing else "analyze"
    before = _outputs(out)
    args = ["analyze", path, "--out", out, "--n-boot", "10"]
    if rng.random() < 0.2:
        ref = _pick(rng, ["ridge_scan", "nope", ""])  # one of the table's models, a missing one, none
        args += ["--reference", ref]
        case.broken.append(f"--reference {ref!r}")
    if rng.random() < 0.2:  # issue 22: a hostile value of a numeric option
        option, value = _pick(rng, ["--n-boot", "--seed", "--ci-level"]), _pick(rng, OPTION_VALUES)
        args += [f"{option}={value}"]
        case.broken.append(f"{option} {value!r}")
    rc, _, err = icpcv(*args)
    _check(case, rc, err, out)
    if rc != 0:
        assert _outputs(out) == before, f"{case}: a refused analysis changed stats.json or predictions.csv"
    return case, rc


def test_generated_bad_inputs_never_end_in_a_traceback(base):
    rng = np.random.default_rng(SEED)
    outcomes = {"run": [], "analyze": [], "prepare": []}
    cases = {"run": _run_case, "analyze": _analyze_case, "prepare": _prepare_case}
    for number in range(N_CASES):
        kind = "analyze" if number % 5 == 0 else "prepare" if number % 10 == 1 else "run"
        case, rc = cases[kind](base, number, rng)
        outcomes[kind].append(rc)
    # not a degenerate generator: each command both completes and refuses (prepare: skips)
    for kind, rcs in outcomes.items():
        assert (0 in rcs or kind == "prepare") and 2 in rcs, (kind, rcs)
    assert 3 in outcomes["prepare"], outcomes["prepare"]
