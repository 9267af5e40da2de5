"""The quality gate's checks and messages, and the report's HTML, without Spark."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig, QualityGateSpec
from lakeforge.curate import gates, report
from lakeforge.errors import ConfigError, DataQualityError
from lakeforge.lake import Commit


def raw(quarantined=None, version=1):
    t = datetime(2026, 11, 20, tzinfo=timezone.utc)
    return Commit(layer="raw", pipeline="movie_reviews", partition="dt=2026-11-20", interval=(t, t),
                  schema_version=version, run_id="i", rows=900, quarantined=quarantined or {})


TYPES = {"id": "string", "text": "string", "label": "bigint", "source": "string", "event_time": "timestamp"}


@pytest.mark.parametrize("spec, kw, rule, message", [
    ({"min_rows": 500}, {}, "min_rows", "min_rows: 400 curated rows, at least 500 required"),
    ({"max_drop_rate": {"*": 0.3}}, {}, "max_drop_rate[too_short]",
     "max_drop_rate[too_short]: 400 of 1,000 input rows dropped (40.0%), limit 30.0%"),
    ({"max_drop_rate": {"too_short": 0.5, "*": 0.1}}, {}, "max_drop_rate[exact_duplicate]",
     "max_drop_rate[exact_duplicate]: 200 of 1,000 input rows dropped (20.0%), limit 10.0%"),
    ({"max_total_drop_rate": 0.5}, {}, "max_total_drop_rate",
     "max_total_drop_rate: 600 of 1,000 input rows dropped (60.0%), limit 50.0%"),
    ({"max_quarantine_share": 0.05}, {"raw": raw({"malformed_json": 100})}, "max_quarantine_share",
     "max_quarantine_share: 100 of 1,000 records quarantined at ingest (10.0%; {'malformed_json': 100}), limit 5.0%"),
    ({}, {"raw": raw(version=2)}, "schema", "schema: schema_version 2 != pipeline's 1"),
    ({}, {"raw_types": {**TYPES, "label": "string"}}, "schema", "schema: column 'label' is string, pipeline says int"),
])
def test_each_rule_fails_with_its_figures(spec, kw, rule, message):
    kw = {"raw": raw(), "raw_types": TYPES, **kw}
    checks = gates.evaluate(QualityGateSpec(**spec), rows_in=1000, rows_out=400,
                            counts={"too_short": 400, "exact_duplicate": 200}, pipeline=PipelineConfig.load("movie_reviews"), **kw)
    failed = [c for c in checks if not c.passed]
    assert [c.rule for c in failed] == [rule]
    assert failed[0].message == message
    with pytest.raises(DataQualityError, match="quality gate failed for movie_reviews dt=2026-11-20") as err:
        gates.enforce(checks, "movie_reviews dt=2026-11-20", "s3://lake/reports/x/quality.html")
    assert message in str(err.value) and "s3://lake/reports/x/quality.html" in str(err.value)


def test_default_gate_passes_everything():
    checks = gates.evaluate(QualityGateSpec(), rows_in=0, rows_out=0, counts={"too_short": 0})
    assert all(c.passed for c in checks)
    gates.enforce(checks, "x")


def test_a_typo_in_the_gate_fails_before_running():
    with pytest.raises(ConfigError, match="too_shrot"):
        gates.check_reasons_known(QualityGateSpec(max_drop_rate={"too_shrot": 0.1}), ["too_short"])


def test_report_html_is_self_contained():
    doc = report.build(pipeline="p", partition="dt=2026-11-20", run_id="r", inputs=[], rows_in=10, rows_out=7,
                       counts={"too_short": 2, "near_duplicate": 1}, steps=[{"name": "length_filter", "params": {},
                                                                           "rows_in": 10, "dropped": {"too_short": 2}}],
                       metrics={"pii_email": 3}, samples={"too_short": [{"id": "a", "text": "<b>x</b>"}]},
                       lengths_before=[1] * 13, lengths_after=[0] * 13,
                       dedup={"near_dedup": {"clusters": {2: 1}, "params": {"threshold": 0.75}}},
                       gate=[{"rule": "min_rows", "passed": True, "message": "ok", "value": 7, "limit": 0}],
                       quarantined={}, seconds=1.0)
    page = report.render_html(doc)
    assert page.count("<svg") == 3  # drops per rule, lengths, cluster sizes
    assert "&lt;b&gt;x&lt;/b&gt;" in page  # samples are escaped
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
