"""Airflow adapters: turn a task's Airflow context into a :class:`~lakeforge.stage.run.StageRun` and
call a stage with it. DAG files only wire these together; the stages know nothing of Airflow, and
this module knows nothing of the stages' internals.

Heavy imports (pyspark, torch, kafka, mlflow) stay inside ``execute``/task bodies so DAG files parse
fast, and secrets are read from the environment at run time, never at parse time.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseSensorOperator, task
from airflow.triggers.base import BaseTrigger, TriggerEvent

from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import ConfigError
from lakeforge.stage.run import GATE_FAILED_EXIT, StageRun


def stage_run(pipeline_name: str, context: Any, partition: str | None = None) -> StageRun:
    """The task's StageRun, built once: the pipeline, the run's partition and the Airflow run id.

    The partition is ``partition`` when given (e.g. pulled from the landing's XCom), else the data
    interval on scheduled runs and backfills, else the ``partition`` Param (manual runs; see
    :meth:`Partition.from_interval`). A bad or future partition fails the task without retries: no
    retry can fix a Param.
    """
    from airflow.sdk.exceptions import AirflowFailException

    pipeline = PipelineConfig.load(pipeline_name)
    try:
        if partition:
            part = Partition.parse(partition, pipeline.partition)
        else:
            run_type = getattr((context.get("dag_run") or None), "run_type", None)
            run_type = str(getattr(run_type, "value", run_type) or "") or None
            param = (context.get("params") or {}).get("partition") or None
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            part = Partition.from_interval(start, end, param, pipeline.partition, run_type=run_type)
            if param and run_type in ("scheduled", "backfill") and start != end:
                logging.getLogger(__name__).warning(
                    "the partition Param %r is ignored: this %s run covers its own interval, %s", param, run_type,
                    part.path)
    except ConfigError as exc:
        raise AirflowFailException(f"{pipeline_name}: {exc}") from exc
    return StageRun.create(pipeline, part, context["run_id"])


def attach_to_outlets(context: Any, metadata: dict) -> None:
    """Make ``metadata`` the extra of every outlet asset event of the task (Airflow UI, Assets)."""
    for asset in getattr(context.get("task"), "outlets", None) or []:
        context["outlet_events"][asset].extra = metadata


class LakeSparkSubmitOperator(SparkSubmitOperator):
    """``spark-submit`` of a lakeforge job with the lake's Spark settings and jars filled in at run time.

    With ``layer`` and ``pipeline_name`` set, the published commit's summary (rows, drops, the
    quality report's links) becomes the metadata of the outlet asset events, and is returned (XCom).
    A job that exits with :data:`~lakeforge.stage.run.GATE_FAILED_EXIT` failed its data-quality gate, or
    found a schema or configuration no rerun can fix: the task fails without retries.
    """

    template_fields = (*SparkSubmitOperator.template_fields, "partition")

    def __init__(self, *, layer: str | None = None, pipeline_name: str | None = None, partition: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.layer = layer
        self.pipeline_name = pipeline_name
        self.partition = partition

    def execute(self, context: Any) -> dict | None:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from lakeforge.config import Settings
        from lakeforge.spark import submit_kwargs

        kw = submit_kwargs(Settings.load())
        self.conf = {**kw.pop("conf", {}), **(self.conf or {})}
        self.env_vars = {**kw.pop("env_vars", {}), **(self.env_vars or {})}
        for key, value in kw.items():  # jars or driver_class_path, whichever the jar mode uses
            setattr(self, key, value)
        try:
            super().execute(context)
        except AirflowException as exc:
            if self.exit_status() == GATE_FAILED_EXIT:
                raise AirflowFailException(f"data-quality gate, schema or pipeline config failed (not retried; "
                                           f"see the log above for which): {exc}") from exc
            raise
        if not (self.layer and self.pipeline_name and self.partition):
            return None
        return publish_event_metadata(context, self.layer, self.pipeline_name, self.partition)

    def exit_status(self) -> int | None:
        """Exit status of the last ``spark-submit`` (None before one ran).

        Hack: the Spark provider's hook keeps its ``Popen`` in the private ``_submit_sp`` and reports
        the status only inside an error message; reading the process is sturdier than the message.
        """
        return getattr(getattr(self._hook, "_submit_sp", None), "returncode", None)


def publish_event_metadata(context: Any, layer: str, pipeline_name: str, partition: str) -> dict:
    """Summarize the commit that published the partition (with a presigned report link), attach it to
    the task's outlet asset events and return it."""
    from lakeforge.stage.run import summarize

    stage = stage_run(pipeline_name, context, partition)
    commit = stage.lake.read_commit(layer, stage.pipeline.name, stage.partition)
    meta = summarize(commit, stage.lake, presign=True)
    attach_to_outlets(context, meta)
    return meta


class PartitionCompleteTrigger(BaseTrigger):
    """Runs on the triggerer: every ``poke_interval`` seconds, is the partition complete in Kafka?
    Fires once it is (the Kafka check runs in a thread, so the triggerer's event loop never blocks)."""

    def __init__(self, pipeline_name: str, partition: str, poke_interval: float):
        super().__init__()
        self.pipeline_name, self.partition, self.poke_interval = pipeline_name, partition, poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"pipeline_name": self.pipeline_name, "partition": self.partition, "poke_interval": self.poke_interval})

    def check(self) -> tuple[bool, str]:
        from lakeforge.ingest import check_complete

        return check_complete(StageRun.create(self.pipeline_name, self.partition, "triggerer"))

    async def run(self):
        import asyncio

        while True:
            done, why = await asyncio.to_thread(self.check)
            self.log.info("%s %s: %s", self.pipeline_name, self.partition, why)
            if done:
                yield TriggerEvent({"partition": self.partition, "why": why})
                return
            await asyncio.sleep(self.poke_interval)


class PartitionCompleteSensor(BaseSensorOperator):
    """Waits until every Kafka topic-partition has passed the run's partition end + allowed lateness.

    Checks once in the worker; while the partition is incomplete it defers to the triggerer
    (:class:`PartitionCompleteTrigger`), so no worker slot is held for hours. ``timeout`` fails it as any
    sensor's does (``AirflowSensorTimeout``, not retried). The ``force_complete`` Param skips the wait.
    """

    def __init__(self, *, pipeline_name: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.pipeline_name = pipeline_name

    def execute(self, context: Any) -> None:
        from datetime import timedelta

        stage = stage_run(self.pipeline_name, context)
        if is_complete(stage, context):
            return
        self.defer(trigger=PartitionCompleteTrigger(self.pipeline_name, stage.partition.path, self.poke_interval),
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def execute_complete(self, context: Any, event: dict) -> None:
        self.log.info("%s: %s", event["partition"], event["why"])


def is_complete(stage: StageRun, context: Any) -> bool:
    """Has every Kafka topic-partition passed the stage's partition end + allowed lateness? (True at
    once with the ``force_complete`` Param.)"""
    import logging

    from lakeforge.ingest import check_complete

    if (context.get("params") or {}).get("force_complete"):
        logging.getLogger(__name__).info("force_complete is set: not waiting for %s", stage.partition.path)
        return True
    done, why = check_complete(stage)
    logging.getLogger(__name__).info("%s: %s", stage.partition.path, why)
    return done


def land_events(pipeline_name: str, **context: Any) -> dict:
    """Task body: land the run's partition from Kafka into the lake.

    The landing's summary (counts, lag and volume per Kafka topic-partition, ``late_partitions``:
    the lake partitions that received late records, for the re-land task) is the raw asset event's
    metadata and the task's XCom.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from lakeforge.errors import RetentionLossError
    from lakeforge.ingest import IngestOptions, run
    from lakeforge.stage.run import summarize

    stage = stage_run(pipeline_name, context)
    params = context["params"] or {}
    options = IngestOptions(force=bool(params.get("force_complete")),
                            accept_retention_loss=bool(params.get("accept_retention_loss")))
    try:
        commit = run(stage, options)
    except RetentionLossError as exc:  # the records are gone: a retry cannot bring them back
        raise AirflowFailException(str(exc)) from exc
    meta = summarize(commit, stage.lake)
    attach_to_outlets(context, meta)
    return meta


@task(task_id="late_partitions")
def late_partitions(landed: dict) -> list[dict]:
    """DAG-run confs re-landing each partition that received late records (mapped over by reland_late)."""
    return [{"partition": p, "force_complete": True} for p in sorted(landed.get("late_partitions") or {})]


def promote_model(pipeline_name: str, train_summary: str | dict, **context: Any) -> dict:
    """Task body: gate every candidate the training registered against the champion (see
    :func:`lakeforge.evaluate.run`); the alias ends on the best of them."""
    from lakeforge import evaluate

    stage = stage_run(pipeline_name, context)
    return evaluate.run(stage, train_summary, context["dag"].dag_id, context["run_id"])
