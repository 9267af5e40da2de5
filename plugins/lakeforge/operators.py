"""Airflow operators and task bodies of lakeforge. DAG files only wire these together.

Heavy imports (pyspark, torch, kafka) stay inside ``execute``/task bodies so DAG files parse fast,
and secrets are read from the environment at run time, never at parse time.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from lakeforge.config import Partition, PipelineConfig


class LakeSparkSubmitOperator(SparkSubmitOperator):
    """``spark-submit`` of a lakeforge job with the lake's s3a settings and jars filled in at run time."""

    def execute(self, context: Any) -> None:
        from lakeforge.config import Settings
        from lakeforge.spark import submit_kwargs

        kw = submit_kwargs(Settings.load())
        self.conf = {**kw.pop("conf", {}), **(self.conf or {})}
        self.env_vars = {**kw.pop("env_vars", {}), **(self.env_vars or {})}
        for key, value in kw.items():  # jars or driver_class_path, whichever the jar mode uses
            setattr(self, key, value)
        return super().execute(context)


def partition_of(context: Any, pipeline: PipelineConfig) -> Partition:
    """The run's partition: the `partition` Param on manual runs, else the data interval."""
    param = (context["params"] or {}).get("partition")
    return Partition.from_interval(context.get("data_interval_start"), context.get("data_interval_end"),
                                   param or None, pipeline.partition)


def land_events(pipeline_name: str, **context: Any) -> dict:
    """Task body: land the run's partition from Kafka into the lake."""
    from lakeforge.ingest import IngestConfig, run

    pipeline = PipelineConfig.load(pipeline_name)
    part = partition_of(context, pipeline)
    m = run(IngestConfig(pipeline=pipeline.name, partition=part.path, run_id=context["run_id"]))
    return {"partition": part.path, "rows": m.rows, "quarantined": m.quarantined, "kafka_offsets": m.kafka_offsets}


def promote_model(pipeline_name: str, train_summary: str | dict, **context: Any) -> dict:
    """Task body: gate the trained version against the champion on the partition's test split."""
    import json

    import pyarrow.compute as pc

    from lakeforge.config import Settings
    from lakeforge.lake import Lake
    from lakeforge.registry import ModelPromoter

    pipeline = PipelineConfig.load(pipeline_name)
    summary = json.loads(train_summary) if isinstance(train_summary, str) else train_summary
    settings = Settings.load()
    lake = Lake(settings)
    part = Partition.parse(summary["partition"], pipeline.partition) if summary.get("partition") else partition_of(context, pipeline)
    table = lake.read_table(lake.read_manifest("features", pipeline.name, part))
    test = table.filter(pc.equal(table["split"], "test"))
    promoter = ModelPromoter(settings.require("mlflow_uri"), pipeline.model.registered_name, pipeline.model.min_accuracy)
    decision = promoter.promote(str(summary["version"]), test)
    return decision.__dict__ if hasattr(decision, "__dict__") else dict(decision)
