"""The small HTML page of ``icpcv predict`` (``index.html``): jinja2 with autoescape, every user string escaped."""
from __future__ import annotations

import math

import pandas as pd
from jinja2 import Environment, StrictUndefined

from icpcv.util import fmt_num

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icpcv predict: {{ meta.n_subjects }} new monkey(s)</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;padding:.5em}</style></head><body>
<h1>ICP of new monkeys from their scans</h1>
<p>{{ meta.n_scans }} scan(s) of {{ meta.n_subjects }} monkey(s) from <code>{{ meta.manifest }}</code>, predicted by
the ensemble of the fold models of the run <code>{{ meta.run }}</code> ({{ meta.n_run_subjects }} monkeys).
Each interval is meant to hold the scan's ICP in {{ pct }} of cases for a monkey none of the models saw
({{ meta.method }}; docs/prediction.md).</p>
{% for w in meta.warnings %}<p class="warn">Warning: {{ w }}</p>{% endfor %}
<h2>Per model</h2>
<table><tr><th>model</th><th>scans</th><th>monkeys</th><th>mean {{ pct }} interval width (mmHg)</th>
<th>mean spread of fold models (sd, mmHg)</th>{% if labelled %}<th>MAE (mmHg)</th><th>coverage, scans</th>
<th>coverage, monkey means</th>{% endif %}</tr>
{% for name, s in meta.summary.items() %}<tr><td>{{ name }}</td><td>{{ s.n_scans }}</td><td>{{ s.n_subjects }}</td>
<td>{{ num(s.mean_width) }}</td><td>{{ num(s.mean_fold_sd) }}</td>{% if labelled %}<td>{{ num(s.mae) }}</td>
<td>{{ share(s.coverage) }}</td><td>{{ share(s.coverage_subject_mean) }}</td>{% endif %}</tr>{% endfor %}</table>
{% if labelled %}<p>Coverage: the share of labelled scans (and of monkeys' mean ICP) inside their interval; with few
new monkeys it scatters widely around {{ pct }}.</p>{% endif %}
<h2>Each monkey's mean ICP over its scans</h2>
<table><tr><th>monkey</th><th>model</th><th>scans</th><th>prediction (mmHg)</th><th>{{ pct }} interval</th>
{% if labelled %}<th>measured mean ICP</th>{% endif %}</tr>
{% for r in subjects %}<tr><td>{{ r.subject }}</td><td>{{ r.model }}</td><td>{{ r.n_scans }}</td><td>{{ num(r.prediction) }}</td>
<td>{{ num(r.low) }} to {{ num(r.high) }}</td>{% if labelled %}<td>{{ num(r.icp_mean) }}</td>{% endif %}</tr>{% endfor %}
</table>
<p>Every scan's prediction, interval and the spread of the fold models: <code>predictions.csv</code>; rows of the
table that were not used, and why: <code>data_quality.csv</code>.</p>
<p><small>icpcv {{ meta.icpcv }}, {{ meta.created }}</small></p>
</body></html>
"""


def _num(x) -> str:
    if x is None or (isinstance(x, float) and math.isinf(x)):
        return "unbounded" if x is not None else "\u2013"
    return fmt_num(x, 1)


def _share(x) -> str:
    return "\u2013" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def render_page(meta: dict, rows: pd.DataFrame, subjects: pd.DataFrame) -> str:
    env = Environment(autoescape=True, undefined=StrictUndefined)
    template = env.from_string(_TEMPLATE)
    labelled = any("coverage" in s for s in meta["summary"].values())
    summary = {k: {**dict(mae=None, coverage=None, coverage_subject_mean=None), **v} for k, v in meta["summary"].items()}
    return template.render(meta=meta | {"summary": summary}, pct=f"{100 * meta['level']:g}%", labelled=labelled,
                           subjects=subjects.to_dict("records"), num=_num, share=_share)
