"""The stage contract: StageRun built once, the one run-id sanitizer, the one commit summary."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import ConfigError
from lakeforge.lake import Commit
from lakeforge.stage.run import StageRun, new_run_id, safe_run_id, summarize


def test_run_id_made_path_safe():
    assert safe_run_id("manual__2026-11-23T00:00:00+00:00") == "manual__2026-11-23T00_00_00_00_00"
    assert StageRun.create("movie_reviews", "2026-11-23", run_id=None).run_id.startswith("manual-")


@pytest.mark.parametrize("value, expected", [
    ("backfill__2026-11-14T00:00:00+00:00", "backfill__2026-11-14T00_00_00_00_00"),
    ("a/b c\u00e9", "a_b_c_"),  # only ASCII survives: every S3 tool reads the key the same way
    ("ok-1.2_x", "ok-1.2_x"),
])
def test_safe_run_id_keeps_ascii_letters_digits_and_dashes(value, expected):
    assert safe_run_id(value) == expected


def test_safe_run_id_cuts_at_the_limit_and_new_run_id_is_unique():
    assert len(safe_run_id("x" * 500)) == 120 and len(safe_run_id("x" * 500, 10)) == 10
    first, second = new_run_id("manual__2026-11-23T00:00:00+00:00"), new_run_id("manual__2026-11-23T00:00:00+00:00")
    assert first != second and first.startswith("manual__2026-11-23T00_00_00_00_00-")


def test_create_loads_parses_and_settles_the_run_id(local_lake):
    stage = StageRun.create("movie_reviews", "dt=2026-11-23", "scheduled__2026-11-23T00:00:00+00:00", lake=local_lake)
    assert stage.pipeline == PipelineConfig.load("movie_reviews") and stage.partition == Partition.parse("2026-11-23")
    assert stage.run_id == "scheduled__2026-11-23T00_00_00_00_00"  # a retry reuses the prefix (ingest)
    assert stage.lake is local_lake and stage.settings is local_lake.settings
    assert stage.where == "movie_reviews dt=2026-11-23"
    again = StageRun.create(stage.pipeline, stage.partition, "scheduled__x", lake=local_lake, per_attempt=True)
    assert again.run_id.startswith("scheduled__x-") and again.run_id != "scheduled__x"  # one prefix per attempt
    assert again.pipeline is stage.pipeline and again.partition is stage.partition  # nothing loaded or parsed again


def test_create_parses_by_the_pipelines_granularity_and_fails_loudly(tmp_path, local_lake):
    with pytest.raises(ConfigError, match="bad partition '2026-13-01'"):
        StageRun.create("movie_reviews", "2026-13-01", lake=local_lake)
    hourly = PipelineConfig.load("movie_reviews").model_copy(update={"partition": "hourly"})
    assert StageRun.create(hourly, "2026-11-23T05", lake=local_lake).partition.path == "dt=2026-11-23/hour=05"


def commit(**stats):
    day = datetime(2026, 11, 23, tzinfo=timezone.utc)
    return Commit(layer="curated", pipeline="movie_reviews", partition="dt=2026-11-23",
                  interval=(day, day.replace(day=24)), schema_version=1, run_id="c1", rows=7, files=1,
                  snapshot_id=4242, dropped={"too_short": 2}, quarantined={"malformed_json": 1, "oversize": 2},
                  stats=stats)


def test_summarize_names_the_commit_and_its_figures(local_lake):
    report = {"json": local_lake.uri("reports/q.json"), "html": local_lake.uri("reports/q.html")}
    summary = summarize(commit(rows_per_split={"train": 5}, report=report, steps=["not in the summary"]), local_lake)
    assert (summary["table"], summary["snapshot_id"]) == ("movie_reviews.curated", 4242)
    assert "manifest" not in summary
    assert (summary["layer"], summary["partition"], summary["run_id"], summary["rows"], summary["files"]) == (
        "curated", "dt=2026-11-23", "c1", 7, 1)
    assert summary["dropped"] == {"too_short": 2} and summary["quarantined_total"] == 3
    assert summary["rows_per_split"] == {"train": 5} and "steps" not in summary
    assert (summary["report_json"], summary["report_html"]) == (report["json"], report["html"])
    assert "report_url" not in summary
    assert summarize(commit(report=report), local_lake, presign=True)["report_url"] == report["html"]


def test_summarize_of_a_landing_keeps_lag_and_volume_per_topic_partition(local_lake):
    tps = {"0": {"landed": 5, "quarantined": 1, "bytes": 10, "offset_lag": 0, "first": 0, "end": 6,
                 "max_timestamp_ms": 1}}
    m = commit(topic_partitions=tps, late_partitions={"dt=2026-11-22": 3}, late_rows=0, msgs_per_s=9, seconds=1.5)
    m = m.model_copy(update={"layer": "raw", "kafka_offsets": {"t": {"0": [0, 6]}}})
    summary = summarize(m, local_lake)
    assert summary["topic_partitions"] == {"0": {k: v for k, v in tps["0"].items() if k != "max_timestamp_ms"}}
    assert summary["late_partitions"] == {"dt=2026-11-22": 3} and summary["kafka_offsets"] == {"t": {"0": [0, 6]}}
    assert (summary["msgs_per_s"], summary["seconds"], summary["late_rows"]) == (9, 1.5, 0)


def test_features_summary_links_the_curation_report(local_lake):
    report = {"json": "s3://lakeforge/q.json", "html": "s3://lakeforge/q.html"}
    assert summarize(commit(curate_report=report), local_lake)["report"] == report
