"""One DAG per pipeline file in pipelines/*.yaml: land -> curate -> features -> train -> promote.

Thin by design: the work lives in plugins/lakeforge (library) and jobs/ (entry points). Nothing
heavy is imported here and no connection is touched at parse time.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, Param, chain
from airflow.timetables.interval import CronDataIntervalTimetable

from lakeforge.config import PARTITION_EXAMPLES, PARTITION_PATTERNS, REPO_ROOT, PipelineConfig, pipeline_files
from lakeforge.lake import layer_uri
from lakeforge.operators import (LakeSparkSubmitOperator, PartitionCompleteSensor, land_events, late_partitions,
                                 promote_model)
from lakeforge.train.launch import torchrun_command

log = logging.getLogger(__name__)

PARTITION = "{{ ti.xcom_pull(task_ids='land_events')['partition'] }}"

DOC = """
### {name}

{description}

**Flow:** `wait_for_partition` (deferrable sensor: while it waits it runs on the triggerer, holding no worker
slot; every Kafka topic-partition of the topic must hold a record stamped at or after the interval's end +
{lateness}s allowed lateness; times out after {timeout}s, not retried) ->
`land_events` (Kafka topic `{topic}` -> Iceberg table `{name}.raw`, one commit per partition carrying the
Kafka offsets; bad records to `{name}.quarantine` with a reason) -> `curate_partition` (Spark, pool `spark`: {steps};
drops counted per reason, dropped rows kept in `{name}.excluded`, duplicates of any other curated partition
dropped too, via `{name}.dedup_index`; publishes `{name}.curated`) ->
`build_features` (Spark, pool `spark`: labels, fast-tokenizer `input_ids`, train/validation/test split by near-duplicate
cluster; `{name}.features`) -> `train_model` (`torchrun jobs/train.py`, pool `gpu`: streams the files of the
features snapshot, fine-tunes,
logs to MLflow and registers `{model}`, plus a TF-IDF baseline as a second candidate) -> `promote_model` (gates
each candidate vs. the `champion` alias on the test split).

**Training retries resume:** `train_model` writes a checkpoint to `s3://<lake>/checkpoints/{name}/dt=…/<dag_id>/<run_id>/`
every few steps (model, optimizer, scheduler, RNG states, data position). A retry of the task (after a crash,
an OOM kill, a lost worker) continues from the last one and the same MLflow run, with the same result as an
uninterrupted run; a retry after success returns the recorded result. A new DAG run starts fresh.

**Partition:** scheduled runs use the data interval (`dt=YYYY-MM-DD`). Manual runs have no interval: set
the `partition` Param (e.g. yesterday's date; the form checks its format, and a partition on another grain
or in the future fails the first task without retries). Backfill: `airflow backfill create --dag-id {name}
--from-date 2026-11-01 --to-date 2026-11-07 [--dag-run-conf '{{"force_complete": true}}']`: the conf's Params
apply to every run of the backfill, but each run keeps its own interval (a `partition` in it is ignored).

**Quality gate:** {gate}. A failing partition is not published and `curate_partition` fails
without retries, naming the rule and the figures; only this run's downstream tasks stop (other partitions read
published partitions only). Every curate run writes a quality report (`reports/{name}/dt=…/run=…/quality.html`:
length histograms, drops per rule, duplicate clusters, dropped examples); its links are in the `{name}.curated`
asset event's metadata (`report_url` opens it) and travel to the MLflow run that trains on the partition.
One `curate_partition` runs at a time per pipeline, so a backfill never admits one duplicate twice.

**Reruns** replace a partition whole, in one Iceberg commit whose snapshot summary names the run, its row
counts and its inputs; readers read the snapshot of the commit they found, so a rerun never pulls files from
under them, and older snapshots stay readable (time travel) until the `lakeforge_maintenance` DAG expires
them. Two runs of the same partition at once: the later commit fails (`PublishConflictError`), and a second
landing fails at once naming the holder (a PostgreSQL advisory lock). `lakeforge lineage <model>@champion`
traces a model to its snapshots and Kafka offsets.

**Concurrency:** up to 4 runs at once, so a run whose wait is deferred (its data is not there yet) never
queues a manual run, a re-land or a backfill behind it. One landing per partition (a lock), one
`curate_partition` per pipeline, one `promote_model` per pipeline, pools `spark` and `gpu`.

**Late records** (reaching Kafka after their partition was landed) are never dropped: the landing that reads
them lists their partitions, and `reland_late` triggers a run of this DAG for each (`partition` set,
`force_complete` true), which re-lands it whole; its commit counts them as `late_rows`.

**Params:** `partition` (manual runs), `force_complete` (land without waiting for completeness),
`accept_retention_loss` (land even when Kafka retention already deleted records that may be the
partition's; without it that landing fails, not retried, naming the deleted offsets), `max_steps`
(training override). Landing counts, lag and volume per topic-partition are in the raw asset
event's metadata and in `$LAKEFORGE_HOME/metrics/ingest_{name}.prom` (Prometheus text format).
"""



def valid_pipelines() -> list[PipelineConfig]:
    """The pipelines that pass ``lakeforge pipeline check``. A refused file builds no DAG and is logged
    with every problem and its fix (the dag-processor's log; ``lakeforge pipeline check FILE`` prints the
    same, and the parse warning Airflow records for this file); the other pipelines' DAGs still load."""
    from lakeforge.scaffold import check_pipeline

    good = []
    for path in pipeline_files():
        problems = check_pipeline(path)
        if problems:
            message = f"pipeline file {path} refused, no DAG built for it: " + "; ".join(problems)
            log.error("%s", message)
            warnings.warn(message, UserWarning, stacklevel=1)  # Airflow keeps a file's parse warnings
            continue
        good.append(PipelineConfig.load(path))
    return good


for pipeline in valid_pipelines():
    raw = Asset(name=f"{pipeline.name}.raw", uri=layer_uri("raw", pipeline.name))
    curated = Asset(name=f"{pipeline.name}.curated", uri=layer_uri("curated", pipeline.name))
    features = Asset(name=f"{pipeline.name}.features", uri=layer_uri("features", pipeline.name))
    model = Asset(name=f"{pipeline.name}.model", uri=f"mlflow://models/{pipeline.model.registered_name}")

    with DAG(
        dag_id=pipeline.name,
        description=pipeline.description.strip()[:200],
        doc_md=DOC.format(name=pipeline.name, description=pipeline.description, topic=pipeline.topic,
                          lateness=pipeline.ingest.allowed_lateness_s, timeout=pipeline.ingest.completeness_timeout_s,
                          steps=", ".join(s.name for s in pipeline.curate), model=pipeline.model.registered_name,
                          gate=pipeline.quality_gate.model_dump()),
        # a data-interval timetable: each run covers [previous tick, tick), which is its partition
        # (Airflow 3's plain "@daily" is a zero-length trigger timetable)
        schedule=CronDataIntervalTimetable("0 0 * * *" if pipeline.partition == "daily" else "0 * * * *", timezone="UTC"),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        # Runs of different partitions go on side by side: a run whose wait is deferred (its data is not
        # there yet: the scheduled run that unpausing starts, a day still open) must not queue a manual
        # run or a re-land behind it. What must not overlap is serialized per task instead: one landing
        # per partition (a lock), one curate per pipeline (the dedup index), the pools, one promotion.
        max_active_runs=4,
        # every task: retried with exponential backoff, and killed when one try runs past 2 h (a hung
        # Spark job, a stalled broker); train_model sets its own 6 h
        default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                      "execution_timeout": timedelta(hours=2)},
        params={
            # checked by the trigger form before the run is created; the first task also refuses a future one
            "partition": Param(None, type=["null", "string"], pattern=PARTITION_PATTERNS[pipeline.partition],
                               title="Partition",
                               description=f"{PARTITION_EXAMPLES[pipeline.partition]}, not in the future: required "
                                           "on manual runs; scheduled runs and backfills use their data interval"),
            "force_complete": Param(False, type="boolean", title="Land without waiting",
                                    description="skip the completeness wait (late records are re-landed later)"),
            "accept_retention_loss": Param(False, type="boolean", title="Accept records lost to Kafka retention",
                                           description="land what remains when retention deleted records that may "
                                                       "be this partition's; the deleted offsets are recorded"),
            "max_steps": Param(None, type=["null", "integer"], minimum=1, title="Training steps override"),
        },
        tags=["lakeforge", pipeline.name],
    ) as dag:
        # deferrable: while the partition is incomplete the wait runs on the triggerer, holding no worker slot
        wait = PartitionCompleteSensor(
            task_id="wait_for_partition", pipeline_name=pipeline.name,
            poke_interval=pipeline.ingest.poke_interval_s, timeout=pipeline.ingest.completeness_timeout_s,
        )
        land = PythonOperator(
            task_id="land_events", python_callable=land_events, op_kwargs={"pipeline_name": pipeline.name},
            outlets=[raw],
        )
        # one triggered run per partition that received late records (none: the task is skipped)
        reland = TriggerDagRunOperator.partial(
            task_id="reland_late", trigger_dag_id=pipeline.name, wait_for_completion=False,
        ).expand(conf=late_partitions(land.output))
        wait >> land
        stages = {"land": land}
        if "curate" in pipeline.stages:
            stages["curate"] = LakeSparkSubmitOperator(
                task_id="curate_partition", application=str(REPO_ROOT / "jobs" / "curate.py"),
                application_args=["--pipeline", pipeline.name, "--partition", PARTITION, "--run-id", "{{ run_id }}"],
                name=f"curate-{pipeline.name}", conn_id="spark_default", outlets=[curated], pool="spark",
                layer="curated", pipeline_name=pipeline.name, partition=PARTITION,
                # the dedup index is the other curated partitions: one curate at a time per pipeline
                max_active_tis_per_dag=1,
            )
        if "features" in pipeline.stages:
            stages["features"] = LakeSparkSubmitOperator(
                task_id="build_features", application=str(REPO_ROOT / "jobs" / "features.py"),
                application_args=["--pipeline", pipeline.name, "--partition", PARTITION, "--run-id", "{{ run_id }}"],
                name=f"features-{pipeline.name}", conn_id="spark_default", outlets=[features], pool="spark",
                layer="features", pipeline_name=pipeline.name, partition=PARTITION,
            )
        if "train" in pipeline.stages:
            stages["train"] = BashOperator(
                task_id="train_model", pool="gpu", queue="gpu",  # queue: the GPU worker under CeleryExecutor
                bash_command=torchrun_command(pipeline.name, PARTITION),
                cwd=str(REPO_ROOT), execution_timeout=timedelta(hours=6),
            )
            stages["promote"] = PythonOperator(
                task_id="promote_model", python_callable=promote_model,
                max_active_tis_per_dag=1,  # two runs' promotions never compare against the champion at once
                op_kwargs={"pipeline_name": pipeline.name,
                           "train_summary": "{{ ti.xcom_pull(task_ids='train_model') }}"},
                outlets=[model],
            )
        chain(*stages.values())
    globals()[f"dag_{pipeline.name}"] = dag
