"""From a run (comparison, analysis) directory to the template's context, and from it to one HTML file.

Every string that came from a user (subject labels, scan ids, paths, model and run names,
reasons, values) reaches the HTML through Jinja2 autoescaping; nothing is marked safe.
"""
from __future__ import annotations

import functools
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from icpcv.cohort.table import REASONS
from icpcv.config import flatten, settings_in_effect
from icpcv.cohort.phantom import LAMINA
from icpcv.report import attribution_figures as AF
from icpcv.report import figures as F
from icpcv.report import repeat_figures as RF
from icpcv.report import trend_figures as TF
from icpcv.report.rundata import (CompareData, PredictionsData, RunData, read_acquisition, read_training_variance,
                                  read_trending)
from icpcv.stats.intervals import PredictionIntervals
from icpcv.errors import RunDirError
from icpcv.rundir import RunDir
from icpcv.stats.power import PowerResult
from icpcv.stats.repeats import TrainingVariance
from icpcv.stats.analysis import verdict_comparison
from icpcv.stats.results import AnalysisResult
from icpcv.stats.trending import STILL_RATIO, TrendingResult
from icpcv.util import fmt_num, fmt_p, is_finite_number, natural_sorted

#: more dropped rows than this: a reason summary, the full table folded into <details>
FOLD_DROPPED_AT = 500
MODEL_METRICS = (("mae", "MAE (mmHg)"), ("rmse", "RMSE (mmHg)"), ("bias", "bias (mmHg)"), ("r2", "R²"),
                 ("pearson_r", "Pearson r"))
WARM_START_KEYS = ("matched", "missing", "unexpected", "shape_mismatched")
#: what a run trained once cannot show about its interval (docs/statistics.md, "A single seed's interval")
SINGLE_SEED_COVERAGE = (
    "Under strong training noise a single seed's 95% interval covers less than 95%: about 91% against 94% "
    "for the seed ensemble in an independent check with the real study's scan counts (training noise 80% of "
    "the variance), 93.5% against 93.6% in icpcv's own simulation (docs/statistics.md).")


# --------------------------------------------------------------------------- formatting filters


_finite = is_finite_number


def fmt_ci(ci, digits=2) -> str:
    if not ci or len(ci) != 2 or not all(_finite(v) for v in ci):
        return "–"
    return f"{fmt_num(ci[0], digits)} to {fmt_num(ci[1], digits)}"


def fmt_seconds(s) -> str:
    if not _finite(s):
        return "–"
    if s < 0.1:
        return "< 0.1\u00a0s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_value(v) -> str:
    """A config or environment value as text."""
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "–"
    return str(v)


@functools.lru_cache(maxsize=1)
def environment():
    """One template environment per process: it keeps the compiled report template (compiling it costs
    about a third of a second, as much as a figure), and reloads it if the file changes."""
    env = Environment(loader=PackageLoader("icpcv", "report/templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=fmt_num, ci=fmt_ci, pval=fmt_p, seconds=fmt_seconds, value=fmt_value)
    return env


# --------------------------------------------------------------------------- tables from stats.json


def model_rows(stats: AnalysisResult) -> list[dict]:
    rows = []
    for name, m in stats.models.items():
        row = dict(model=name, n_scans=m.n_scans, n_subjects=m.n_subjects,
                   cells=[dict(estimate=m.metric(key).estimate, ci=m.metric(key).ci) for key, _ in MODEL_METRICS])
        row["rmcorr"] = dict(r=m.rmcorr.r, ci=m.rmcorr.ci, p=m.rmcorr.p, dof=m.rmcorr.dof)
        rows.append(row)
    return rows


def agreement_rows(stats: AnalysisResult) -> list[dict]:
    rows = []
    for name, m in stats.models.items():
        ba, rep = m.bland_altman, m.bland_altman_repeated
        pb = ba.proportional_bias
        loa_ci = ba.loa_ci or [None, None]
        rows.append(dict(model=name, bias=ba.bias, sd=ba.sd, loa=ba.loa,
                         loa_lo_ci=loa_ci[0] if loa_ci else None, loa_hi_ci=loa_ci[1] if len(loa_ci) > 1 else None,
                         rep_bias=rep.bias, rep_sd=rep.sd, rep_loa=rep.loa,
                         slope=pb.slope, slope_p=pb.p,
                         # the monkey-level interval; null when it could not be computed (never the
                         # scan-level one in its place, which treats scans as independent)
                         slope_ci=pb.ci_cluster if pb.ci_cluster is not None or pb.ci_cluster_method else pb.ci))
    return rows


#: decomposition keys shown, with their label and format; other numbers in stats.json are shown raw
DECOMPOSITION = (("mse", "MSE (mmHg²)", "num"), ("between_subject", "between monkeys (mmHg²)", "num"),
                 ("within_subject", "within monkeys (mmHg²)", "num"), ("between_fraction", "between share", "pct"),
                 ("within_fraction", "within share", "pct"),
                 ("global_bias_sq", "of between: overall bias² (mmHg²)", "num"),
                 ("offset_spread", "of between: spread of monkey offsets (mmHg²)", "num"),
                 ("within_subject_correlation", "within-monkey r", "num"))


def decomposition_table(stats: AnalysisResult) -> dict | None:
    """Rows per model of the between/within error split."""
    if not stats.models:
        return None

    def cell(v, how):
        return (f"{100 * v:.1f}%" if _finite(v) else "–") if how == "pct" else fmt_num(v)

    return dict(columns=[label for _, label, _ in DECOMPOSITION],
                rows=[dict(model=m, cells=[cell(getattr(v.decomposition, k), how) for k, _, how in DECOMPOSITION])
                      for m, v in stats.models.items()])


def per_subject_table(stats: AnalysisResult, subjects: list[str]) -> dict | None:
    per = {m: v.per_subject for m, v in stats.models.items()}
    seen = {str(s) for p in per.values() for s in p}
    if not seen:
        return None
    order = [s for s in subjects if s in seen] + natural_sorted(seen - set(subjects))
    models = list(per)
    rows = []
    for s in order:
        cells = [per[m].get(s) for m in models]
        n = next((c.n for c in cells if c is not None), None)
        rows.append(dict(subject=s, n=n, cells=[dict(mae=c.mae if c else None, bias=c.bias if c else None)
                                                for c in cells]))
    return dict(models=models, rows=rows)


def _percent(x):
    return 100 * x if _finite(x) else None


def _percent_ci(ci):
    return [100 * ci[0], 100 * ci[1]] if ci else None


def trending_context(trend: TrendingResult | None) -> dict | None:
    """The trending table and the words beside its figures, from stats.json's ``trending`` (attributes)."""
    if trend is None or not trend.models:
        return None
    rows = []
    for m, t in trend.models.items():
        c, polar, cmp_ = t.concordance, t.polar, t.comparison
        rows.append(dict(model=m, reference=m == trend.reference, kept=c.n_pairs, total=t.n_pairs,
                         subjects=t.n_subjects, rate=_percent(c.rate), rate_ci=_percent_ci(c.ci),
                         rate_note=c.ci_note, diff=_percent(cmp_.difference) if cmp_ else None,
                         diff_ci=_percent_ci(cmp_.ci) if cmp_ else None, p=cmp_.p_signflip if cmp_ else None,
                         p_adjusted=cmp_.p_adjusted if cmp_ else None, bias=polar.angular_bias,
                         bias_ci=polar.angular_bias_ci, loa=polar.radial_loa, polar_kept=polar.n_pairs,
                         within=_percent(polar.within_accept), ratio=_percent(t.change_ratio)))
    first = next(iter(trend.models.values()))
    return dict(result=trend, rows=rows, contrast=trending_contrast(trend), n_pairs=first.n_pairs,
                n_subjects=len(trend.pairs.subjects),
                ci_pct=f"{round(trend.ci_level * 100):g}%", accept=first.polar.accept_deg)


def training_randomness_context(tv: TrainingVariance | None, networks: list[str] | None = None,
                                repeats: int | None = None) -> dict | None:
    """The "Training randomness" section from stats.json's ``training_variance``; without it, for a
    run whose networks were trained once, the plain statement that it was not measured. None (no
    section) when nothing was trained with randomness or nothing is known about it."""
    if tv is None:
        if not networks:
            return None
        return dict(measured=False, reason=(
            f"Each network ({', '.join(networks)}) was trained once per fold (--repeats {repeats or 1}), so "
            "training randomness was not measured: another training seed could change its difference against "
            "the reference by an unknown amount. " + SINGLE_SEED_COVERAGE + " Rerun with --repeats 5 to "
            "measure it and to make the verdict on the seed ensemble."))
    if not tv.measured:
        return dict(measured=False, reason=tv.reason)
    level = f"{round(tv.ci_level * 100):g}%"
    rows = []
    for m in tv.models.values():
        v = m.variance
        rows.append(dict(model=m.model, ensemble=m.ensemble, per_repeat=m.per_repeat, mean=m.delta_mean,
                         sd=m.delta_sd, lo=m.delta_min, hi=m.delta_max, called=m.n_called_better,
                         n=m.n_repeats, variance=v,
                         shares=None if v is None or v.single_seed_total is None else
                         dict(total=v.single_seed_total, monkey=v.monkey_sampling, training=v.training_noise,
                              monkey_pct=100 * v.monkey_share if is_finite_number(v.monkey_share) else None,
                              training_pct=100 * v.training_share if is_finite_number(v.training_share) else None,
                              ensemble=v.ensemble_total, truncated=v.truncated,
                              scans=v.scans_within_monkeys)))
    if getattr(tv, "agreement_guaranteed", False):
        agree = (f"all {tv.n_repeats} training seeds alone agree with it, as they must: with this few monkeys "
                 f"no single seed can be called better")
    elif tv.n_agree is not None:
        agree = f"{tv.n_agree} of {tv.n_repeats} training seeds alone agree with it"
    else:
        agree = None
    return dict(measured=True, result=tv, rows=rows, ci_pct=level, agree=agree)


def trending_contrast(trend: TrendingResult) -> list[str]:
    """Sentences that set the models that follow ICP at a fixed IOP against those that cannot."""
    level = f"{round(trend.ci_level * 100):g}%"
    still = trend.still_models()
    lines = ["IOP is held at one step within every pair, so a prediction built from IOP alone has nothing to "
             "follow: between two ICP steps it moves only with the noise in the measured IOP. Its concordance then "
             "sits near the 50% chance level (a prediction that does not move counts ½, one that moves with noise "
             "agrees in direction half the time) and its polar points gather near −45°, the angle of no predicted "
             "change."]
    if still:
        named = "; ".join(f"{m}: {fmt_num(trend[m].mean_change_predicted, 2)} mmHg for a measured "
                          f"{fmt_num(trend[m].mean_change_measured, 1)} mmHg, concordance "
                          f"{fmt_num(100 * trend[m].concordance.rate, 0)}%" for m in still)
        lines.append(f"Here the predictions of {', '.join(still)} barely moved between ICP steps (mean predicted "
                     f"change below {STILL_RATIO:.0%} of the measured one; {named}): whatever their direction, they "
                     "do not follow ICP changes at a fixed IOP.")
    for m, t in trend.models.items():
        if m in still:
            continue
        c = t.concordance
        ci = (f"{level} CI {fmt_num(100 * c.ci[0], 0)} to {fmt_num(100 * c.ci[1], 0)}%" if c.ci is not None
              else "no interval")
        lines.append(f"{m}'s prediction moved by {fmt_num(100 * t.change_ratio, 0)}% of the measured change on "
                     f"average, in the measured direction for {fmt_num(100 * c.rate, 0)}% of the steps ({ci}); its "
                     f"polar angular bias is {fmt_num(t.polar.angular_bias, 1)}°.")
    return lines


# --------------------------------------------------------------------------- tables from the run directory


def cohort_context(run: RunData) -> dict:
    q = run.quality
    dropped = q[q["status"] == "dropped"]
    kept = q[q["status"] == "kept"]
    subjects = run.subjects
    per_subject = []
    scans = run.scans
    for s in subjects + (["(none)"] if (dropped["subject"] == "").any() else []):
        label = "" if s == "(none)" else s
        sc = scans[scans["subject"] == s]
        per_subject.append(dict(subject=s, kept=int((kept["subject"] == label).sum()),
                                dropped=int((dropped["subject"] == label).sum()),
                                iop=(sc["iop"].min(), sc["iop"].max()) if sc["iop"].notna().any() else None,
                                icp=(sc["icp"].min(), sc["icp"].max()) if sc["icp"].notna().any() else None))
    reasons = []
    if len(dropped):
        first = dropped["reason"].value_counts()
        any_reason = pd.Series([r for rs in dropped["all_reasons"] for r in str(rs).split(",") if r]).value_counts()
        for code in natural_sorted(set(first.index) | set(any_reason.index)):
            reasons.append(dict(code=code, meaning=REASONS.get(code, ""), first=int(first.get(code, 0)),
                                any=int(any_reason.get(code, 0))))
        reasons.sort(key=lambda r: (-r["first"], -r["any"], r["code"]))
    rows = dropped.sort_values("row", key=lambda c: pd.to_numeric(c, errors="coerce")).to_dict("records")
    return dict(source=run.cohort.get("source") or run.config.get("manifest") or "–",
                has_volumes=run.cohort.get("has_volumes"), shape=run.cohort.get("shape"),
                n_rows=len(q), n_kept=len(kept), n_dropped=len(dropped), n_subjects=len(set(scans["subject"])),
                per_subject=per_subject, reasons=reasons, dropped=rows, fold_dropped=len(dropped) > FOLD_DROPPED_AT,
                fold_at=FOLD_DROPPED_AT)


def plan_context(run: RunData) -> dict:
    plan, audit = run.plan, run.audit
    timing = {r.get("fold"): r for r in run.fold_records}
    findings = {f.get("fold"): f for f in audit.get("folds", [])}
    folds = []
    for f in plan.get("folds", []):
        k = f.get("index")
        a = findings.get(k, {})
        problems = []
        if a.get("subjects_in_train_and_test"):
            problems.append("subjects on both sides: " + ", ".join(map(str, a["subjects_in_train_and_test"])))
        if a.get("scans_in_two_sets"):
            problems.append(f"{a['scans_in_two_sets']} scans in two sets")
        if a.get("n_unknown"):
            problems.append(f"{a['n_unknown']} unknown scans")
        if a.get("inner_val_held_out"):
            problems.append("inner validation holds held-out subjects: " + ", ".join(map(str, a["inner_val_held_out"])))
        folds.append(dict(index=k, held_out=f.get("held_out", []), inner_val=f.get("inner_val", []),
                          n_train_subjects=len(f.get("train", [])), n_train=len(f.get("train_scans", [])),
                          n_val=len(f.get("val_scans", [])), n_test=len(f.get("test_scans", [])),
                          ok=a.get("ok"), problems=problems, seconds=(timing.get(k) or {}).get("seconds")))
    return dict(kind=plan.get("kind"), hash=plan.get("hash"), seed=plan.get("seed"), n_folds=plan.get("n_folds"),
                n_subjects=len(plan.get("subjects", [])), folds=folds, audit_passed=audit.get("passed"),
                audit_summary=audit.get("summary", ""), never=audit.get("scans_never_tested", 0),
                twice=audit.get("scans_tested_twice", 0), audit_hash=audit.get("plan_hash"))


def scan_audit_context(run: RunData) -> dict | None:
    """The scan-split twin beside leave-one-monkey-out, as leakage.json states it (nothing recomputed)."""
    a = run.scan_audit
    if not a:
        return None
    return dict(statement=a.get("statement", ""), n_folds=a.get("n_folds"), dir=a.get("scan_split_dir"),
                plan_hash=a.get("scan_split_plan_hash"), rows=a.get("models") or [],
                ci_pct=f"{round(a.get('ci_level', 0.95) * 100):g}%")


def selection_context(stats: AnalysisResult, tuning: dict | None) -> dict | None:
    """Issue 21: the "Recipe selection" section, from stats.json's ``recipe_selection`` (the counts, stability
    and optimism audit) and tuning.json's per-fold scores (nothing recomputed)."""
    sel = stats.extra.get("recipe_selection")
    if not sel:
        return None
    opt, st = sel["optimism"], sel["stability"]
    rows = [dict(label=c, chosen=st["counts"].get(c, 0), mae=opt["candidates"].get(c),
                 note="best by its own leave-one-monkey-out MAE: the naive pick" if c == opt["best"] else "")
            for c in sel["candidates"]]
    inner = sel.get("inner_folds")
    return dict(name=sel["name"], n_candidates=sel["n_candidates"], n_folds=st["n_folds"], statement=sel["statement"],
                inner_text=("leave one training monkey out" if inner is None else f"{inner} groups of training monkeys"),
                stability=st, modal_pct=f"{100 * st['modal_share']:.0f}%" if st.get("modal_share") is not None else "–",
                rows=rows, nested_mae=opt["mae_nested"], folds=(tuning or {}).get("folds") or [])


def _count(v):
    if isinstance(v, (list, tuple, set, dict)):
        return len(v)
    return v


def warm_start_rows(run: RunData) -> list[dict]:
    """Per fold and model, what the pretrained checkpoint gave (``models.<name>.warm_start`` of the
    fold records: counts, or lists whose length is the count; key names under ``<count>_keys``)."""
    rows = []
    for r in sorted(run.fold_records, key=lambda r: r.get("fold", 0)):
        for name, info in (r.get("models") or {}).items():
            ws = (info or {}).get("warm_start")
            if not isinstance(ws, dict):
                continue
            names = {}
            for k in WARM_START_KEYS[1:]:
                v = ws.get(f"{k}_keys", ws.get(k))
                if isinstance(v, (list, tuple)) and v:
                    names[k.replace("_", " ")] = [str(x) for x in v[:8]] + ([f"… {len(v) - 8} more"] if len(v) > 8
                                                                           else [])
            total, got = ws.get("backbone_total"), ws.get("backbone_matched")
            backbone = f"{got}/{total}" if got is not None and total else None
            if backbone and _finite(ws.get("fraction")):
                backbone += f" ({ws['fraction']:.0%})"
            path = ws.get("path") or ws.get("checkpoint") or ""
            rows.append(dict(fold=r.get("fold"), model=name, checkpoint=Path(path).name if path else "",
                             sha=(ws.get("sha256") or "")[:12], backbone=backbone,
                             counts=[_count(ws.get(k)) for k in WARM_START_KEYS], names=names))
    return rows


def timing_table(run: RunData) -> dict | None:
    if not run.fold_records:
        return None
    models = list(dict.fromkeys(m for r in run.fold_records for m in (r.get("models") or {})))
    rows = []
    for r in sorted(run.fold_records, key=lambda r: r.get("fold", 0)):
        ms = r.get("models") or {}
        rows.append(dict(fold=r.get("fold"), held_out=r.get("held_out", []),
                         cells=[(ms.get(m) or {}).get("seconds") for m in models],
                         best=[(ms.get(m) or {}).get("best_epoch") for m in models],
                         total=r.get("seconds"), device=next((v.get("device") for v in ms.values()
                                                              if isinstance(v, dict) and v.get("device")), None)))
    total = sum(r["total"] for r in rows if _finite(r["total"]))
    has_best = any(b is not None for r in rows for b in r["best"])
    return dict(models=models, rows=rows, total=total, has_best=has_best)


def table_context(df: pd.DataFrame | None) -> dict | None:
    if df is None or df.empty:
        return None
    cols = [str(c) for c in df.columns]
    rows = [[fmt_num(v, 3) if isinstance(v, float) else fmt_value(v) for v in rec] for rec in
            df.itertuples(index=False, name=None)]
    return dict(columns=cols, rows=rows)


ENV_KEYS = (("icpcv", "icpcv"), ("git", "git commit"), ("git_dirty", "uncommitted changes"), ("python", "Python"),
            ("torch", "PyTorch"), ("numpy", "NumPy"), ("pandas", "pandas"), ("sklearn", "scikit-learn"),
            ("statsmodels", "statsmodels"), ("platform", "platform"), ("machine", "machine"),
            ("cpu_count", "CPU cores"), ("cuda", "CUDA"), ("gpu", "GPU"), ("time", "started (UTC)"))


def env_items(env: dict) -> list[tuple[str, str]]:
    items = [(label, fmt_value(env.get(k))) for k, label in ENV_KEYS if k in env]
    known = {k for k, _ in ENV_KEYS}
    return items + [(k, fmt_value(v)) for k, v in env.items() if k not in known]


# --------------------------------------------------------------------------- figures


def _collector():
    """A dict of figures by report section, and the function that adds one (None: nothing to draw)."""
    out: dict[str, list[F.Figure]] = {}

    def add(section, name, title, caption, fig):
        if fig is not None:
            out.setdefault(section, []).append(F.Figure(name, title, caption, fig))

    return out, add


def run_figures(run: RunData, stats: AnalysisResult) -> dict[str, list[F.Figure]]:
    """Figures by report section; also written as PNGs under run_dir/figures/."""
    out = build_run_figures(run, stats)
    F.render([f for figs in out.values() for f in figs], run.run.figures_dir)
    return out


def build_run_figures(run: RunData, stats: AnalysisResult) -> dict[str, list[F.Figure]]:
    """The report's figures by section, laid out but not drawn (``F.render`` draws and writes them)."""
    subjects = run.subjects
    ci_level = stats.ci_level
    out, add = _collector()
    with F.style():
        add("cohort", "cohort", "Scans per monkey and the IOP × ICP design",
            "Left: input rows per monkey, kept (blue) and dropped (grey). Right: every kept scan at its set IOP "
            "and ICP, one colour and marker per monkey.", F.cohort_figure(run.quality, run.scans, subjects))
        common_figures(add, stats, run.predictions, subjects, run.models, ci_level)
        add("training", "learning_curves", "Learning curves per fold",
            "Loss on the training monkeys (solid) and on the fold's inner-validation monkeys (dashed), per epoch; "
            "the ring marks the epoch whose weights were restored for prediction. Epoch 0 is the untrained network.",
            F.learning_curves_figure(run.curves, {r.get("fold"): r.get("held_out", []) for r in run.fold_records}))
        power_figure(add, run.power)
        attribution_figures(add, run.attribution, run.attribution_maps)  # issue 14
    return out


# ---- issue 14: where the CNN looks (run --saliency N)

def _method_text(method: str) -> str:
    return str(method).replace("_", " ")


def attribution_figures(add, attribution: dict | None, maps: dict | None) -> None:
    """Per network and method the mean absolute map as orthogonal slices and as projections (the phantom's
    frame when known, the lamina band outlined), and a few individual scans with their maps."""
    if not attribution or not maps:
        return
    outline = maps.get("outline__lamina")
    frame = ("in the phantom's reference frame (each scan moved by its known misregistration, Bruch's membrane at "
             "one depth)" if attribution.get("aligned") else
             "in scan coordinates (the scans cover different fields of view, so no shift puts them in one frame; "
             "--fov-mm gives them one)" if attribution.get("scoring_available") else
             "in scan coordinates (no reference frame is known)")
    marker = " The planted marker sits in the deep corner (x, y = 0): the projections show it." \
        if attribution.get("shortcut") else ""
    for m in attribution.get("models", []):
        model = m["model"]
        stem = F.file_stem(model)
        for method in m.get("methods", []):
            mean = maps.get(f"mean__{model}__{method}")
            if mean is None:
                continue
            for projection in (False, True):
                add("attribution", f"attribution_{stem}_{method}" + ("_projection" if projection else ""),
                    f"Mean absolute attribution: {model}, {_method_text(method)}"
                    + (" (projections)" if projection else ""),
                    f"{m['n_scans']} held-out scans of {m['n_subjects']} monkeys, each map scaled to sum 1, then "
                    f"averaged {frame}; " + ("each panel the mean along the axis it looks down." if projection else
                                           "three orthogonal slices through the optic nerve head.")
                    + (" Blue line: the lamina band where at least half of the scans have it." if outline is not None
                       else "") + marker,
                    AF.orthogonal_slices_figure(mean, outline=outline, projection=projection,
                                                title=f"{model}, {_method_text(method)}"))
        volumes = maps.get(f"example_volume__{model}")
        method = (m.get("methods") or [None])[0]
        emap = maps.get(f"example_map__{model}__{method}")
        if volumes is not None and emap is not None and len(volumes):
            names = [f"{sid} (monkey {sub})" for sid, sub in zip(maps[f"example_scan_id__{model}"],
                                                                  maps[f"example_subject__{model}"])]
            labels = maps.get(f"example_labels__{model}")
            add("attribution", f"attribution_scans_{stem}", f"Individual scans: {model}, {_method_text(method)}",
                "Each row one held-out scan: its B-scan, the absolute attribution on the same B-scan and en-face"
                + (" at the lamina's depth, the lamina band outlined in blue." if labels is not None else "."),
                AF.scan_maps_figure(volumes, emap, labels=labels, outline_code=LAMINA if labels is not None else None,
                                    scan_names=names, title=f"{model}, {_method_text(method)}"))


def attribution_context(attribution: dict | None) -> dict | None:
    """The section's tables, read from attribution.json (nothing recomputed)."""
    if not attribution:
        return None
    scores = attribution.get("scores") or {}
    results = scores.get("results") or []
    rows = [dict(model=r["model"], method=_method_text(r["method"]), region=r["region"], monkeys=r["n_subjects"],
                 scans=r["n_scans"], left_out=r.get("n_scans_without_attribution") or 0,
                 share=r["attribution_share"]["estimate"], share_ci=r["attribution_share"]["ci"],
                 volume=r["volume_share"], enrichment=r["enrichment"]["estimate"], enrichment_ci=r["enrichment"]["ci"],
                 p=r["p_signflip"], randomised=str(r["model"]).endswith("_randomised")) for r in results]
    sanity = [s for m in attribution.get("models", []) for s in m.get("sanity", [])]
    cost = [dict(model=m["model"], method=_method_text(meth), seconds=sec)
            for m in attribution.get("models", []) for meth, sec in m["cost"]["seconds_per_scan"].items()]
    extra = [dict(model=m["model"], randomised=m["cost"].get("randomised_wall_seconds_per_fold"),
                  sanity=m["cost"].get("sanity_wall_seconds_per_fold")) for m in attribution.get("models", [])]
    return dict(data=attribution, scored=bool(attribution.get("scoring_available")), rows=rows,
                comparisons=[c["sentence"] for c in scores.get("against_randomised") or []], sanity=sanity,
                cost=cost, extra=extra, note=attribution.get("note"),
                methods=", ".join(_method_text(m) for m in attribution.get("methods", [])),
                models=", ".join(m["model"] for m in attribution.get("models", [])),
                marker=bool(attribution.get("shortcut")))


def trending_figures(add, trend: TrendingResult | None, subjects: list[str]) -> None:
    """The four-quadrant and the polar plots, one panel per model (the verdict's model and the
    reference first), from stats.json's change pairs."""
    if trend is None:
        return
    zone = trend.exclusion_zone
    order = F.panel_order(list(trend.models), [trend.verdict_model, trend.reference])
    panels = [(trend.models[m], trend.pairs.for_model(m)) for m in order]
    first = ", the verdict's model and the reference first" if trend.verdict_model else ", the reference first"
    add("trending", "four_quadrant", "Four-quadrant plots, one panel per model",
        "One point per change pair: the measured change in ICP between consecutive ICP steps at one IOP step "
        "of a held-out monkey (x) against the model's change in mean out-of-fold prediction between the same "
        "steps (y), coloured by monkey; the panels share one scale" + first + ". Points in the upper right agree "
        f"in direction (concordant), in the lower right disagree. Grey: the exclusion zone ({zone:g} mmHg); "
        "crosses: pairs left out.", TF.four_quadrant_figure(panels, subjects))
    add("trending_more", "polar", "Polar plots, one panel per model",
        "Radius: the mean of the measured and predicted change; angle: from the line of identity, positive "
        "when the predicted change is larger, −45° when the prediction did not move, below −45° when it moved "
        "the other way. Solid: angular bias; dashed: radial limits of agreement; dotted: ±30°; grey: pairs with "
        f"a mean change below {zone:g} mmHg, left out. One radial scale for every panel" + first + ".",
        TF.polar_figure(panels, subjects))


def power_figure(add, power: PowerResult | None) -> None:
    if power is not None:
        add("power", "power", f"Power of a new study: {power.model} against {power.reference}",
            "The share of simulated studies of each size that the verdict's rule calls better, with ±1.96 Monte "
            "Carlo SE (from power.json); dashed: each half of the rule alone. Dotted: the target power and this "
            "run's own number of monkeys.", TF.power_curve_figure(power))


def common_figures(add, stats, preds, subjects, models, ci_level):
    level = f"{round(ci_level * 100):g}%"
    add("comparison", "forest", "Paired differences against the reference",
        f"Each model's error minus the reference's on the same scans, with the {level} monkey-level interval "
        "from stats.json and the Holm-adjusted sign-flip p-value.",
        F.forest_figure(stats.comparisons, ci_level))
    add("comparison", "per_monkey_error", "Error per monkey",
        "Mean absolute error of each held-out monkey's scans, per model (stats.json per_subject); n is the number "
        "of scans.", F.per_subject_figure(stats, subjects))
    lead = verdict_comparison(stats.models, stats.comparisons)
    add("agreement", "bland_altman", "Bland-Altman, one panel per model",
        "Each point is one out-of-fold scan, coloured by monkey; the panels share their axes"
        + (f", the verdict's model ({lead.model}) and the reference first" if lead is not None else
           ", the reference first")
        + ". Solid: mean difference (bias); dashed: classic limits of agreement (grey bands: their "
        f"{level} CI); dotted: limits that account for repeated scans per monkey; dash-dot: the "
        "proportional-bias regression of difference on mean. Each panel's key gives its values (mmHg).",
        F.bland_altman_figure(models, preds, stats, subjects, ci_level,
                              first=[lead.model if lead is not None else None, stats.reference]))
    add("agreement_more", "predicted_vs_measured", "Predicted versus measured ICP per monkey",
        "One panel per held-out monkey (out-of-fold predictions), one colour and marker per model; the grey "
        "line is identity.", F.pred_vs_measured_figure(preds, subjects, models))
    trending_figures(add, read_trending(stats), subjects)
    tv = read_training_variance(stats)
    if tv is not None and tv.measured:
        add("repeats", "repeat_differences", "Per-repeat differences beside the seed ensemble",
            f"Each repeated model's MAE difference against {tv.reference}: the seed ensemble (diamond, with its "
            f"{level} monkey-level interval) and each training repeat analysed alone as a single-seed study "
            "(circles, with their intervals in grey; filled when the verdict's rule alone calls that repeat better).",
            RF.repeat_differences_figure(tv))
        for m in tv.models:
            add("repeats_more", f"repeat_folds_{F.file_stem(m)}", f"MAE of each repeat per fold: {m}",
                f"Per fold, the MAE of each training repeat of {m} on the held-out monkey's scans (circles; the "
                f"line spans them), the seed ensemble's (diamond) and {tv.reference}'s (bar).",
                RF.fold_spread_figure(tv, m))


# --------------------------------------------------------------------------- the report


METHOD_NAMES = {"t": "t interval with the jackknife SE over monkeys",
                "studentized": "studentized bootstrap (bootstrap-t)", "percentile": "percentile bootstrap",
                "bca": "BCa bootstrap"}
QUANTITY_NAMES = {"delta": "paired differences", "mae": "MAE", "rmse": "RMSE",
                  "mae_subject_mean": "mean of monkeys' MAE", "bias": "bias", "r2": "R²", "pearson_r": "Pearson r",
                  "ba_slope": "proportional-bias slope"}


def ci_method_text(stats: AnalysisResult) -> str:
    """Which interval method stats.json used, per quantity when the engine chose per quantity."""
    per = stats.ci_methods
    if isinstance(per, dict) and per:
        groups: dict[str, list[str]] = {}
        for quantity, method in per.items():
            groups.setdefault(method, []).append(QUANTITY_NAMES.get(quantity, quantity))
        return "; ".join(f"{METHOD_NAMES.get(m, m)} for {', '.join(q)}" for m, q in groups.items())
    m = stats.ci_method
    return METHOD_NAMES.get(m, str(m) if m else "method not recorded")


def acquisition_context(stats: AnalysisResult) -> dict | None:
    """Issue 19: the "Could it be the acquisition?" section, from stats.json's ``acquisition`` and
    ``nuisance_comparisons`` (nothing recomputed); None when the analysis has neither."""
    acq = read_acquisition(stats)
    nuisance = [c for c in stats.nuisance_comparisons]
    if acq is not None and not acq.covariates and not any(d.get("protocols") or d.get("eyes")
                                                          for d in acq.per_monkey.values()):
        acq = None  # a cohort without any acquisition field: nothing to show
    if acq is None and not nuisance:
        return None
    out = dict(result=acq, nuisance=nuisance, monkeys=[], covariates=[], protocols=[], eyes=[])
    if acq is not None:
        protocols = natural_sorted({p for d in acq.per_monkey.values() for p in d.get("protocols", {})})
        eyes = natural_sorted({e for d in acq.per_monkey.values() for e in d.get("eyes", {})})
        out.update(protocols=protocols, eyes=eyes)
        for s, d in acq.per_monkey.items():
            out["monkeys"].append(dict(subject=s, n=d.get("n_scans"), sessions=d.get("sessions"),
                                       protocols=[d.get("protocols", {}).get(p, 0) for p in protocols],
                                       eyes=[d.get("eyes", {}).get(e, 0) for e in eyes]))
        for name, c in acq.covariates.items():
            out["covariates"].append(dict(name=name, label=c.label, n=c.n_scans, icp=c.icp, iop=c.iop))
    return out


def _base_context(stats: AnalysisResult, subjects: list[str]) -> dict:
    comps = stats.comparisons
    return dict(stats=stats, ci_text=ci_method_text(stats),
                verdict=stats.verdict or "stats.json holds no verdict.",
                ci_pct=stats.ci_pct, models=model_rows(stats),
                metric_names=[label for _, label in MODEL_METRICS], comparisons=comps,
                agreement=agreement_rows(stats), decomposition=decomposition_table(stats),
                per_subject=per_subject_table(stats, subjects), trending=trending_context(read_trending(stats)),
                repeats=training_randomness_context(read_training_variance(stats)),
                acquisition=acquisition_context(stats),  # issue 19
                selection=selection_context(stats, None),  # issue 21 (a run adds tuning.json's folds)
                generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def prediction_context(stats: AnalysisResult, level: float = 0.9) -> dict | None:
    """issue 20: the 90% interval for one scan of a new monkey per model, and the sentence a reader needs."""
    pi = PredictionIntervals.from_dict(stats.extra.get("prediction_intervals"))
    if pi is None or not pi.models:
        return None
    rows = []
    for name in pi.models:
        one = pi.get(name, level)
        if one is not None:
            rows.append(dict(model=name, half_width=one.half_width, half_width_mean=one.half_width_mean,
                             naive=one.naive_half_width, n_subjects=one.n_subjects, finite=one.finite,
                             text=[_pm_cell(x) for x in (one.half_width, one.half_width_mean, one.naive_half_width)]))
    if not rows:
        return None
    pct = f"{100 * level:g}%"

    def pm(x):
        return f"±{x:.1f} mmHg" if math.isfinite(x) else "no finite interval"

    scan = [r for r in rows if r["model"] in SCAN_MODELS or r["model"] not in IOP_ONLY]
    best = min(scan, key=lambda r: r["half_width"]) if scan else None
    iop = next((r for r in rows if r["model"] == "ols_iop"), None)
    sentence = None
    g = rows[0]["n_subjects"]
    min_subjects = math.ceil(level / (1 - level) - 1e-9)
    if best is not None and not math.isfinite(best["half_width"]):
        sentence = (f"With {g} monkeys no interval for a new monkey's scan is finite at {pct}: a distribution-free "
                    f"{pct} interval over monkeys needs at least {min_subjects} of them.")
    elif best is not None:
        sentence = f"For a new monkey, one scan gives ICP within {pm(best['half_width'])} in {pct} of cases"
        sentence += f"; IOP alone gives {pm(iop['half_width'])}." if iop is not None else "."
        sentence += f" (Scan: {best['model']}, the scan model with the narrowest interval" + \
            ("; IOP: ols_iop.)" if iop is not None else ".)")
    return dict(rows=rows, pct=pct, sentence=sentence, method=pi.method, n_subjects=g,
                max_level=pi.max_finite_level, min_subjects=min_subjects)


def _pm_cell(x: float) -> str:
    return fmt_num(x, 1) if math.isfinite(x) else "unbounded"


#: models that read no scan (the sentence's "IOP alone" side and the plain mean)
IOP_ONLY = ("mean", "ols_iop", "ols_iop2", "mixedlm_iop")
SCAN_MODELS = ("cnn", "ridge_scan")



def _tuning(run: RunData) -> dict | None:
    """tuning.json of the run (issue 21) when it belongs to this run (its run key), else None."""
    try:
        data = RunDir(run.path).read_tuning()
    except (RunDirError, OSError, ValueError):  # unreadable: the section shows stats.json's figures, not the folds
        return None
    return data if data and data.get("run_key") == run.record.key else None


def render_run(run: RunData) -> str:
    stats = run.stats
    ctx = _base_context(stats, run.subjects)
    if ctx["repeats"] is None:  # a run knows which of its models were trained with randomness
        ctx["repeats"] = training_randomness_context(None, run.networks, run.record.config.repeats)
    figs = run_figures(run, stats)
    ctx.update(kind="run", title=f"icpcv report: {run.name}", run_name=run.name, run_path=str(run.path.resolve()),
               figures=figs, cohort=cohort_context(run), plan=plan_context(run), warm_start=warm_start_rows(run),
               scan_audit=scan_audit_context(run),
               warm_start_keys=[k.replace("_", " ") for k in WARM_START_KEYS],
               calibration=table_context(run.calibration),
               config=[(k, fmt_value(v)) for k, v in flatten(settings_in_effect(run.config, bool(run.networks))).items()],
               env=env_items(run.environment),
               record=run.record, timing=timing_table(run), power=run.power,
               attribution=attribution_context(run.attribution),  # issue 14
               prediction=prediction_context(stats),  # issue 20
               selection=selection_context(stats, _tuning(run)),  # issue 21
               warnings=list(stats.warnings), notes=run.notes)
    return environment().get_template("report.html.j2").render(**ctx)


def predictions_figures(data: CompareData | PredictionsData) -> dict[str, list[F.Figure]]:
    """The figures a directory without a cohort or folds can draw: those of stats.json and the
    predictions (comparison and agreement); also written as PNGs under its figures/."""
    stats = data.stats
    figs, add = _collector()
    with F.style():
        common_figures(add, stats, data.predictions, data.subjects, data.models, stats.ci_level)
        power_figure(add, data.power)
    F.render([f for fs in figs.values() for f in fs], data.run.figures_dir)
    return figs


def render_compare(cmp: CompareData) -> str:
    stats = cmp.stats
    ctx = _base_context(stats, cmp.subjects)
    figs = predictions_figures(cmp)
    runs = cmp.meta.get("runs", [])
    ctx.update(kind="compare", title=f"icpcv comparison: {cmp.name}", run_name=cmp.name,
               run_path=str(cmp.path.resolve()), figures=figs, runs=runs, meta=cmp.meta,
               config_diff=cmp.meta.get("config_differences", []),
               envs=[(r.get("name"), env_items(r.get("environment") or {})) for r in runs], power=cmp.power,
               warnings=list(stats.warnings), notes=cmp.notes)
    return environment().get_template("report.html.j2").render(**ctx)


#: analysis.json's settings, with their label in the report
ANALYSIS_SETTINGS = (("reference", "reference model"), ("n_boot", "bootstrap resamples"), ("seed", "seed"),
                     ("ci_level", "confidence level"), ("ci_method", "interval method asked for"),
                     ("audit_failed", "leakage audit marked failed (--audit-failed)"))
ANALYSIS_ENV_KEYS = (("icpcv", "icpcv"), ("python", "Python"), ("numpy", "NumPy"), ("pandas", "pandas"),
                     ("scipy", "SciPy"), ("time", "analysed (UTC)"))


def input_context(pred: PredictionsData) -> dict:
    """The Input section: the analysed table as analysis.json recorded it, and which monkeys each fold
    of the table tested (its own fold column: icpcv made none of these folds and saw no training set)."""
    source = pred.meta.get("source") or {}
    preds = pred.predictions
    folds, spread = [], []
    if "fold" in preds.columns:
        tested = preds.drop_duplicates(["fold", "scan_id"]).assign(fold=lambda d: d["fold"].astype(str))
        for k in natural_sorted(set(tested["fold"])):
            f = tested[tested["fold"] == k]
            folds.append(dict(fold=k, subjects=natural_sorted(set(f["subject"])), n_scans=len(f)))
        per_subject = tested.groupby("subject")["fold"].nunique()
        spread = natural_sorted(per_subject[per_subject > 1].index)
    given, resolved = source.get("path"), source.get("resolved")
    return dict(path=given or resolved or "–", resolved=resolved if resolved and resolved != given else None,
                sha256=source.get("sha256") or "–", n_rows=source.get("n_rows", len(preds)),
                n_models=len(pred.models), n_subjects=len(pred.subjects), folds=folds, spread=spread)


def analysis_settings(meta: dict, stats: AnalysisResult) -> list[tuple[str, str]]:
    settings = meta.get("settings") or {}
    items = []
    for key, label in ANALYSIS_SETTINGS:
        v = settings.get(key, getattr(stats, key, None))
        if key == "ci_method" and v is None:
            v = f"default ({stats.ci_method or 'auto'})"
        items.append((label, fmt_value(v)))
    return items


def analysis_env(meta: dict) -> list[tuple[str, str]]:
    env = dict(meta.get("environment") or {}, icpcv=meta.get("icpcv"), time=meta.get("time"))
    return [(label, fmt_value(env.get(k))) for k, label in ANALYSIS_ENV_KEYS if env.get(k) is not None]


def render_predictions(pred: PredictionsData) -> str:
    """The report of a predictions table analysed outside any run: statistics and figures only."""
    stats = pred.stats
    ctx = _base_context(stats, pred.subjects)
    figs = predictions_figures(pred)
    ctx.update(kind="predictions", title=f"icpcv analysis: {pred.name}", run_name=pred.name,
               run_path=str(pred.path.resolve()), figures=figs, meta=pred.meta, source=input_context(pred),
               settings=analysis_settings(pred.meta, stats), env=analysis_env(pred.meta), power=pred.power,
               warnings=list(stats.warnings), notes=pred.notes)
    return environment().get_template("report.html.j2").render(**ctx)
