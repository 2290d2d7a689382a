"""The report's figures: one seaborn style, a colour-blind-safe palette, pressures in mmHg.

Each function takes what the run directory holds (stats.json, predictions, tables) and returns a
matplotlib Figure, or None when there is nothing to draw. Lines and intervals come from
stats.json; the points are the out-of-fold predictions as written.
"""
from __future__ import annotations

import base64
import io
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from icpcv.stats.results import AnalysisResult, Comparison, ModelStats
from icpcv.util import atomic_write_bytes, fmt_p, is_finite_number, natural_sorted

from icpcv.writable import check_output_dir

#: seaborn's colour-blind palette (Wong-like, 10 colours); markers extend it past 10 monkeys
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DPI = 110
STYLE = dict(style="whitegrid", context="notebook", palette="colorblind", font_scale=0.95,
             rc={"text.parse_math": False, "axes.titleweight": "bold", "legend.frameon": False,
                 "figure.dpi": DPI, "savefig.dpi": DPI})


@dataclass
class Figure:
    name: str  # file stem under figures/
    title: str
    caption: str
    fig: object  # matplotlib Figure until rendered
    uri: str = ""
    png: bytes = b""


@contextmanager
def style():
    """The report's look, without touching the caller's matplotlib settings (or backend: the
    figures are built without pyplot, so a report renders the same in a notebook or a batch job)."""
    with matplotlib.rc_context():
        sns.set_theme(**STYLE)
        yield


def subplots(nrows=1, ncols=1, **kw):
    """Like pyplot.subplots, but the figure belongs to no pyplot state and needs no backend."""
    fig = MplFigure(figsize=kw.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kw)


def palette(n: int) -> list:
    return sns.color_palette("colorblind", max(n, 1))


def subject_styles(subjects: list[str]) -> dict[str, dict]:
    """One colour and marker per monkey, the same in every figure of a report."""
    base = palette(10)
    return {s: dict(color=base[i % 10], marker=MARKERS[(i // 10) % len(MARKERS)]) for i, s in enumerate(subjects)}


def model_colors(models: list[str]) -> dict[str, tuple]:
    base = palette(10)
    return {m: base[i % 10] for i, m in enumerate(models)}


def file_stem(text: str) -> str:
    """A file-name-safe version of a model or run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def to_png(fig) -> bytes:
    """The figure as PNG bytes, cropped to what it draws (legends outside the axes included) plus
    savefig's pad, as ``bbox_inches="tight"`` crops it. The box is measured here and handed to
    savefig, which then draws the figure once: given "tight", savefig draws it twice (a dry draw
    to measure, then the real one), and on small multiples each draw lays out every tick label
    again. The PNG is byte for byte the one "tight" writes (tests/test_report.py)."""
    buf = io.BytesIO()
    engine = fig.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        # laid out at draw time (constrained): savefig's dry draw is its layout
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
        return buf.getvalue()
    # tight_layout() leaves a placeholder engine that lays nothing out, but for which savefig draws twice;
    # None (not a matplotlibrc's figure.autolayout, which would lay the figure out again at the draw)
    with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)
    fig.set_dpi(DPI)  # measured at the dpi it is written at, as savefig measures it (figures made outside style())
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig.get_tightbbox(renderer).padded(matplotlib.rcParams["savefig.pad_inches"])
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches=box, facecolor="white")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render(figures: list[Figure], fig_dir: Path) -> list[Figure]:
    """PNG bytes and data URIs for every figure; the PNGs also go to ``fig_dir`` (a directory's
    ``figures/``; stale PNGs of an earlier report are removed)."""
    fig_dir = Path(fig_dir)
    # a read-only folder is said once, naming it, before any figure is drawn (not as OSError at the first PNG)
    check_output_dir(fig_dir, what="report's figures", option=None,
                     hint="copy the folder somewhere writable and run `icpcv report` on the copy")
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = set()
    for f in figures:
        stem, i = f.name, 1
        while f"{f.name}.png" in names:  # two names that differ only in unsafe characters
            i += 1
            f.name = f"{stem}_{i}"
        f.png = to_png(f.fig)
        f.uri = data_uri(f.png)
        f.fig = None  # free it
        atomic_write_bytes(fig_dir / f"{f.name}.png", f.png)
        names.add(f"{f.name}.png")
    for old in fig_dir.glob("*.png"):
        if old.name not in names:
            old.unlink()
    return figures


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns of small multiples: at most five across."""
    ncol = min(5, int(np.ceil(np.sqrt(n))) + (1 if n > 9 else 0), max(n, 1))
    return int(np.ceil(n / ncol)), ncol


def _label_panels(axes, n: int, xlabel: str, ylabel: str) -> None:
    """Hide the unused panels; the lowest panel of each column carries the x ticks and label."""
    nrow, ncol = axes.shape
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
    for c in range(ncol):
        rows = [r for r in range(nrow) if r * ncol + c < n]
        if rows:
            ax = axes[rows[-1], c]
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(xlabel, fontsize="small")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize="small")




def subject_legend(ax, styles: dict, subjects: list[str], title="monkey"):
    handles = [Line2D([], [], ls="", marker=styles[s]["marker"], color=styles[s]["color"], ms=6, label=s)
               for s in subjects]
    ax.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
              title_fontsize="small", ncol=1 if len(subjects) <= 16 else 2, borderaxespad=0)


def _scatter_by_subject(ax, x, y, subj, styles, s=16, alpha=0.65):
    for name in styles:
        m = subj == name
        if m.any():
            ax.scatter(x[m], y[m], s=s, alpha=alpha, color=styles[name]["color"], marker=styles[name]["marker"],
                       linewidths=0, label=name)


# --------------------------------------------------------------------------- cohort


def cohort_figure(quality: pd.DataFrame, scans: pd.DataFrame, subjects: list[str]):
    """Scans per monkey (kept and dropped) and the IOP x ICP design of the kept scans."""
    q = quality.copy()
    q["subject"] = q["subject"].replace("", "(none)")
    order = [s for s in subjects if s in set(q["subject"])] + \
        [s for s in dict.fromkeys(q["subject"]) if s not in subjects]
    counts = q.groupby(["subject", "status"]).size().unstack(fill_value=0).reindex(order, fill_value=0)
    for col in ("kept", "dropped"):
        if col not in counts:
            counts[col] = 0
    has_iop = scans["iop"].notna().any()
    fig, axes = subplots(1, 2 if has_iop else 1, figsize=(11, 4.2) if has_iop else (6.5, 4.2),
                         gridspec_kw={"width_ratios": [1, 1.25]} if has_iop else None, squeeze=False)
    ax = axes[0, 0]
    y = np.arange(len(counts))
    kept_c, drop_c = palette(10)[0], palette(10)[7]
    ax.barh(y, counts["kept"], color=kept_c, label="kept")
    ax.barh(y, counts["dropped"], left=counts["kept"], color=drop_c, label="dropped")
    ax.set_yticks(y, counts.index)
    ax.invert_yaxis()
    ax.set(xlabel="scans", ylabel="monkey", title="Scans per monkey")
    if counts["dropped"].any():
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small")
    if has_iop:
        ax = axes[0, 1]
        styles = subject_styles(subjects)
        d = scans.dropna(subset=["iop", "icp"])
        _scatter_by_subject(ax, d["iop"].to_numpy(float), d["icp"].to_numpy(float), d["subject"].to_numpy(),
                            styles, s=18)
        ax.set(xlabel="IOP (mmHg)", ylabel="ICP (mmHg)", title="Design: IOP × ICP of the kept scans")
        subject_legend(ax, styles, [s for s in subjects if s in set(d["subject"])])
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- comparisons


def forest_figure(comparisons: list[Comparison], ci_level: float):
    """Paired differences (model − reference) with their monkey-level intervals, one panel per metric."""
    rows = [c for c in comparisons if is_finite_number(c.delta)]
    if not rows:
        return None
    metrics = list(dict.fromkeys(c.metric for c in rows))
    n = max(sum(c.metric == m for c in rows) for m in metrics)
    labels = {m: [(c.model, c.reference) for c in rows if c.metric == m] for m in metrics}
    same = all(v == labels[metrics[0]] for v in labels.values())
    width = 4.3 * len(metrics) + (2.2 if same else 2.2 * len(metrics))
    fig, axes = subplots(1, len(metrics), figsize=(width, 0.5 * n + 1.7), squeeze=False)
    level = f"{round(ci_level * 100):g}%"
    for ax, metric in zip(axes[0], metrics):
        sub = [c for c in rows if c.metric == metric]
        y = np.arange(len(sub))[::-1]
        for yi, c in zip(y, sub):
            lo = c.lower if is_finite_number(c.lower) else c.delta
            hi = c.upper if is_finite_number(c.upper) else c.delta
            better = hi < 0
            worse = lo > 0
            color = palette(10)[2] if better else palette(10)[3] if worse else palette(10)[7]
            ax.plot([lo, hi], [yi, yi], color=color, lw=2.2, solid_capstyle="butt")
            ax.plot([c.delta], [yi], "o", color=color, ms=7)
            ax.annotate(f"Holm p {fmt_p(c.p_adjusted)}",
                        (1.0, yi), xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize="small")
        ax.axvline(0, color="0.2", lw=1)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_yticks(y, [f"{c.model} − {c.reference}" for c in sub] if not same or ax is axes[0, 0] else [])
        ax.set_ylim(-0.7, len(sub) - 0.3)
        ax.set(xlabel=f"difference in {metric.upper()} (mmHg), {level} CI",
               title=f"{metric.upper()}: model − reference")
        ax.grid(axis="y", visible=False)
    fig.text(0.01, -0.02, "left of 0: the model has the smaller error; green: interval excludes 0 in its favour, "
             "red: against it", fontsize="small", color="0.3")
    fig.tight_layout()
    return fig


def per_subject_figure(stats: AnalysisResult, subjects: list[str]):
    """Each monkey's MAE per model (from stats.json per_subject)."""
    rows = [dict(model=m, subject=str(s), mae=v.mae, n=v.n)
            for m, ms in stats.models.items() for s, v in ms.per_subject.items()]
    if not rows:
        return None
    d = pd.DataFrame(rows).dropna(subset=["mae"])
    order = [s for s in subjects if s in set(d["subject"])] + natural_sorted(set(d["subject"]) - set(subjects))
    models = list(dict.fromkeys(d["model"]))
    colors = model_colors(models)
    fig, ax = subplots(figsize=(8.5, 0.32 * len(order) + 1.6))
    offsets = np.linspace(-0.25, 0.25, len(models)) if len(models) > 1 else [0.0]
    pos = {s: i for i, s in enumerate(order)}
    for off, m in zip(offsets, models):
        g = d[d["model"] == m]
        ax.scatter(g["mae"], [pos[s] + off for s in g["subject"]], color=colors[m], marker=MARKERS[models.index(m) % 7],
                   s=30, label=m, zorder=3)
    ax.set_yticks(range(len(order)), [f"{s} (n={int(d[d.subject == s]['n'].max())})" for s in order])
    ax.invert_yaxis()
    ax.set(xlabel="mean absolute error of the monkey's scans (mmHg)", ylabel="held-out monkey",
           title="Error per monkey")
    ax.set_xlim(left=0)
    ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title_fontsize="small")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- agreement


def panel_order(models: list[str], first: list[str | None]) -> list[str]:
    """Small multiples' order: the models named in ``first`` (the verdict's model, the reference) that
    are present, then the others in their own order."""
    lead = [m for m in dict.fromkeys(first) if m is not None and m in models]
    return lead + [m for m in models if m not in lead]


def _ba_panel(ax, d: pd.DataFrame, mstats: ModelStats, styles: dict) -> list[str]:
    """One model's Bland-Altman panel; returns the lines' values, for the panel's own key."""
    mean = ((d["y_pred"] + d["y_true"]) / 2).to_numpy(float)
    diff = (d["y_pred"] - d["y_true"]).to_numpy(float)
    _scatter_by_subject(ax, mean, diff, d["subject"].to_numpy(), styles, s=11)
    ba = mstats.bland_altman
    text = []
    # monkeys use all ten palette colours, so the lines are black and grey, told apart by style
    if is_finite_number(ba.bias):
        ax.axhline(ba.bias, color="0.1", lw=1.4)
        text.append(f"bias {ba.bias:.2f}")
    loa = [y for y in (ba.loa or []) if is_finite_number(y)]
    for y in loa:
        ax.axhline(y, color="0.1", lw=1.2, ls="--")
    if loa:
        text.append("limits " + " / ".join(f"{y:.1f}" for y in loa))
    for b in (ba.loa_ci or []):
        if b and len(b) == 2 and all(is_finite_number(v) for v in b):
            ax.axhspan(b[0], b[1], color="0.5", alpha=0.15, lw=0)
    rloa = [y for y in (mstats.bland_altman_repeated.loa or []) if is_finite_number(y)]
    for y in rloa:
        ax.axhline(y, color="0.45", lw=2.0, ls=":")
    if rloa:
        text.append("repeated-measures " + " / ".join(f"{y:.1f}" for y in rloa))
    pb = ba.proportional_bias
    if is_finite_number(pb.slope):
        intercept = pb.intercept
        if not is_finite_number(intercept):  # a line of that slope through the centre of the points
            intercept = float(np.mean(diff)) - pb.slope * float(np.mean(mean))
        x0, x1 = float(np.nanmin(mean)), float(np.nanmax(mean))
        xs = np.array([x0, x1])
        ax.plot(xs, intercept + pb.slope * xs, color="0.25", lw=1.4, ls="-.")
        p = pb.p
        text.append(f"slope {pb.slope:.2f}"
                    + (f", p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}" if is_finite_number(p) else ""))
    return text


def bland_altman_figure(models: list[str], preds: pd.DataFrame, stats: AnalysisResult, subjects: list[str],
                        ci_level: float, first: list[str | None] = ()):
    """Small multiples: one Bland-Altman panel per model (predicted − measured against their mean,
    coloured by monkey, with stats.json's lines), the models in ``first`` leading; shared axes, so
    that the models' spreads compare at a glance. Each panel's key gives its lines' values (mmHg)."""
    order = [m for m in panel_order(models, list(first))
             if m in stats.models and not preds[preds["model"] == m].empty]
    if not order:
        return None
    n = len(order)
    ncol = 1 if n == 1 else 2 if n <= 4 else 3
    nrow = int(np.ceil(n / ncol))
    fig, axes = subplots(nrow, ncol, figsize=(4.6 * ncol + 1.5, 3.5 * nrow + 0.9), squeeze=False,
                         sharex=True, sharey=True)
    styles = subject_styles(subjects)
    reference = stats.reference
    for ax, m in zip(axes.flat, order):
        lines = _ba_panel(ax, preds[preds["model"] == m], stats.models[m], styles)
        ax.set_title(f"{m} (reference)" if m == reference else m, fontsize="medium")
        ax.text(0.02, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize="x-small",
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.8", alpha=0.85))
    _label_panels(axes, n, "mean of predicted and measured ICP (mmHg)", "predicted − measured (mmHg)")
    level = f"{round(ci_level * 100):g}%"
    keys = [Line2D([], [], color="0.1", lw=1.4, label="bias"),
            Line2D([], [], color="0.1", lw=1.2, ls="--", label="limits of agreement"),
            Patch(color="0.5", alpha=0.3, label=f"{level} CI of those limits"),
            Line2D([], [], color="0.45", lw=2.0, ls=":", label="repeated-measures limits"),
            Line2D([], [], color="0.25", lw=1.4, ls="-.", label="proportional bias")]
    present = [s for s in subjects if s in set(preds["subject"])]
    monkeys = [Line2D([], [], ls="", marker=styles[s]["marker"], color=styles[s]["color"], ms=6, label=s)
               for s in present]
    fig.legend(handles=keys, loc="lower center", bbox_to_anchor=(0.45, 0.0), ncol=5, fontsize="small")
    fig.legend(handles=monkeys, title="monkey", loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize="small",
               title_fontsize="small", ncol=1 if len(present) <= 16 else 2)
    fig.tight_layout(rect=(0, 0.6 / (3.5 * nrow + 0.9), 1, 1))
    return fig


def pred_vs_measured_figure(preds: pd.DataFrame, subjects: list[str], models: list[str]):
    """Small multiples: one panel per held-out monkey, predicted against measured ICP, one colour per model."""
    present = [s for s in subjects if s in set(preds["subject"])]
    if not present:
        return None
    nrow, ncol = _grid(len(present))
    fig, axes = subplots(nrow, ncol, figsize=(2.35 * ncol + 1.6, 2.3 * nrow + 0.4), squeeze=False,
                         sharex=True, sharey=True)
    colors = model_colors(models)
    # x spans the measured ICP; y also takes in predictions outside it, so a wild one stays visible
    x0, x1 = float(preds["y_true"].min()), float(preds["y_true"].max())
    y0, y1 = min(x0, float(preds["y_pred"].min())), max(x1, float(preds["y_pred"].max()))
    padx, pady = 0.05 * (x1 - x0 or 1), 0.05 * (y1 - y0 or 1)
    for ax, s in zip(axes.flat, present):
        d = preds[preds["subject"] == s]
        ax.plot([y0, y1], [y0, y1], color="0.4", lw=0.8)
        for i, m in enumerate(models):
            g = d[d["model"] == m]
            ax.scatter(g["y_true"], g["y_pred"], s=12, alpha=0.6, color=colors[m], marker=MARKERS[i % 7], linewidths=0)
        ax.set_title(f"monkey {s}", fontsize="small")
    axes[0, 0].set_xlim(x0 - padx, x1 + padx)
    axes[0, 0].set_ylim(y0 - pady, y1 + pady)
    _label_panels(axes, len(present), "measured ICP (mmHg)", "predicted ICP (mmHg)")
    handles = [Line2D([], [], ls="", marker=MARKERS[i % 7], color=colors[m], label=m) for i, m in enumerate(models)]
    handles.append(Line2D([], [], color="0.4", lw=0.8, label="identity"))
    fig.legend(handles=handles, title="model", loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize="small",
               title_fontsize="small")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training


def learning_curves_figure(curves: pd.DataFrame, held_out: dict | None = None):
    """Training and inner-validation loss per epoch, one panel per fold; the restored epoch is ringed."""
    if curves is None or curves.empty:
        return None
    folds = sorted(curves["fold"].unique())
    models = list(dict.fromkeys(curves["model"]))
    nrow, ncol = _grid(len(folds))
    fig, axes = subplots(nrow, ncol, figsize=(2.5 * ncol + 1.8, 2.2 * nrow + 0.4), squeeze=False,
                         sharex=True, sharey=True)
    colors = model_colors(models)
    for ax, k in zip(axes.flat, folds):
        d = curves[curves["fold"] == k]
        for m in models:
            g = d[d["model"] == m].sort_values("epoch")
            ax.plot(g["epoch"], g["train_loss"], color=colors[m], lw=1.3, ls="-")
            ax.plot(g["epoch"], g["val_loss"], color=colors[m], lw=1.3, ls="--")
            best = g[g["best"].astype(str).str.lower() == "true"]
            if not best.empty:
                b = best.iloc[-1]
                ax.plot([b["epoch"]], [b["val_loss"]], "o", mfc="none", mec=colors[m], ms=8, mew=1.5)
        held = (held_out or {}).get(k)
        ax.set_title(f"fold {k}" + (f" (monkey {', '.join(map(str, held))})" if held else ""), fontsize="small")
    _label_panels(axes, len(folds), "epoch", "MSE (standardised ICP)")
    handles = [Line2D([], [], color=colors[m], lw=1.5, label=m) for m in models] + [
        Line2D([], [], color="0.3", ls="-", label="training loss"),
        Line2D([], [], color="0.3", ls="--", label="inner-validation loss"),
        Line2D([], [], color="0.3", ls="", marker="o", mfc="none", label="restored epoch")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize="small")
    fig.tight_layout()
    return fig
