"""The HTML report: a view of the run directory and stats.json; it never recomputes statistics."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd

from icpcv.util import atomic_write_text, read_json


def _png(fig) -> tuple[bytes, str]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    return data, "data:image/png;base64," + base64.b64encode(data).decode()


def _figures(run_dir: Path, stats: dict, preds: pd.DataFrame) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", palette="colorblind")
    figs = []
    model = "cnn" if "cnn" in stats["models"] else min(stats["models"], key=lambda m: stats["models"][m]["mae"]["estimate"])
    d = preds[preds["model"] == model]
    ba = stats["models"][model]["bland_altman"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    mean = (d["y_pred"] + d["y_true"]) / 2
    sns.scatterplot(x=mean, y=d["y_pred"] - d["y_true"], hue=d["subject"], ax=ax, s=18, legend=False)
    for y, ls in ((ba["bias"], "-"), (ba["loa"][0], "--"), (ba["loa"][1], "--")):
        ax.axhline(y, color="black", ls=ls, lw=1)
    ax.set(xlabel="mean of predicted and measured ICP (mmHg)", ylabel="predicted − measured ICP (mmHg)",
           title=f"Bland-Altman: {model}")
    figs.append(dict(name=f"bland_altman_{model}", title=f"Bland-Altman, {model}", fig=fig))
    fig, ax = plt.subplots(figsize=(5, 5))
    sns.scatterplot(data=d, x="y_true", y="y_pred", hue="subject", ax=ax, s=18, legend=False)
    lo, hi = float(min(d.y_true.min(), d.y_pred.min())), float(max(d.y_true.max(), d.y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set(xlabel="measured ICP (mmHg)", ylabel="predicted ICP (mmHg)", title=f"Predicted vs measured: {model}")
    figs.append(dict(name=f"pred_vs_measured_{model}", title=f"Predicted vs measured, {model}", fig=fig))
    out = []
    (run_dir / "figures").mkdir(exist_ok=True)
    for f in figs:
        data, uri = _png(f["fig"])
        (run_dir / "figures" / f"{f['name']}.png").write_bytes(data)
        plt.close(f["fig"])
        out.append(dict(title=f["title"], uri=uri))
    return out


def write_report(run_dir) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape

    run_dir = Path(run_dir)
    stats = read_json(run_dir / "stats.json")
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"subject": str, "scan_id": str})
    env = Environment(loader=PackageLoader("icpcv", "report/templates"), autoescape=select_autoescape(default=True))
    html = env.get_template("report.html.j2").render(stats=stats, figures=_figures(run_dir, stats, preds),
                                                     run_name=run_dir.name)
    out = run_dir / "index.html"
    atomic_write_text(out, html)
    return out
