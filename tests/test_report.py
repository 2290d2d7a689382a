"""The HTML report, the `report` and `compare` commands, on real (small) runs."""
from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import pandas as pd
import pytest

from icpcv.commands import main
from icpcv.errors import InputError, RunDirError
from icpcv.report import write_report
from icpcv.report.compare import compare_runs
from icpcv.util import read_json
from test_report_support import HOSTILE, MONKEY_TABLE, copy_run, hostile_run, shared_compare, shared_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "report_runs"
    return lambda name: shared_run(name, base)


class Page(HTMLParser):
    """Tags, ids, <img> sources and visible text of a report."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.ids, self.images, self.text, self.links = [], [], [], [], []
        self._skip = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._skip += tag in ("style", "title", "nav")
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a)
        for k in ("src", "href"):
            if a.get(k):
                self.links.append(a[k])

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "title", "nav")

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def test_report_of_a_synthetic_run(runs):
    run = runs("tiny")
    html = (run / "index.html").read_text()
    page = Page(html)
    stats = read_json(run / "stats.json")
    # the verdict comes first, then the sections in order
    order = ["verdict", "acquisition", "cohort", "data-quality", "folds", "models", "agreement", "trending", "training",
             "provenance", "warnings"]
    assert [i for i in page.ids if i in order] == order
    assert page.plain.index(stats["verdict"]) < page.plain.index("Cohort Source:")
    # self-contained: nothing but in-page anchors and data: URIs, and a CSP that forbids the network
    assert all(link.startswith(("#", "data:image/png;base64,")) for link in page.links), page.links
    assert "default-src 'none'" in html and "<script" not in html.lower()
    # every figure embedded is the PNG written next to it
    pngs = {p.stem: p.read_bytes() for p in (run / "figures").glob("*.png")}
    # per-model plots are small multiples, one figure each (issue 22)
    expected = {"cohort", "forest", "per_monkey_error", "predicted_vs_measured", "learning_curves", "bland_altman",
                "four_quadrant", "polar"}
    assert set(pngs) == expected
    embedded = {}
    for img in page.images:
        # the file name in the caption of that figure: the first after the image (captions vary in length)
        name = re.search(r"figures/(\S+)\.png", html[html.index(img["src"]) + len(img["src"]):]).group(1)
        embedded[name] = base64.b64decode(img["src"].split(",", 1)[1])
    assert embedded == pngs
    # the numbers are stats.json's, as printed
    for name, m in stats["models"].items():
        assert f"{m['mae']['estimate']:.2f}" in page.plain and f"{m['mae']['ci'][0]:.2f} to {m['mae']['ci'][1]:.2f}" \
            in page.plain, name
    for c in stats["comparisons"]:
        assert f"{c['delta']:.2f}" in page.plain
    for w in stats["warnings"]:
        assert w in page.plain
    # provenance: plan hash, git commit, time per fold
    env = read_json(run / "environment.json")
    assert read_json(run / "fold_plan.json")["hash"] in page.plain and str(env.get("git")) in page.plain
    assert "Time per fold" in page.plain and "Learning curves per fold" in page.plain
    assert "Every input row was kept." in page.plain


def test_report_trending_section_reads_stats_json(runs):
    """The trending section: the verdict's sentence for the verdict's own model, a row per model with
    stats.json's numbers, and the words that set the models whose prediction does not move apart."""
    run = runs("tiny")
    html = (run / "index.html").read_text()
    page = Page(html)
    stats = read_json(run / "stats.json")
    t = stats["trending"]
    best = min((c for c in stats["comparisons"] if c["metric"] == "mae"),
               key=lambda c: stats["models"][c["model"]]["mae"]["estimate"])["model"]
    assert t["verdict_model"] == best and t["verdict_sentence"].startswith(f"Within monkeys, at a fixed IOP step, the {best}'s")
    verdict = page.plain[:page.plain.index("Cohort Source:")]
    assert t["verdict_sentence"] in verdict
    section = Page(html[html.index('<section id="trending">'):html.index("</section>", html.index('id="trending"'))])
    for name, m in t["models"].items():
        rate = m["concordance_rate"]
        assert f"{name} " in section.plain and f" {100 * rate['estimate']:.0f} " in section.plain
        if rate["ci"]:
            assert f"{100 * rate['ci'][0]:.0f} to {100 * rate['ci'][1]:.0f}" in section.plain
        assert f"{m['polar']['angular_bias']['estimate']:.1f}" in section.plain
    # the IOP-only and constant models barely move at a fixed IOP step, and the report says so by name
    for name in ("mean", "ols_iop"):
        assert abs(t["models"][name]["change_ratio"]) < 0.1
    still = section.plain[section.plain.index("Here the predictions of"):]
    assert still.startswith("Here the predictions of mean, ols_iop") and "do not follow ICP changes" in still
    assert f"{t['n_pairs']} pairs in {t['n_subjects']} monkeys" in section.plain
    for w in t["warnings"]:
        assert w in section.plain


def test_report_of_the_real_table_folds_many_dropped_rows(runs):
    if not MONKEY_TABLE.exists():
        pytest.skip(f"real label table not found at {MONKEY_TABLE}")
    run = runs("labels")
    html = (run / "index.html").read_text()
    page = Page(html)
    q = pd.read_csv(run / "data_quality.csv", dtype=str, keep_default_na=False)
    dropped = q[q["status"] == "dropped"]
    assert len(dropped) > 500
    # a reason summary, and every dropped row inside a <details> that starts folded
    assert f"{len(dropped)} of {len(q)} rows were dropped" in page.plain
    summary_table = html[html.index('id="data-quality"'):html.index("<details", html.index('id="data-quality"'))]
    for reason, n in dropped["reason"].value_counts().items():
        assert re.search(rf">{reason}</td><td[^>]*>[^<]*</td><td>{n}</td>", summary_table), reason
    details = html[html.index("<details", html.index('id="data-quality"')):html.index("</details>",
                                                                                      html.index('id="data-quality"'))]
    assert "<details>" in details[:20]  # not open
    body = Page(details).plain
    for r in dropped.itertuples():
        assert f" {r.row} " in f" {body} " and r.reason in body
    assert "Labels only: no scan volumes." in page.plain
    assert "training" not in page.ids  # no CNN, no learning curves


def test_user_strings_are_escaped(tmp_path_factory):
    run = hostile_run(tmp_path_factory.getbasetemp() / "report_runs")
    html = (run / "index.html").read_text()
    assert "<script" not in html.lower() and "<img src=x" not in html and "<img src=y" not in html
    assert "<b>3</b>" not in html and "<b>x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # subject, model name, warning: shown as text
    assert "&lt;img src=y onerror=alert(9)&gt;" in html  # a dropped row's scan id
    assert "run&lt;b&gt;x" in html  # the run folder's name
    page = Page(html)
    assert HOSTILE in page.plain and "m$2$" in page.plain and "4 & 5" in page.plain
    assert "&lt;script&gt;x&lt;/script&gt;" in html  # a dropped row's value
    assert "<u>7x7" not in html and "&lt;u&gt;7x7&lt;/u&gt;" in html  # a protocol in "Could it be the acquisition?"
    # fewer than 500 dropped rows: the table is shown, not folded
    assert "Dropped rows" in page.plain and "All 2 dropped rows" not in page.plain


def test_report_command_regenerates_with_warm_start_and_calibration(runs, tmp_path, capsys):
    from icpcv.models.pretrained import WarmStart

    run = copy_run(runs("tiny"), tmp_path / "run")
    warm = WarmStart(path="/models/resnet_10<x>.pth", sha256="ab" * 32, matched=40, missing=2, unexpected=3,
                     shape_mismatched=1, backbone_total=42, backbone_matched=40, fraction=40 / 42,
                     missing_keys=["head.weight", "head.bias"], unexpected_keys=["fc.weight", "fc.bias", "x"],
                     shape_mismatched_keys=["conv1.weight"])
    for rec_path in sorted((run / "folds").glob("fold_*/record.json")):
        rec = read_json(rec_path)
        rec["models"]["cnn"]["warm_start"] = warm.to_dict()
        rec_path.write_text(json.dumps(rec))
    (run / "calibration.json").write_text(json.dumps([
        {"scenario": "null", "method": "t", "coverage": 0.947, "n_sim": 1000},
        {"scenario": "null", "method": "percentile", "coverage": 0.912, "n_sim": 1000}]))
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'index.html'}"
    assert len(list((run / "figures").glob("*.png"))) >= 8
    page = Page((run / "index.html").read_text())
    assert "Warm start: pretrained tensors loaded" in page.plain and "missing: head.weight, head.bias" in page.plain
    assert "resnet_10<x>.pth" in page.plain and "40/42 (95%)" in page.plain and "shape mismatched: conv1.weight" \
        in page.plain
    assert "calibration" in page.ids and "0.912" in page.plain and "percentile" in page.plain


def test_report_command_names_missing_files(runs, tmp_path, capsys):
    run = copy_run(runs("tiny"), tmp_path / "run")
    (run / "stats.json").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stats.json missing" in err and str(run) in err
    with pytest.raises(RunDirError, match="no run.json"):
        write_report(run / "cohort")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_compare_pairs_runs_on_the_same_plan(runs, tmp_path, tmp_path_factory):
    a, b = runs("tiny"), runs("tiny_b")
    out = shared_compare(tmp_path_factory.getbasetemp() / "report_runs")  # `icpcv compare A B --names ... --out ...`
    stats, meta = read_json(out / "stats.json"), read_json(out / "compare.json")
    # by default only the model whose predictions differ between the runs (the CNN) is compared
    assert set(stats["models"]) == {"epochs2:cnn", "epochs1:cnn"} and stats["reference"] == "epochs2:cnn"
    assert meta["plan_hash"] == read_json(a / "fold_plan.json")["hash"]
    assert {d["key"]: d["values"] for d in meta["config_differences"]}["train.epochs"] == [2, 1]
    # the paired difference is the engine's, on the stacked predictions: pooled MAE(b) - MAE(a)
    mae = {}
    for name, run in (("epochs2", a), ("epochs1", b)):
        p = pd.read_csv(run / "predictions.csv")
        p = p[p["model"] == "cnn"]
        mae[name] = (p["y_pred"] - p["y_true"]).abs().mean()
    cmp = next(c for c in stats["comparisons"] if c["metric"] == "mae")
    assert cmp["model"] == "epochs1:cnn" and cmp["delta"] == pytest.approx(mae["epochs1"] - mae["epochs2"])
    assert cmp["p_signflip"] is not None and len(cmp["ci"]) == 2
    page = Page((out / "index.html").read_text())
    assert stats["verdict"] in page.plain and "How the runs' configurations differ" in page.plain
    assert {"verdict", "runs", "models", "agreement"} <= set(page.ids)
    assert (out / "figures" / "forest.png").exists()
    # explicit models and reference
    out2 = compare_runs([a, b], tmp_path / "cmp2", names=["A", "B"], models=["ols_iop", "cnn"],
                        reference="B:ols_iop", n_boot=100)
    s2 = read_json(out2.parent / "stats.json")
    assert set(s2["models"]) == {"A:ols_iop", "A:cnn", "B:ols_iop", "B:cnn"} and s2["reference"] == "B:ols_iop"


def test_compare_refuses_runs_on_different_fold_plans(runs, tmp_path, capsys):
    if not MONKEY_TABLE.exists():
        pytest.skip(f"real label table not found at {MONKEY_TABLE}")
    a, b = runs("tiny"), runs("labels")
    rc = main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    ha, hb = read_json(a / "fold_plan.json")["hash"], read_json(b / "fold_plan.json")["hash"]
    assert rc == 2 and err.count("\n") == 1 and ha in err and hb in err and "fold plans differ" in err
    assert not (tmp_path / "cmp").exists()


def test_compare_refuses_bad_requests(runs, tmp_path):
    a, b = runs("tiny"), runs("tiny_b")
    with pytest.raises(InputError, match="at least two"):
        compare_runs([a], tmp_path / "x")
    with pytest.raises(InputError, match="no predictions for model.*ridge_scan"):
        compare_runs([a, b], tmp_path / "x", models=["ridge_scan"])
    with pytest.raises(InputError, match="--reference nope:cnn is not among"):
        compare_runs([a, b], tmp_path / "x", reference="nope:cnn")
    with pytest.raises(InputError, match="one of the runs"):
        compare_runs([a, b], a)
    changed = copy_run(b, tmp_path / "changed")
    p = pd.read_csv(changed / "predictions.csv")
    p.loc[0, "y_true"] += 1
    p.to_csv(changed / "predictions.csv", index=False)
    with pytest.raises(RunDirError, match="measured ICP differs on 1 scans"):
        compare_runs([a, changed], tmp_path / "x")
    shutil.rmtree(changed)


def test_report_pngs_are_the_pngs_of_a_tight_savefig(runs, monkeypatch):
    """``figures.to_png`` measures the tight box itself and draws each figure once; its bytes are the
    bytes ``savefig(bbox_inches="tight")`` writes (which draws twice), for every figure of a run's
    report (legends outside the axes, tight_layout with a rect, small multiples) and for a figure
    laid out at draw time (constrained layout, the attribution slices)."""
    import numpy as np
    from matplotlib.figure import Figure as MplFigure

    from icpcv.report import build
    from icpcv.report import attribution_figures as AF
    from icpcv.report import figures as F
    from icpcv.report.rundata import load_run

    def tight(fig) -> bytes:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=F.DPI, bbox_inches="tight", facecolor="white")
        return buf.getvalue()

    monkeypatch.setattr(F, "render", lambda figures, fig_dir: figures)  # keep the Figures, write nothing
    data = load_run(runs("tiny"))

    def figures():
        made = [f for fs in build.run_figures(data, data.stats).values() for f in fs]
        rng = np.random.default_rng(0)
        with F.style():
            made.append(F.Figure("slices", "", "", AF.orthogonal_slices_figure(rng.random((8, 6, 10)))))
        return made

    draws = []
    real_draw = MplFigure.draw
    monkeypatch.setattr(MplFigure, "draw", lambda self, renderer: (draws.append(self), real_draw(self, renderer))[1])
    ours = figures()
    with F.style():
        ours_png = {f.name: F.to_png(f.fig) for f in ours}
    drawn = {id(f.fig): sum(d is f.fig for d in draws) for f in ours}
    theirs = figures()
    with F.style():
        theirs_png = {f.name: tight(f.fig) for f in theirs}
    assert len(ours_png) >= 8 and {"bland_altman", "polar", "cohort", "slices"} <= set(ours_png)
    for name, png in ours_png.items():
        assert png == theirs_png[name], f"{name}: to_png differs from savefig(bbox_inches='tight')"
    # drawn once, except the constrained figure, whose layout is savefig's first draw
    assert {f.name: drawn[id(f.fig)] for f in ours} == {f.name: 2 if f.name == "slices" else 1 for f in ours}


def test_to_png_under_a_matplotlibrc_with_autolayout():
    """A user's matplotlibrc with ``figure.autolayout: True``: clearing the placeholder engine must not
    install a tight engine that lays the figure out again (its rect, left for a legend below, would be
    lost); the bytes stay those of savefig's "tight". Made outside ``style()``, the figure's own dpi (100)
    is not the one it is written at (110): the box is measured at the latter, as savefig measures it."""
    import io

    import matplotlib

    from icpcv.report import figures as F

    def made():
        fig, ax = F.subplots(figsize=(4, 3))
        ax.plot([0, 1], [0, 1], label="a line with a long name")
        fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.2, 1, 1))
        return fig

    with matplotlib.rc_context({"figure.autolayout": True}):
        ours = F.to_png(made())
        buf = io.BytesIO()
        made().savefig(buf, format="png", dpi=F.DPI, bbox_inches="tight", facecolor="white")
    assert ours == buf.getvalue()
