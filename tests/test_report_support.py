"""Shared by the report, browser and notebook tests: small real runs, made once per test session.

Not a test module (it holds no tests); its name only keeps it among the report's files. Runs are
real: the pipeline's prepare -> fold jobs -> gather, then ``icpcv.stats.analyze`` -> stats.json.
"""
from __future__ import annotations

import fcntl
import shutil
from contextlib import contextmanager
from pathlib import Path

from icpcv.config import RunConfig
from rundir_support import make_config
from icpcv.run.executors import execute
from icpcv.run.pipeline import finish, gather, prepare
from icpcv.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
MONKEY_TABLE = REPO.parent / "shared" / "data" / "monkey_data.csv"

#: the tiny synthetic run the tests share: every default model, CNN learning curves, 6 monkeys
TINY = make_config(phantom="tiny", epochs=2, n_boot=300)
#: a second run on the same fold plan (same cohort, folds and seed), another CNN schedule; no report
TINY_B = make_config(phantom="tiny", epochs=1, n_boot=300, models=("ols_iop", "cnn"))
#: the tiny run with its networks trained 3 times per fold (``--repeats 3``): the Training randomness section
TINY_REPEATS = make_config(phantom="tiny", epochs=2, n_boot=300, models=("mean", "ols_iop", "cnn"), folds=3,
                           repeats=3)
#: issue 14: a tiny run with `--saliency 2` (maps of 2 held-out scans per monkey, attribution.json, the section)
TINY_SALIENCY = make_config(phantom="tiny", epochs=2, n_boot=300, models=("ols_iop", "cnn"), saliency=2)
#: the real label table, labels only; made with `--leakage-audit` (a scan-level twin in scan_split/)
LABELS = make_config(manifest=str(MONKEY_TABLE), models=("mean", "ols_iop"), n_boot=300)

_made: dict[str, Path | dict] = {}


def make_run(cfg: RunConfig, run_dir: Path, report: bool = True) -> Path:
    """A complete run directory as ``icpcv run`` leaves it: folds, predictions, stats.json and, with
    ``report``, index.html (the pipeline's own last step)."""
    rec = prepare(cfg, run_dir)
    execute(run_dir, RunDir.units(rec), executor="local", workers=1, device="cpu", progress=None)
    if report:
        finish(run_dir)
    else:
        from icpcv.stats import analyze, write_stats

        result = analyze(gather(run_dir), reference=cfg.reference, n_boot=cfg.n_boot, seed=cfg.seed,
                         ci_level=cfg.ci_level)
        write_stats(result, run_dir / "stats.json")
    return run_dir


def _shared_base(base: Path) -> Path:
    """Where the shared runs live: under pytest-xdist every worker has its own base temp
    (``.../pytest-N/popen-gwK``), so the runs go one level up, beside the workers' folders, and
    each is made once for the whole session, whichever worker asks first."""
    base = Path(base)
    if base.parent.name.startswith("popen-gw"):
        return base.parent.parent / base.name
    return base


@contextmanager
def _once(path: Path):
    """Hold ``path``'s lock (across xdist workers); yield whether it is already made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = path.with_name(path.name + ".done")
        if not done.exists() and path.exists():  # a worker died half-way: start again
            shutil.rmtree(path)
        yield done.exists()
        done.touch()


def shared_run(name: str, base: Path) -> Path:
    """One run per name and test session (the tests only read it, or copy it first)."""
    if name not in _made:
        path = _shared_base(base) / name
        with _once(path) as made:
            if not made:
                _make_shared(name, path)
        _made[name] = path
    return _made[name]


def _make_shared(name: str, path: Path) -> None:
    if name == "labels":  # through the pipeline's own entry, with the leakage audit's scan-split twin
        from icpcv.run.pipeline import run

        run(LABELS, path, device="cpu", leakage_audit=True)
    else:
        cfg = {"tiny": TINY, "tiny_b": TINY_B, "tiny_repeats": TINY_REPEATS,
               "tiny_saliency": TINY_SALIENCY}[name]
        make_run(cfg, path, report=name != "tiny_b")


def shared_compare(base: Path) -> Path:
    """``icpcv compare`` of the two tiny runs (same fold plan, 2 vs 1 CNN epochs), once per session."""
    if "compare" not in _made:
        from icpcv.commands import main

        tiny, tiny_b = shared_run("tiny", base), shared_run("tiny_b", base)
        out = _shared_base(base) / "compare"
        with _once(out) as made:
            if not made:
                rc = main(["compare", str(tiny), str(tiny_b), "--names", "epochs2,epochs1", "--out", str(out),
                           "--n-boot", "200"])
                assert rc == 0
        _made["compare"] = out
    return _made["compare"]


def predictions_table(path: Path) -> Path:
    """A predictions table as another project's cross-validation would leave it: 8 monkeys x 6 scans,
    one fold per monkey, one monkey labelled with markup; ``ols_iop`` is off by a per-monkey offset plus
    noise (SD 4 mmHg), ``cnn`` within 0.5 mmHg (SD), so the cnn clearly wins."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    rows = []
    for k, s in enumerate([f"m{i}" for i in range(1, 8)] + [HOSTILE]):
        offset = rng.normal(0, 1.5)
        for j in range(6):
            y, iop = 5 + 4 * j + rng.normal(0, 1), 10 + 3 * j
            for model, err in (("ols_iop", offset + rng.normal(0, 4)), ("cnn", rng.normal(0, 0.5))):
                rows.append(dict(fold=k, subject=s, scan_id=f"s{k}_{j}", model=model, y_true=round(y, 2),
                                 y_pred=round(y + err, 2), iop=iop))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def shared_analysis(base: Path) -> dict:
    """``icpcv analyze TABLE --out DIR`` of :func:`predictions_table`, outside any run, once per session:
    ``src`` (the table), ``out`` (the analysis directory), ``rc`` and ``stdout`` of the command."""
    if "analysis" not in _made:
        import contextlib
        import io

        from icpcv.commands import main

        src = predictions_table(Path(base) / "external" / "predictions_from_elsewhere.csv")
        out = Path(base) / "analysis"
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            rc = main(["analyze", str(src), "--out", str(out), "--n-boot", "500"])
        _made["analysis"] = dict(src=src, out=out, rc=rc, stdout=text.getvalue())
    return _made["analysis"]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "*.pt", "index.html", "figures"))
    return dst


HOSTILE = "<script>alert(1)</script>"


def hostile_run(base: Path) -> Path:
    """``make_hostile_run`` once per test session."""
    if "hostile" not in _made:
        _made["hostile"] = make_hostile_run(Path(base) / "hostile")
    return _made["hostile"]


def make_hostile_run(base: Path) -> Path:
    """A labels-only run whose monkey labels, scan ids, dropped values, folder and a model name hold
    markup (and a '$' that matplotlib would read as maths): the report must show them as text."""
    import pandas as pd

    from icpcv.util import atomic_write_json, read_json

    base.mkdir(parents=True, exist_ok=True)
    subjects = [HOSTILE, "m$2$", "<b>3</b>", "4 & 5"]
    rows = []
    for i, s in enumerate(subjects):
        for j in range(6):
            rows.append(dict(scan_id=f"<img src=x onerror=alert({i}{j})>" if j == 0 else f"s{i}_{j}", subject=s,
                             iop=10 + 5 * j, icp=5 + 3 * i + j, path="",
                             protocol="<u>7x7</u>" if j % 2 else "3x3"))  # issue 19: the acquisition section
    rows.append(dict(scan_id="<img src=y onerror=alert(9)>", subject=subjects[1], iop=12, icp="<script>x</script>",
                     path=""))
    rows.append(dict(scan_id="bad2", subject="", iop=12, icp=9, path=""))
    table = base / "hostile.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    run_dir = base / "run<b>x"
    make_run(make_config(manifest=str(table), models=("mean", "ols_iop"), n_boot=100), run_dir)
    # a model name with markup: rename it in the files the report reads
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"subject": str, "scan_id": str})
    preds["model"] = preds["model"].replace("mean", HOSTILE)
    preds.to_csv(run_dir / "predictions.csv", index=False)
    stats = read_json(run_dir / "stats.json")
    stats["models"] = {(HOSTILE if k == "mean" else k): v for k, v in stats["models"].items()}
    for c in stats["comparisons"]:
        c["model"] = HOSTILE if c["model"] == "mean" else c["model"]
    stats["warnings"].append(f"a warning about {HOSTILE}")
    atomic_write_json(run_dir / "stats.json", stats)
    from icpcv.report import write_report

    write_report(run_dir)
    return run_dir
