"""The command line of the Spark entry points (``jobs/curate.py``, ``jobs/features.py``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from lakeforge.config import REPO_ROOT, Partition
from lakeforge.errors import DataQualityError
from lakeforge.lake import Commit
from lakeforge.stage.cli import spark_stage_app
from lakeforge.stage.run import GATE_FAILED_EXIT, StageRun
from lakeforge.stage.spark_io import SparkStageOptions


@pytest.mark.parametrize("job", ["curate", "features"])
def test_job_cli_prints_json_summary_last(monkeypatch, tmp_path, job):
    """The spark-submit entry points: flags -> StageRun -> run(); the last stdout line is JSON."""
    seen = {}

    def fake_run(stage, options):
        seen["stage"], seen["options"] = stage, options
        return Commit(layer="curated" if job == "curate" else "features", pipeline=stage.pipeline.name,
                      partition="dt=2026-11-23", run_id=stage.run_id, rows=0, schema_version=1, snapshot_id=7,
                      interval=(datetime(2026, 11, 23, tzinfo=timezone.utc),
                                datetime(2026, 11, 24, tzinfo=timezone.utc)))

    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    # the entry point file is only the call of the shared CLI with its stage's run
    source = (REPO_ROOT / "jobs" / f"{job}.py").read_text()
    assert f'main("{job}", run)' in source and f"from lakeforge.{job} import run" in source
    result = CliRunner().invoke(spark_stage_app(job, fake_run), ["--pipeline", "movie_reviews", "--partition",
                                                                 "2026-11-23", "--run-id",
                                                                 "scheduled__2026-11-23T00:00:00+00:00"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    layer = "curated" if job == "curate" else "features"
    assert (summary["table"], summary["snapshot_id"]) == (f"movie_reviews.{layer}", 7)
    assert summary["rows"] == 0 and summary["files"] == 0
    # each attempt writes under its own prefix: the Airflow run id made path-safe, plus a suffix
    assert seen["stage"].run_id.startswith("scheduled__2026-11-23T00_00_00_00_00-")
    assert seen["stage"].partition == Partition.parse("2026-11-23") and seen["options"] == SparkStageOptions()


def test_job_cli_exits_3_on_a_failed_gate(monkeypatch, tmp_path):
    """Status 3 tells the Airflow task not to retry (rerunning the same data cannot pass the gate)."""
    from lakeforge import operators

    def failing_run(stage, options):
        raise DataQualityError("quality gate failed for movie_reviews dt=2026-11-23: min_rows: 1 curated rows")

    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    result = CliRunner().invoke(spark_stage_app("curate", failing_run),
                                ["--pipeline", "movie_reviews", "--partition", "2026-11-23"])
    # one constant: the CLI exits with it, the Airflow operator reads it
    assert result.exit_code == GATE_FAILED_EXIT == 3 and operators.GATE_FAILED_EXIT is GATE_FAILED_EXIT
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last == {"error": "quality_gate", "message": "quality gate failed for movie_reviews dt=2026-11-23: "
                                                         "min_rows: 1 curated rows"}


def test_stage_run_is_built_once_per_process(monkeypatch, tmp_path, partition_parses):
    """The CLI parses the partition exactly once; the stage gets the parsed Partition."""
    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    seen = []

    def fake_run(stage, options):
        seen.append(stage)
        raise DataQualityError("stop here")

    CliRunner().invoke(spark_stage_app("curate", fake_run), ["--pipeline", "movie_reviews", "--partition", "2026-11-23"])
    assert partition_parses == ["2026-11-23"] and isinstance(seen[0], StageRun)


def test_job_cli_exits_3_when_no_retry_can_help(monkeypatch, tmp_path):
    """A partition whose columns do not match the pipeline, or a bad partition value, fails the same
    way on every attempt: the task must not be retried."""
    from lakeforge.errors import SchemaMismatchError

    def mismatched(stage, options):
        raise SchemaMismatchError("raw partition movie_reviews/dt=2026-11-23 lacks columns ['source']")

    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    app = spark_stage_app("curate", mismatched)
    result = CliRunner().invoke(app, ["--pipeline", "movie_reviews", "--partition", "2026-11-23"])
    assert result.exit_code == GATE_FAILED_EXIT
    assert json.loads(result.stdout.strip().splitlines()[-1])["error"] == "schema"
    result = CliRunner().invoke(app, ["--pipeline", "movie_reviews", "--partition", "yesterday"])
    assert result.exit_code == GATE_FAILED_EXIT
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "error": "config", "message": "bad partition 'yesterday': expected YYYY-MM-DD (e.g. 2026-11-23) for a daily pipeline"}
