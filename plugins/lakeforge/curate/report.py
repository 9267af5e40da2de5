"""The quality report of one curate run: a JSON document and an HTML page with charts.

Written to ``reports/<pipeline>/dt=…/run=<run_id>/quality.{json,html}`` (also when the gate
fails, so the failure can be read), linked from the curated commit (``stats["report"]``), the
Airflow asset event and the MLflow run that trains on the partition. The page is one
self-contained file (inline SVG, no scripts, no external assets): it opens from S3, an MLflow
artifact view or a laptop alike.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: Bin edges of the length histograms, in characters (log-spaced; the last bin is open).
LENGTH_BINS = (0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)


def length_histogram(df: "DataFrame", column: str = "text") -> list[int]:
    """Rows per :data:`LENGTH_BINS` bin of the text length (null counts as 0), one Spark aggregation."""
    from pyspark.sql import functions as F

    length = F.coalesce(F.length(F.col(column)), F.lit(0))
    index = sum((F.when(length >= edge, 1).otherwise(0) for edge in LENGTH_BINS[1:]), F.lit(0))
    counts = {r["b"]: r["n"] for r in df.groupBy(index.alias("b")).agg(F.count(F.lit(1)).alias("n")).collect()}
    return [int(counts.get(i, 0)) for i in range(len(LENGTH_BINS))]


def bin_labels() -> list[str]:
    edges = list(LENGTH_BINS)
    return [f"{lo:,}–{hi - 1:,}" for lo, hi in zip(edges, edges[1:])] + [f"≥{edges[-1]:,}"]


def build(*, pipeline: str, partition: str, run_id: str, inputs: Sequence[Mapping[str, str]], rows_in: int,
          rows_out: int, counts: Mapping[str, int], steps: Sequence[Mapping[str, Any]], metrics: Mapping[str, int],
          samples: Mapping[str, Sequence[Mapping[str, Any]]], lengths_before: Sequence[int],
          lengths_after: Sequence[int], dedup: Mapping[str, Any], gate: Sequence[Mapping[str, Any]],
          quarantined: Mapping[str, int], seconds: float) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring)."""
    dropped = sum(counts.values())
    return {
        "pipeline": pipeline,
        "partition": partition,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "inputs": list(inputs),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "dropped": dropped,
        "kept_share": rows_out / rows_in if rows_in else 1.0,
        "drops_by_reason": dict(counts),
        "drop_rates": {r: (n / rows_in if rows_in else 0.0) for r, n in counts.items()},
        "quarantined_at_ingest": dict(quarantined),
        "steps": list(steps),
        "metrics": dict(metrics),
        "length_chars": {"bins": list(LENGTH_BINS), "labels": bin_labels(), "before": list(lengths_before),
                         "after": list(lengths_after)},
        "dedup": dict(dedup),
        "samples": {r: list(rows) for r, rows in samples.items()},
        "gate": {"passed": all(c["passed"] for c in gate), "checks": list(gate)},
        "seconds": round(seconds, 2),
    }


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756")


def _bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], *, width: int = 760, height: int = 220,
          log: bool = False) -> str:
    """Grouped vertical bar chart as inline SVG."""
    n = max(1, len(labels))
    top = max([max(v, default=0) for v in series.values()] + [1])
    scale = (lambda v: math.log10(1 + v) / math.log10(1 + top)) if log else (lambda v: v / top)
    left, bottom, plot_h = 40, 60, height - 80
    group_w = (width - left - 10) / n
    bar_w = max(2.0, group_w * 0.8 / max(1, len(series)))
    parts = [f'<svg width="{width}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">']
    parts.append(f'<line x1="{left}" y1="{20 + plot_h}" x2="{width - 10}" y2="{20 + plot_h}" stroke="#999"/>')
    for i, label in enumerate(labels):
        x0 = left + i * group_w + group_w * 0.1
        for k, (name, values) in enumerate(series.items()):
            v = values[i] if i < len(values) else 0
            h = plot_h * scale(v)
            x = x0 + k * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{20 + plot_h - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}"'
                         f' fill="{COLORS[k % len(COLORS)]}"><title>{html.escape(name)} {html.escape(label)}: {v:,}</title></rect>')
        parts.append(f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{height - bottom + 35}" font-size="10"'
                     f' text-anchor="end" transform="rotate(-35 {left + (i + 0.5) * group_w:.1f} {height - bottom + 35})">'
                     f'{html.escape(label)}</text>')
    parts.append(f'<text x="4" y="16" font-size="10">max {top:,}{" (log scale)" if log else ""}</text>')
    for k, name in enumerate(series):
        parts.append(f'<rect x="{width - 200}" y="{6 + 14 * k}" width="10" height="10" fill="{COLORS[k % len(COLORS)]}"/>'
                     f'<text x="{width - 185}" y="{15 + 14 * k}" font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _hbars(items: Sequence[tuple[str, float]], total: int, *, width: int = 760) -> str:
    """Horizontal bars (drops per rule), with counts and shares."""
    row_h, label_w = 18, 260
    height = row_h * max(1, len(items)) + 10
    top = max([v for _, v in items] + [1])
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, v) in enumerate(items):
        w = (width - label_w - 140) * v / top
        y = 5 + i * row_h
        share = f" ({100 * v / total:.2f}%)" if total else ""
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end">{html.escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{COLORS[3 if v else 0]}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{v:,}{share}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    gate = report["gate"]
    lengths = report["length_chars"]
    dedup = report.get("dedup") or {}
    near = dedup.get("near_dedup") or {}
    clusters = {int(k): v for k, v in (near.get("clusters") or {}).items()}
    drops = sorted(report["drops_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>Quality report {esc(report['pipeline'])} {esc(report['partition'])}</title>",
           "<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:1000px}table{border-collapse:collapse}"
           "td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}"
           ".ok{color:#2a7a2a}.bad{color:#b00020;font-weight:bold}pre{white-space:pre-wrap;margin:0;max-width:640px}"
           "h2{margin-top:28px}</style></head><body>",
           f"<h1>Curate quality report: {esc(report['pipeline'])} {esc(report['partition'])}</h1>",
           f"<p>run <code>{esc(report['run_id'])}</code> · {esc(report['created_at'])} · {report['seconds']} s</p>",
           f"<p><b>{report['rows_in']:,}</b> rows in → <b>{report['rows_out']:,}</b> kept"
           f" ({100 * report['kept_share']:.1f}%), {report['dropped']:,} dropped.</p>",
           "<h2>Gate</h2><table><tr><th>rule</th><th>result</th></tr>"]
    for c in gate["checks"]:
        out.append(f"<tr><td>{esc(c['rule'])}</td><td class='{'ok' if c['passed'] else 'bad'}'>"
                   f"{'pass' if c['passed'] else 'FAIL'}: {esc(c['message'])}</td></tr>")
    out.append("</table>")
    out.append("<h2>Drops per rule</h2>" + _hbars(drops, report["rows_in"]))
    out.append("<h2>Text length before / after (characters)</h2>"
               + _bars(lengths["labels"], {"before (raw)": lengths["before"], "after (curated)": lengths["after"]}))
    if clusters:
        sizes = sorted(clusters)
        out.append("<h2>Near-duplicate clusters by size</h2>"
                   + _bars([str(s) for s in sizes], {"clusters": [clusters[s] for s in sizes]}, log=True)
                   + f"<p>{near.get('candidate_pairs', 0):,} candidate pairs, {near.get('verified_pairs', 0):,}"
                   f" verified at Jaccard ≥ {near.get('params', {}).get('threshold')};"
                   f" {sum(clusters.values()):,} clusters holding {near.get('rows_in_clusters', 0):,} rows.</p>")
    if report.get("metrics"):
        out.append("<h2>Counters</h2><table>" + "".join(
            f"<tr><td>{esc(k)}</td><td>{v:,}</td></tr>" for k, v in sorted(report["metrics"].items())) + "</table>")
    out.append("<h2>Steps</h2><table><tr><th>step</th><th>params</th><th>rows in</th><th>dropped</th></tr>")
    for s in report["steps"]:
        dropped = ", ".join(f"{k}: {v:,}" for k, v in s["dropped"].items() if v) or "–"
        out.append(f"<tr><td>{esc(s['name'])}</td><td><code>{esc(str(s['params']))}</code></td>"
                   f"<td>{s['rows_in']:,}</td><td>{esc(dropped)}</td></tr>")
    out.append("</table><h2>Examples of dropped rows</h2>")
    for reason, rows in sorted(report["samples"].items()):
        out.append(f"<h3>{esc(reason)}</h3><table><tr><th>id</th><th>text (as the rule saw it)</th><th>detail</th></tr>")
        for r in rows:
            detail = ", ".join(f"{k}={r[k]}" for k in ("duplicate_of", "similarity", "kafka_partition", "kafka_offset")
                               if r.get(k) is not None)
            out.append(f"<tr><td>{esc(str(r.get('id')))}</td><td><pre>{esc(str(r.get('text')))}</pre></td>"
                       f"<td>{esc(detail)}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "".join(out)
