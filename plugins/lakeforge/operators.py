"""Airflow operators and task bodies of lakeforge. DAG files only wire these together.

Heavy imports (pyspark, torch, kafka) stay inside ``execute``/task bodies so DAG files parse fast,
and secrets are read from the environment at run time, never at parse time.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import task

from lakeforge.config import Partition, PipelineConfig


#: Exit status of a Spark stage whose data-quality gate failed (see lakeforge.jobcli): not retried.
GATE_FAILED_EXIT = 3


class LakeSparkSubmitOperator(SparkSubmitOperator):
    """``spark-submit`` of a lakeforge job with the lake's s3a settings and jars filled in at run time.

    With ``layer`` and ``pipeline_name`` set, the published manifest's figures (rows, drops, the
    quality report's links) become the metadata of the outlet asset events, and are returned
    (XCom). A failed quality gate fails the task without retries: rerunning the same data cannot
    pass it.
    """

    template_fields = (*SparkSubmitOperator.template_fields, "partition")

    def __init__(self, *, layer: str | None = None, pipeline_name: str | None = None, partition: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.layer = layer
        self.pipeline_name = pipeline_name
        self.partition = partition

    def execute(self, context: Any) -> dict | None:
        from airflow.exceptions import AirflowException, AirflowFailException

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
            # hack: the Spark provider reports only "Error code is: N." in its message
            if f"Error code is: {GATE_FAILED_EXIT}." in str(exc):
                raise AirflowFailException(f"data-quality gate failed (not retried): {exc}") from exc
            raise
        if not (self.layer and self.pipeline_name and self.partition):
            return None
        return publish_event_metadata(context, self.layer, self.pipeline_name, self.partition)


def publish_event_metadata(context: Any, layer: str, pipeline_name: str, partition: str) -> dict:
    """Read the partition's published manifest and attach its figures (and report links) to the
    task's outlet asset events; returns them."""
    from lakeforge.config import Settings
    from lakeforge.lake import Lake

    pipeline = PipelineConfig.load(pipeline_name)
    lake = Lake(Settings.load())
    part = Partition.parse(partition, pipeline.partition)
    manifest = lake.read_manifest(layer, pipeline.name, part)  # type: ignore[arg-type]
    meta: dict[str, Any] = {"partition": part.path, "run_id": manifest.run_id, "rows": manifest.rows,
                            "dropped": manifest.dropped,
                            "manifest": lake.uri(lake.manifest_key(layer, pipeline.name, part))}  # type: ignore[arg-type]
    report = manifest.stats.get("report") or manifest.stats.get("curate_report")
    if report:
        meta["report_json"], meta["report_html"] = report["json"], report["html"]
        meta["report_url"] = lake.http_link(report["html"])  # presigned: opens in a browser for 7 days
    if "rows_per_split" in manifest.stats:
        meta["rows_per_split"] = manifest.stats["rows_per_split"]
    for asset in getattr(context.get("task"), "outlets", None) or []:
        context["outlet_events"][asset].extra = meta
    return meta


def partition_of(context: Any, pipeline: PipelineConfig) -> Partition:
    """The run's partition: the `partition` Param on manual runs, else the data interval."""
    param = (context["params"] or {}).get("partition")
    return Partition.from_interval(context.get("data_interval_start"), context.get("data_interval_end"),
                                   param or None, pipeline.partition)


def partition_complete(pipeline_name: str, **context: Any) -> bool:
    """Sensor body: has every topic-partition passed the run's partition end + allowed lateness?"""
    import logging

    from lakeforge.ingest import check_complete

    pipeline = PipelineConfig.load(pipeline_name)
    part = partition_of(context, pipeline)
    if (context["params"] or {}).get("force_complete"):
        logging.getLogger(__name__).info("force_complete is set: not waiting for %s", part.path)
        return True
    done, why = check_complete(pipeline, part)
    logging.getLogger(__name__).info("%s: %s", part.path, why)
    return done


def land_events(pipeline_name: str, **context: Any) -> dict:
    """Task body: land the run's partition from Kafka into the lake.

    Publishes the landing's counts, lag and volume as the raw asset event's metadata; the result
    names the partitions that received late records (``late_partitions``) for the re-land task.
    """
    from lakeforge.ingest import IngestConfig, metrics_of, run

    pipeline = PipelineConfig.load(pipeline_name)
    part = partition_of(context, pipeline)
    force = bool((context["params"] or {}).get("force_complete"))
    m = run(IngestConfig(pipeline=pipeline.name, partition=part.path, run_id=context["run_id"], force=force))
    meta = metrics_of(m)
    for asset in getattr(context.get("task"), "outlets", None) or []:
        context["outlet_events"][asset].extra = meta
    return {"partition": part.path, "rows": m.rows, "quarantined": m.quarantined, "kafka_offsets": m.kafka_offsets,
            "late_partitions": meta["late_partitions"]}


@task(task_id="late_partitions")
def late_partitions(landed: dict) -> list[dict]:
    """DAG-run confs re-landing each partition that received late records (mapped over by reland_late)."""
    return [{"partition": p, "force_complete": True} for p in sorted(landed.get("late_partitions") or {})]


def train_command(pipeline_name: str, partition: str) -> str:
    """The ``train_model`` task's bash command (a Jinja template): torchrun over ``jobs/train.py``.

    * one process per visible GPU (``nvidia-smi``), else one CPU process;
    * ``exec``: bash becomes the launcher, so Airflow's kill (SIGTERM to the process group) reaches
      torchrun, which forwards it to its workers;
    * ``setpriv --pdeathsig TERM``: torchrun gets SIGTERM when its parent, the Airflow task process,
      dies even by ``kill -9``; the workers in turn die with torchrun (``PR_SET_PDEATHSIG`` in
      ``jobs/train.py``). No orphan keeps training beside the retry;
    * ``--max-restarts=0``: a crashed worker fails the task; Airflow's retry resumes from the last
      checkpoint of the same DAG run (keyed by dag_id/run_id, which torchrun's workers inherit from
      the task's ``AIRFLOW_CTX_*`` environment).
    """
    from lakeforge.config import REPO_ROOT

    return (
        "NPROC=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true); "
        '[ "${NPROC:-0}" -gt 0 ] || NPROC=1; '
        'PDEATH=""; command -v setpriv >/dev/null && PDEATH="setpriv --pdeathsig TERM"; '
        "exec $PDEATH torchrun --standalone --nproc-per-node=$NPROC --max-restarts=0 "
        f"{REPO_ROOT / 'jobs' / 'train.py'} --pipeline {pipeline_name} --partition {partition} "
        "{% if params.max_steps %}--max-steps {{ params.max_steps }}{% endif %}"
    )


def _train_summary(train_summary: str | dict | None, pipeline: PipelineConfig, context: Any) -> dict:
    """The training task's summary: its XCom (last stdout line), else the run's DONE.json in the lake."""
    import json

    if isinstance(train_summary, dict):
        return train_summary
    try:
        summary = json.loads(train_summary or "")
        if isinstance(summary, dict) and summary.get("version"):
            return summary
    except json.JSONDecodeError:
        pass
    from lakeforge.lake import Lake
    from lakeforge.train.checkpoint import read_done

    part = partition_of(context, pipeline)
    done = read_done(Lake(), pipeline.name, part, context["dag"].dag_id, context["run_id"])
    if not done:
        from lakeforge.errors import LakeforgeError

        raise LakeforgeError(f"train_model left no summary (XCom {str(train_summary)[:200]!r}) and no DONE.json "
                             f"for {context['run_id']}: rerun train_model")
    return {**done, "partition": part.path}


def promote_model(pipeline_name: str, train_summary: str | dict, **context: Any) -> dict:
    """Task body: gate each candidate the training registered (the TF-IDF baseline, then the fine-tune)
    against the champion on the partition's test split; the alias ends on the best of them."""
    import pyarrow.compute as pc

    from lakeforge.config import Settings
    from lakeforge.lake import Lake
    from lakeforge.registry import ModelPromoter

    pipeline = PipelineConfig.load(pipeline_name)
    summary = _train_summary(train_summary, pipeline, context)
    settings = Settings.load()
    lake = Lake(settings)
    part = Partition.parse(summary["partition"], pipeline.partition) if summary.get("partition") else partition_of(context, pipeline)
    table = lake.read_table(lake.read_manifest("features", pipeline.name, part), columns=["text", "label", "split"])
    test = table.filter(pc.equal(table["split"], "test"))
    promoter = ModelPromoter(settings.require("mlflow_uri"), pipeline.model.registered_name, pipeline.model.min_accuracy)
    candidates = summary.get("candidates") or [{"kind": "finetuned", "version": summary["version"]}]
    decisions = []
    for cand in candidates:  # ties go to the later candidate: the fine-tune is last
        decisions.append({"kind": cand.get("kind", "finetuned"), **promoter.promote(str(cand["version"]), test).as_dict()})
    return {"decisions": decisions, "champion": next((d["candidate_version"] for d in reversed(decisions) if d["promoted"]),
                                                     decisions[-1]["champion_version_before"] if decisions else None)}
