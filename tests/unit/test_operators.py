"""The Airflow adapters (lakeforge.operators): a task's context becomes one StageRun, the stage gets it,
its summary becomes the outlet asset events' metadata; a failed quality gate is recognised by the
job's exit status. Stages are replaced by recording fakes: their own tests cover them."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge import operators
from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import ConfigError
from lakeforge.lake import Commit
from lakeforge.stage.run import GATE_FAILED_EXIT, StageRun

DAY = Partition.parse("2026-11-23")


class Outlets(dict):
    def __missing__(self, asset):
        self[asset] = SimpleNamespace(extra=None)
        return self[asset]


def context(partition=None, start=None, end=None, **params):
    return {"params": {"partition": partition, **params}, "run_id": "manual__2026-11-24T08:00:00+00:00",
            "data_interval_start": start, "data_interval_end": end, "dag": SimpleNamespace(dag_id="movie_reviews"),
            "task": SimpleNamespace(outlets=["movie_reviews.raw"]), "outlet_events": Outlets()}


@pytest.fixture
def on_local_lake(monkeypatch, local_lake):
    """StageRuns built by the adapters use the test's local lake."""
    create = StageRun.create.__func__
    monkeypatch.setattr(StageRun, "create", classmethod(lambda cls, *a, **kw: create(cls, *a, **{**kw, "lake": local_lake})))
    return local_lake


def test_the_partition_param_wins_on_manual_runs(partition_parses):
    stage = operators.stage_run("movie_reviews", context("2026-11-23"))
    assert stage.partition == DAY and stage.run_id == "manual__2026-11-24T08_00_00_00_00"
    assert partition_parses == ["2026-11-23"]  # parsed once


def test_scheduled_runs_use_the_data_interval(partition_parses):
    ctx = context(None, DAY.start, DAY.end)
    assert operators.stage_run("movie_reviews", ctx).partition == DAY and partition_parses == []
    # a partition handed on by the landing (XCom) wins over both
    assert operators.stage_run("movie_reviews", ctx, "dt=2026-11-20").partition.path == "dt=2026-11-20"


def test_a_manual_run_without_a_partition_fails_naming_the_param_without_retries():
    from airflow.sdk.exceptions import AirflowFailException

    when = datetime(2026, 11, 24, tzinfo=timezone.utc)
    with pytest.raises(AirflowFailException, match="set the `partition` Param") as info:
        operators.stage_run("movie_reviews", context(None, when, when))
    assert isinstance(info.value.__cause__, ConfigError)
    with pytest.raises(AirflowFailException, match="2026-11-23T05.*daily"):  # off the pipeline's grid
        operators.stage_run("movie_reviews", context("2026-11-23T05"))


def test_a_backfill_keeps_each_runs_partition_and_the_confs_other_params(caplog):
    ctx = context("2026-11-01", DAY.start, DAY.end, force_complete=True)
    ctx["dag_run"] = SimpleNamespace(run_type="backfill")
    assert operators.stage_run("movie_reviews", ctx).partition == DAY
    assert "Param '2026-11-01' is ignored: this backfill run covers its own interval, dt=2026-11-23" in caplog.text
    ctx["dag_run"] = SimpleNamespace(run_type="manual")  # a manual run with a logical date: the Param names it
    assert operators.stage_run("movie_reviews", ctx).partition.path == "dt=2026-11-01"


def commit(layer="raw", **stats):
    return Commit(layer=layer, pipeline="movie_reviews", partition=DAY.path, interval=(DAY.start, DAY.end),
                  schema_version=1, run_id="manual__2026-11-24T08_00_00_00_00", rows=3,
                  quarantined={"malformed_json": 1}, stats=stats)


def publish_curated(lake, **stats) -> Commit:
    """Publish 3 curated rows for DAY to ``lake`` (one Parquet file, one commit carrying ``stats``)."""
    pipeline = PipelineConfig.load("movie_reviews")
    table = lake.table(pipeline, "curated")
    when = DAY.start.replace(hour=1)
    rows = [{"id": f"e{i}", "text": f"review {i}", "label": 1, "source": "imdb", "event_time": when,
             "text_hash": f"h{i}", "cluster_id": f"h{i}"} for i in range(3)]
    key = lake.staging_key(table, DAY, "c1") + "/part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema().as_arrow()), lake.root / key)
    return lake.publish_files(pipeline, commit("curated", **stats), [key], started_from=None)


def test_land_events_hands_one_stage_run_to_ingest_and_publishes_its_summary(monkeypatch, partition_parses, on_local_lake):
    import lakeforge.ingest as ingest

    seen = {}

    def fake_run(stage, options):
        seen["stage"], seen["options"] = stage, options
        return commit(late_partitions={"dt=2026-11-20": 2})

    monkeypatch.setattr(ingest, "run", fake_run)
    ctx = context("2026-11-23", force_complete=True)
    out = operators.land_events("movie_reviews", **ctx)
    assert seen["stage"].partition == DAY and seen["options"].force and partition_parses == ["2026-11-23"]
    assert out["partition"] == "dt=2026-11-23" and out["late_partitions"] == {"dt=2026-11-20": 2}
    assert out["quarantined_total"] == 1 and ctx["outlet_events"]["movie_reviews.raw"].extra == out
    # the re-land task maps over the lake partitions that received late records
    assert operators.late_partitions.function(out) == [{"partition": "dt=2026-11-20", "force_complete": True}]


def test_the_completeness_wait_defers_to_the_triggerer_only_while_incomplete(monkeypatch):
    from datetime import timedelta

    from airflow.sdk.exceptions import TaskDeferred

    import lakeforge.ingest as ingest

    sensor = operators.PartitionCompleteSensor(task_id="wait", pipeline_name="movie_reviews", poke_interval=7,
                                               timeout=600)
    answers = []
    monkeypatch.setattr(ingest, "check_complete", lambda stage: answers.pop(0))
    answers.append((True, "complete"))
    assert sensor.execute(context("2026-11-23")) is None  # complete at once: no deferral
    assert sensor.execute(context("2026-11-23", force_complete=True)) is None and not answers  # no Kafka check
    answers.append((False, "waiting"))
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context("2026-11-23"))
    trigger = deferred.value.trigger
    assert deferred.value.method_name == "execute_complete" and deferred.value.timeout == timedelta(seconds=600)
    path, kwargs = trigger.serialize()  # what the triggerer imports and rebuilds
    assert path == "lakeforge.operators.PartitionCompleteTrigger"
    assert kwargs == {"pipeline_name": "movie_reviews", "partition": "dt=2026-11-23", "poke_interval": 7}


def test_the_trigger_fires_once_the_partition_is_complete(monkeypatch):
    import asyncio

    import lakeforge.ingest as ingest

    answers = [(False, "waiting"), (False, "waiting"), (True, "every topic-partition has passed")]
    seen = []

    def check(stage):
        seen.append(stage.partition.path)
        return answers.pop(0)

    monkeypatch.setattr(ingest, "check_complete", check)
    trigger = operators.PartitionCompleteTrigger("movie_reviews", "dt=2026-11-23", poke_interval=0.01)

    async def events():
        return [e async for e in trigger.run()]

    (event,) = asyncio.run(events())
    assert event.payload == {"partition": "dt=2026-11-23", "why": "every topic-partition has passed"}
    assert seen == ["dt=2026-11-23"] * 3 and not answers


def test_event_metadata_summarizes_the_published_commit(on_local_lake):
    report = {"json": on_local_lake.uri("reports/q.json"), "html": on_local_lake.uri("reports/q.html")}
    published = publish_curated(on_local_lake, report=report, rows_per_split={"train": 3})
    ctx = context(None)
    meta = operators.publish_event_metadata(ctx, "curated", "movie_reviews", "dt=2026-11-23")
    assert (meta["table"], meta["snapshot_id"]) == ("movie_reviews.curated", published.snapshot_id)
    assert meta["rows"] == 3 and meta["rows_per_split"] == {"train": 3} and meta["report_url"] == report["html"]
    assert ctx["outlet_events"]["movie_reviews.raw"].extra == meta


def test_promote_model_hands_the_summary_and_airflow_ids_to_evaluate(monkeypatch):
    import lakeforge.evaluate as evaluate

    seen = {}
    monkeypatch.setattr(evaluate, "run", lambda stage, summary, dag_id, run_id: seen.update(
        stage=stage, summary=summary, ids=(dag_id, run_id)) or {"champion": "2"})
    assert operators.promote_model("movie_reviews", '{"version": "2"}', **context("2026-11-23")) == {"champion": "2"}
    assert seen["stage"].partition == DAY and seen["summary"] == '{"version": "2"}'
    assert seen["ids"] == ("movie_reviews", "manual__2026-11-24T08:00:00+00:00")  # the raw Airflow run id


@pytest.mark.parametrize("status, retried", [(GATE_FAILED_EXIT, False), (1, True)])
def test_a_failed_gate_is_known_by_the_exit_status(monkeypatch, status, retried):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    import lakeforge.spark

    monkeypatch.setattr(lakeforge.spark, "submit_kwargs", lambda settings=None: {})

    def failing_submit(self, ctx):
        # what the provider's hook leaves behind: its spark-submit process, and a message we do not parse
        self._hook = SimpleNamespace(_submit_sp=SimpleNamespace(returncode=status))
        raise AirflowException("Cannot execute: spark-submit … (the wording may change)")

    monkeypatch.setattr(SparkSubmitOperator, "execute", failing_submit)
    op = operators.LakeSparkSubmitOperator(task_id="curate_partition", application="jobs/curate.py")
    with pytest.raises(AirflowException) as err:
        op.execute({})
    assert isinstance(err.value, AirflowFailException) is not retried
    assert op.exit_status() == status


def test_records_lost_to_retention_fail_the_landing_without_retries(monkeypatch, partition_parses, on_local_lake):
    from airflow.sdk.exceptions import AirflowFailException

    import lakeforge.ingest as ingest
    from lakeforge.errors import RetentionLossError

    seen = []

    def fake_run(stage, options):
        seen.append(options.accept_retention_loss)
        if not options.accept_retention_loss:
            raise RetentionLossError("offsets [0, 7) deleted")
        return commit()

    monkeypatch.setattr(ingest, "run", fake_run)
    with pytest.raises(AirflowFailException, match=r"offsets \[0, 7\) deleted"):
        operators.land_events("movie_reviews", **context("2026-11-23"))
    operators.land_events("movie_reviews", **context("2026-11-23", accept_retention_loss=True))
    assert seen == [False, True]
