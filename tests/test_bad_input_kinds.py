"""Issue 22, causes 2 to 9: kinds of bad input a new user met, each a rule of its own.

Small tables of 6x6x12 volumes and labels-only models keep every case to a second or two.
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv

SHAPE = (6, 6, 12)
FAST = ["--models", "mean,ols_iop", "--n-boot", "10", "--quiet"]
HUGE = 5_000_000
VOLUME_MODELS = ["--models", "mean,ols_iop,ridge_scan", "--shape", "6x6x12", "--n-boot", "10", "--quiet"]


def _volume(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    z = np.arange(SHAPE[2])
    band = 40 * np.exp(-0.5 * ((z - 4 - i % 5) / 1.5) ** 2)
    return np.clip(60 + band[None, None, :] + rng.normal(0, 8, SHAPE), 0, 255).astype(np.float32)


def _volumes_table(folder: Path, n_subjects: int = 4, per: int = 3) -> tuple[Path, list[Path]]:
    """A plain table of n_subjects x per scans with good .npy volumes in folder/vol."""
    (folder / "vol").mkdir(parents=True, exist_ok=True)
    rows, paths = [], []
    for k in range(n_subjects * per):
        s, i = divmod(k, per)
        p = folder / "vol" / f"v{k:02d}.npy"
        np.save(p, _volume(k))
        paths.append(p)
        rows.append(dict(scan_id=f"s{k:02d}", subject=str(s + 1), iop=f"{10 + 5 * i:g}", icp=f"{4 + 2 * s + i:g}",
                         path=f"vol/v{k:02d}.npy"))
    table = folder / "scans.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, paths


def _labels_table(path: Path, n_subjects: int = 4, subject=str) -> Path:
    rows = [dict(scan_id=f"{s}-{i}", subject=subject(s), iop=10 + 5 * i, icp=5 + s + 0.5 * i) for s in
            range(1, n_subjects + 1) for i in range(3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def labels_run(tmp_path_factory):
    """One finished labels-only run (mean, ols_iop; 4 monkeys), shared by the tests that need a run."""
    base = tmp_path_factory.mktemp("labels_run")
    table = _labels_table(base / "t.csv")
    with open(table, "a") as fh:  # cause 8: one row whose IOP cell is 5 MB of text (dropped, and not copied)
        fh.write(f"huge,1,{'x' * HUGE},5\n")
    rc, _, err = icpcv("run", "--manifest", table, "--out", base / "run", *FAST)
    assert rc == 0, err
    return base / "run"


def _no_temporaries(folder: Path) -> None:
    left = [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


# --------------------------------------------------------------------------- cause 2: exotic volumes


def _exotic(kind: str, path: Path, good: np.ndarray) -> Path:
    """Replace a good .npy volume by one of an exotic type; returns the new path (.pt for tensors)."""
    import torch

    path.unlink()
    t = torch.from_numpy(good)
    pt = path.with_suffix(".pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR and quantized tensors warn that they are beta
        if kind == "timedelta":
            np.save(path, good.astype(np.int64).astype("timedelta64[s]"))
            return path
        if kind == "datetime":
            np.save(path, good.astype(np.int64).astype("datetime64[D]"))
            return path
        if kind == "text":
            np.save(path, good.astype("U4"))
            return path
        obj = {"sparse": lambda: t.to_sparse(), "sparse_csr": lambda: t.reshape(36, 12).to_sparse_csr(),
               "quantized": lambda: torch.quantize_per_tensor(t, 0.5, 0, torch.quint8),
               "nested": lambda: torch.nested.nested_tensor([t, t]), "meta": lambda: t.to("meta"),
               "requires_grad": lambda: t.clone().requires_grad_(True), "float8": lambda: t.to(torch.float8_e4m3fn),
               "bfloat16": lambda: t.to(torch.bfloat16), "uint16": lambda: t.to(torch.uint16)}[kind]()
        torch.save(obj, pt)
    return pt


REFUSED = {"timedelta": "time spans", "datetime": "dates", "text": "text", "sparse": "sparse tensor",
           "sparse_csr": "sparse tensor", "quantized": "quantized tensor", "nested": "nested tensor",
           "meta": "without data"}
HARMLESS = ("requires_grad", "float8", "bfloat16", "uint16")


def test_exotic_volumes_are_bad_volumes_with_their_reason_in_run_and_prepare_alike(tmp_path):
    """One table: eight exotic volumes (refused, with their reason) and four harmless ones (accepted)."""
    table, paths = _volumes_table(tmp_path, n_subjects=4, per=5)
    df = pd.read_csv(table, dtype=str)
    refused_rows = dict(zip([0, 1, 5, 6, 10, 11, 15, 16], REFUSED))  # each monkey keeps three scans
    harmless_rows = dict(zip([2, 7, 12, 17], HARMLESS))
    for i, kind in {**refused_rows, **harmless_rows}.items():
        df.loc[i, "path"] = f"vol/{_exotic(kind, paths[i], _volume(i)).name}"
    df.to_csv(table, index=False)

    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "refused", *VOLUME_MODELS)
    assert_clean_refusal(rc, err, "8 unusable volume(s)", "--skip-bad-scans")
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", "--skip-bad-scans", *VOLUME_MODELS)
    assert rc == 0 and "Traceback" not in err, err
    q = pd.read_csv(tmp_path / "run" / "data_quality.csv", dtype=str, keep_default_na=False)
    for i, kind in refused_rows.items():
        assert (q.loc[i, "status"], q.loc[i, "reason"]) == ("dropped", "bad_volume"), kind
        assert REFUSED[kind] in q.loc[i, "detail"], (kind, q.loc[i, "detail"])
    for i, kind in harmless_rows.items():
        assert q.loc[i, "status"] == "kept", (kind, q.loc[i, "detail"])
    _no_temporaries(tmp_path / "run")

    rc, _, err = icpcv("prepare", table, "--out", tmp_path / "prep", "--shape", "6x6x12", "--quiet")
    assert rc == 3 and "Traceback" not in err, err
    q = pd.read_csv(tmp_path / "prep" / "quality.csv", dtype=str, keep_default_na=False)
    for i, kind in refused_rows.items():
        assert q.loc[i, "status"] == "skipped", kind
        assert q.loc[i, "reason"] in ("wrong_dtype", "not_dense", "unreadable"), (kind, q.loc[i, "reason"])
        assert REFUSED[kind] in q.loc[i, "detail"], (kind, q.loc[i, "detail"])
    for i, kind in harmless_rows.items():
        assert q.loc[i, "status"] == "converted", (kind, q.loc[i, "detail"])
    _no_temporaries(tmp_path / "prep")


# --------------------------------------------------------------------------- cause 3: one monkey is one monkey


def test_a_predictions_table_with_mixed_spellings_of_subjects_gives_the_same_statistics(tmp_path):
    from icpcv.stats.io import read_predictions
    from icpcv.stats.study import analyze_study
    from icpcv.stats.synthetic import synthetic_predictions

    p = synthetic_predictions(n_subjects=8, seed=3)
    p = p[p["model"].isin(["ols_iop", "cnn"])].reset_index(drop=True)
    p["subject"] = p["subject"].astype(str)
    assert set(p["subject"]) <= {str(i) for i in range(1, 100)}, set(p["subject"])  # whole numbers, to respell
    clean, mixed = tmp_path / "clean.csv", tmp_path / "mixed.csv"
    p.to_csv(clean, index=False)
    spellings = [lambda s: s, lambda s: f"{s}.0", lambda s: f"0{s}", lambda s: f" {s} ", lambda s: f"{s}.00"]
    p.assign(subject=[spellings[i % len(spellings)](s) for i, s in enumerate(p["subject"])]).to_csv(mixed, index=False)
    a, b = read_predictions(clean), read_predictions(mixed)
    assert b["subject"].nunique() == a["subject"].nunique() == 8
    ra, rb = analyze_study(a, n_boot=200), analyze_study(b, n_boot=200)
    assert rb.n_subjects == 8
    assert rb.to_dict() == ra.to_dict()


def test_scan_tables_and_predictions_spell_a_subject_the_same_way(tmp_path):
    from icpcv.cohort.table import read_scan_table
    from icpcv.stats.io import validate_predictions

    spelled = ["1", "1.0", "01", "+1", "m1", "1.5"]
    t = tmp_path / "t.csv"
    pd.DataFrame(dict(scan_id=[f"s{i}" for i in range(6)], subject=spelled, iop="10", icp="5")).to_csv(t, index=False)
    from_table = list(read_scan_table(t).scans["subject"])
    preds = pd.DataFrame(dict(fold=0, subject=spelled, scan_id=[f"s{i}" for i in range(6)], model="m", y_true=5.0,
                              y_pred=5.0))
    assert list(validate_predictions(preds)["subject"]) == from_table == ["1", "1", "1", "1", "m1", "1.5"]


# --------------------------------------------------------------------------- cause 4: paths stay where they belong


def test_scan_ids_and_relative_paths_that_climb_out_of_their_folder_are_dropped_with_a_reason(tmp_path):
    import torch

    from icpcv.cohort.table import read_scan_table

    scans = tmp_path / "data" / "scans"
    scans.mkdir(parents=True)
    for x in ("a", "b", "c"):
        torch.save(torch.zeros(4, 4, 8), scans / f"{x}.pt")
    torch.save(torch.zeros(4, 4, 8), tmp_path / "data" / "outside.pt")  # exists: today it is loaded
    torch.save(torch.zeros(4, 4, 8), tmp_path / "elsewhere.pt")
    ids = ["a", "b", "c", "../outside", "a/../../outside", "../../elsewhere", str(tmp_path / "elsewhere")]
    seed = pd.DataFrame(dict(id=ids, monkey_id="1", iop="10", icp="5", torch_present="TRUE"))
    seed.to_csv(tmp_path / "seed.csv", index=False)
    q = read_scan_table(tmp_path / "seed.csv", scans_dir=scans).quality.set_index("scan_id")
    for x in ids[3:]:
        assert q.loc[x, "reason"] == "path_outside", (x, q.loc[x].to_dict())
        assert "outside --scans" in q.loc[x, "value"]
    assert (q.loc[["a", "b", "c"], "status"] == "kept").all()

    vol = tmp_path / "data" / "vol"
    vol.mkdir()
    for x in ("a", "b"):
        np.save(vol / f"{x}.npy", _volume(0))
    np.save(tmp_path / "outside.npy", _volume(1))
    plain = pd.DataFrame(dict(scan_id=["a", "b", "o", "p", "abs"], subject="1", iop="10", icp="5",
                              path=["vol/a.npy", "vol/../vol/b.npy", "../outside.npy", "vol/../../outside.npy",
                                    str(tmp_path / "outside.npy")]))
    plain.to_csv(tmp_path / "data" / "plain.csv", index=False)
    q = read_scan_table(tmp_path / "data" / "plain.csv").quality.set_index("scan_id")
    assert list(q["reason"]) == ["", "", "path_outside", "path_outside", ""]  # an absolute path is the author's choice

    # prepare: relative raw paths stay inside --raw
    rc, _, err = icpcv("prepare", tmp_path / "data" / "plain.csv", "--raw", tmp_path / "data", "--out",
                       tmp_path / "prep", "--shape", "4x4x8", "--quiet")
    assert rc == 3 and "Traceback" not in err, err
    q = pd.read_csv(tmp_path / "prep" / "quality.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    assert list(q["reason"]) == ["", "", "path_outside", "path_outside", ""], q["reason"]
    assert "lies outside" in q.loc["o", "detail"]


# --------------------------------------------------------------------------- cause 5: numbers as a lab writes them


NOT_DECIMAL = ["2_0", "\uff12\uff10", "\u0662\u0660", "1,5", "0x10", "20 mmHg", "\u00bd", "2\u00a00"]


def test_only_plain_decimal_numbers_are_pressures(tmp_path):
    from icpcv.cohort.table import REASONS, read_scan_table
    from icpcv.stats.io import validate_predictions

    good = ["20", "20.0", "2e1", " 20 ", "+20", ".5e2"]
    rows = [(f"i{k}", "1", v, "5") for k, v in enumerate(NOT_DECIMAL + good)] + \
        [(f"c{k}", "2", "15", v) for k, v in enumerate(NOT_DECIMAL)] + [("ok", "2", "15", "5")]
    t = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["scan_id", "subject", "iop", "icp"]).to_csv(t, index=False)
    q = read_scan_table(t).quality.set_index("scan_id")
    for k, v in enumerate(NOT_DECIMAL):
        assert (q.loc[f"i{k}", "reason"], q.loc[f"i{k}", "value"]) == ("iop_not_numeric", v.strip()), v
        assert q.loc[f"c{k}", "reason"] == "icp_not_numeric", v
        assert "2_0" in q.loc[f"i{k}", "detail"]  # the reason says what is not read
    for k in range(len(good)):
        assert q.loc[f"i{k + len(NOT_DECIMAL)}", "status"] == "kept"
    assert "plain decimal number" in REASONS["iop_not_numeric"]
    preds = pd.DataFrame(dict(fold=0, subject="1", scan_id=["a", "b"], model="m", y_true="5", y_pred=["5", "2_0"]))
    with pytest.raises(Exception, match="row 2, column y_pred: '2_0' is not a number"):
        validate_predictions(preds)


def test_power_monkeys_are_plain_whole_numbers():
    rc, _, err = icpcv("power", "nowhere", "--monkeys", "6,1_0")
    assert_clean_refusal(rc, err, "--monkeys: '1_0' is not a whole number")


# --------------------------------------------------------------------------- cause 6: nothing the user gave is overwritten


def test_prepare_refuses_an_out_whose_files_would_replace_its_inputs(tmp_path):
    table, paths = _volumes_table(tmp_path / "d", n_subjects=1, per=2)
    own = tmp_path / "d" / "table.csv"  # the name prepare writes
    own.write_bytes(table.read_bytes())
    before = own.read_bytes()
    rc, _, err = icpcv("prepare", own, "--out", tmp_path / "d", "--shape", "6x6x12", "--quiet")
    assert_clean_refusal(rc, err, "would replace the input", "table.csv")
    assert own.read_bytes() == before
    assert not (tmp_path / "d" / "quality.csv").exists()
    # a raw file where prepare writes a volume: volumes/<scan id>.npy
    (tmp_path / "e" / "volumes").mkdir(parents=True)
    np.save(tmp_path / "e" / "volumes" / "s00.npy", _volume(0))
    pd.DataFrame(dict(scan_id=["s00"], subject="1", iop="10", icp="5", path="volumes/s00.npy")) \
        .to_csv(tmp_path / "e" / "t.csv", index=False)
    rc, _, err = icpcv("prepare", tmp_path / "e" / "t.csv", "--out", tmp_path / "e", "--shape", "6x6x12", "--quiet")
    assert_clean_refusal(rc, err, "would replace the input", "s00.npy")


def test_run_and_analyze_refuse_an_out_whose_files_would_replace_their_inputs(tmp_path, labels_run):
    d = tmp_path / "d"
    table = _labels_table(d / "predictions.csv")  # a scan table named as a run's own predictions
    before = table.read_bytes()
    rc, _, err = icpcv("run", "--manifest", table, "--out", d, *FAST)
    assert_clean_refusal(rc, err, "would replace the input")
    other = _labels_table(d / "scans.csv")
    rc, _, err = icpcv("run", "--manifest", other, "--out", d, "--fresh", *FAST)  # --fresh empties the folder
    assert_clean_refusal(rc, err, "lies inside it", "empties the folder")
    rc, _, err = icpcv("run", "--manifest", other, "--out", tmp_path / "r", "--log-file", other, *FAST)
    assert_clean_refusal(rc, err, "--log-file", "would replace the input")
    assert table.read_bytes() == before and not (d / "run.json").exists() and not (tmp_path / "r").exists()

    preds = pd.read_csv(labels_run / "predictions.csv")
    foreign = tmp_path / "a" / "figures" / "p.csv"  # analyze writes figures/ into --out
    foreign.parent.mkdir(parents=True)
    preds.to_csv(foreign, index=False)
    rc, _, err = icpcv("analyze", foreign, "--out", tmp_path / "a", "--n-boot", "10")
    assert_clean_refusal(rc, err, "would replace the input")
    assert not (tmp_path / "a" / "stats.json").exists()
    # a run's own predictions analysed into it again: read, not rewritten, so allowed
    run = tmp_path / "copy"
    shutil.copytree(labels_run, run)
    rc, _, err = icpcv("analyze", run / "predictions.csv", "--out", run, "--n-boot", "10", "--reference", "mean")
    assert rc == 0, err


# --------------------------------------------------------------------------- cause 7: a question that cannot be answered


def test_a_reference_that_is_not_there_is_refused_up_front(tmp_path, labels_run):
    rc, _, err = icpcv("run", "--manifest", _labels_table(tmp_path / "t.csv"), "--out", tmp_path / "r",
                       "--reference", "cnn", *FAST)
    assert_clean_refusal(rc, err, "--reference cnn is not among --models (mean,ols_iop)")
    assert not (tmp_path / "r").exists()
    rc, _, err = icpcv("analyze", labels_run / "predictions.csv", "--out", tmp_path / "a", "--reference", "cnn",
                       "--n-boot", "10")
    assert_clean_refusal(rc, err, "--reference cnn is not a model of", "mean, ols_iop")
    assert not (tmp_path / "a").exists()


def test_saliency_without_a_network_is_refused(tmp_path):
    rc, _, err = icpcv("run", "--manifest", _labels_table(tmp_path / "t.csv"), "--out", tmp_path / "r",
                       "--saliency", "2", *FAST)
    assert_clean_refusal(rc, err, "--saliency 2 maps where a network looks", "no network")
    assert not (tmp_path / "r").exists()


def test_power_refuses_an_effect_larger_than_the_references_mae(tmp_path, labels_run):
    run = tmp_path / "run"
    shutil.copytree(labels_run, run)
    before = sorted(p.name for p in run.iterdir())
    rc, _, err = icpcv("power", run, "--model", "mean", "--reference", "ols_iop", "--effect", "100", "--n-sim", "100")
    assert_clean_refusal(rc, err, "--effect 100: larger than the reference ols_iop's MAE", "below zero")
    assert sorted(p.name for p in run.iterdir()) == before  # no power.json


def test_the_reports_configuration_shows_no_setting_that_did_nothing(labels_run):
    import html

    page = html.unescape((labels_run / "index.html").read_text())
    start = page.index("<dt>manifest</dt>")
    keys = re.findall(r"<dt>([^<]*)</dt>", page[page.rindex("<dl", 0, start):page.index("</dl>", start)])
    assert "models" in keys and "n_boot" in keys and "reference" in keys, keys
    for key in ("train.epochs", "train.lr", "repeats", "saliency", "val_fraction", "signal", "data_seed", "phantom"):
        assert key not in keys, key  # a labels-only run on a table: no network, no phantom


# --------------------------------------------------------------------------- cause 8: readers agree


def test_one_axis_rule_for_run_and_prepare_in_every_format(tmp_path):
    import nibabel as nib
    import torch

    from icpcv.cohort.volumes import read_volume
    from icpcv.prepare.core import PrepareOptions, convert_volume

    v = _volume(3)
    files = {"xyz1.nii.gz": lambda p: nib.save(nib.Nifti1Image(v[..., None], np.eye(4)), p),
             "xyz11.nii": lambda p: nib.save(nib.Nifti1Image(v[..., None, None], np.eye(4)), p),
             "xyz1.npy": lambda p: np.save(p, v[..., None]), "1xyz.npy": lambda p: np.save(p, v[None]),
             "xyz1_fortran.npy": lambda p: np.save(p, np.asfortranarray(v[..., None])),
             "xyz1.pt": lambda p: torch.save(torch.from_numpy(v)[..., None], p)}
    for name, write in files.items():
        write(tmp_path / name)
        got = read_volume(tmp_path / name)  # icpcv run's reader refused (X, Y, Z, 1)
        q = convert_volume(tmp_path / name, tmp_path / f"out_{name}.npy", PrepareOptions(shape=SHAPE))
        assert got.shape == SHAPE and np.array_equal(got, v), name
        assert q["raw_shape"] == "6x6x12" and np.allclose(np.load(tmp_path / f"out_{name}.npy"), v, atol=1e-4), name
    for bad in (v[..., None, :], v[None, None]):  # a singleton in the middle, two leading: not a volume
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(Exception, match="expected 3 axes"):
            read_volume(tmp_path / "bad.npy")


def test_analyze_on_one_subject_gives_a_clear_answer_as_run_does(tmp_path, labels_run):
    preds = pd.read_csv(labels_run / "predictions.csv", dtype=str)
    one = tmp_path / "one.csv"
    preds[preds["subject"] == "2"].to_csv(one, index=False)
    rc, _, err = icpcv("analyze", one, "--out", tmp_path / "a", "--n-boot", "10")
    assert_clean_refusal(rc, err, "only 1 subject (2)", "at least 2 monkeys")
    assert not (tmp_path / "a").exists()


def test_a_huge_cell_is_named_not_copied_into_data_quality_and_the_report(labels_run):
    q = pd.read_csv(labels_run / "data_quality.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    assert q.loc["huge", "reason"] == "iop_not_numeric"
    assert q.loc["huge", "value"].endswith(f"… ({HUGE:,} characters)") and len(q.loc["huge", "value"]) < 300
    assert (labels_run / "data_quality.csv").stat().st_size < 100_000
    assert (labels_run / "index.html").stat().st_size < HUGE / 2


# --------------------------------------------------------------------------- cause 9: messages name the file and the options


def test_repeat_errors_name_the_file_and_engine_errors_name_options(tmp_path, labels_run, capsys):
    from types import SimpleNamespace

    from icpcv.commands.analyze import cmd_analyze

    p = pd.read_csv(labels_run / "predictions.csv", dtype=str, keep_default_na=False)
    p["repeat"] = ["0" if m == "mean" and i else "" for i, m in enumerate(p["model"])]  # row 1 of mean: empty
    first_mean = int(np.flatnonzero(p["model"] == "mean")[0])
    p.loc[first_mean, "repeat"] = ""
    table = tmp_path / "with_repeats.csv"
    p.to_csv(table, index=False)
    rc, _, err = icpcv("analyze", table, "--out", tmp_path / "a", "--n-boot", "10")
    assert_clean_refusal(rc, err, f"with_repeats.csv row {first_mean + 1}, column repeat")
    # the engine's words for a setting are the option's (a call that bypasses the command line's checks)
    args = SimpleNamespace(predictions=str(labels_run / "predictions.csv"), out=str(tmp_path / "b"), reference=None,
                           n_boot=0, seed=0, ci_level=0.95, ci_method=None)
    assert cmd_analyze(args) == 2
    err = capsys.readouterr().err
    assert "--n-boot must be at least 1" in err and "n_boot" not in err.replace("--n-boot", "")
    rc, _, err = icpcv("compare", labels_run, labels_run, "--out", tmp_path / "c", "--ci-method", "bogus")
    assert rc == 2 and "--ci-method" in err and "Traceback" not in err


def test_the_inputs_check_survives_a_symbolic_link_loop(tmp_path):
    """Found by the fuzz: Path.resolve raised on a raw file that is a link to itself."""
    (tmp_path / "loop.npy").symlink_to(tmp_path / "loop.npy")
    np.save(tmp_path / "ok.npy", _volume(0))
    pd.DataFrame(dict(scan_id=["a", "b"], subject="1", iop="10", icp="5", path=["loop.npy", "ok.npy"])) \
        .to_csv(tmp_path / "t.csv", index=False)
    rc, _, err = icpcv("prepare", tmp_path / "t.csv", "--out", tmp_path / "out", "--shape", "6x6x12", "--quiet")
    assert rc == 3 and "Traceback" not in err, err
