"""One DAG per pipeline file in pipelines/*.yaml: land -> curate -> features -> train -> promote.

Thin by design: the work lives in plugins/lakeforge (library) and jobs/ (entry points). Nothing
heavy is imported here and no connection is touched at parse time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset, Param
from airflow.timetables.interval import CronDataIntervalTimetable

from lakeforge.config import REPO_ROOT, all_pipelines
from lakeforge.operators import LakeSparkSubmitOperator, land_events, promote_model

PARTITION = "{{ ti.xcom_pull(task_ids='land_events')['partition'] }}"

DOC = """
### {name}

{description}

**Flow:** `land_events` (Kafka topic `{topic}` -> `s3://<lake>/raw/{name}/dt=…/`, Parquet + `_MANIFEST.json`,
bad records to `quarantine/`) -> `curate_partition` (Spark: {steps}) -> `build_features` (Spark: labels,
deterministic train/validation/test split) -> `train_model` (`torchrun jobs/train.py`, pool `gpu`, logs to
MLflow and registers `{model}`) -> `promote_model` (gate vs. the `champion` alias on the test split).

**Partition:** scheduled runs use the data interval (`dt=YYYY-MM-DD`). Manual runs have no interval: set
the `partition` Param (e.g. yesterday's date). Backfill: `airflow backfill create --dag-id {name}
--from-date 2026-11-01 --to-date 2026-11-07`.

**Reruns** replace a partition whole: readers only see what a `_MANIFEST.json` lists.
"""

for pipeline in all_pipelines():
    raw = Asset(name=f"{pipeline.name}.raw", uri=f"s3://lakeforge/raw/{pipeline.name}")
    curated = Asset(name=f"{pipeline.name}.curated", uri=f"s3://lakeforge/curated/{pipeline.name}")
    features = Asset(name=f"{pipeline.name}.features", uri=f"s3://lakeforge/features/{pipeline.name}")
    model = Asset(name=f"{pipeline.name}.model", uri=f"mlflow://models/{pipeline.model.registered_name}")

    with DAG(
        dag_id=pipeline.name,
        description=pipeline.description.strip()[:200],
        doc_md=DOC.format(name=pipeline.name, description=pipeline.description, topic=pipeline.topic,
                          steps=", ".join(s.name for s in pipeline.curate), model=pipeline.model.registered_name),
        # a data-interval timetable: each run covers [previous tick, tick), which is its partition
        # (Airflow 3's plain "@daily" is a zero-length trigger timetable)
        schedule=CronDataIntervalTimetable("0 0 * * *" if pipeline.partition == "daily" else "0 * * * *", timezone="UTC"),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
        params={
            "partition": Param(None, type=["null", "string"], title="Partition",
                               description="YYYY-MM-DD (required on manual runs; scheduled runs use the data interval)"),
            "max_steps": Param(None, type=["null", "integer"], minimum=1, title="Training steps override"),
        },
        tags=["lakeforge", pipeline.name],
    ) as dag:
        land = PythonOperator(
            task_id="land_events", python_callable=land_events, op_kwargs={"pipeline_name": pipeline.name},
            outlets=[raw],
        )
        curate = LakeSparkSubmitOperator(
            task_id="curate_partition", application=str(REPO_ROOT / "jobs" / "curate.py"),
            application_args=["--pipeline", pipeline.name, "--partition", PARTITION, "--run-id", "{{ run_id }}"],
            name=f"curate-{pipeline.name}", conn_id="spark_default", outlets=[curated],
        )
        feats = LakeSparkSubmitOperator(
            task_id="build_features", application=str(REPO_ROOT / "jobs" / "features.py"),
            application_args=["--pipeline", pipeline.name, "--partition", PARTITION, "--run-id", "{{ run_id }}"],
            name=f"features-{pipeline.name}", conn_id="spark_default", outlets=[features],
        )
        train = BashOperator(
            task_id="train_model", pool="gpu", queue="gpu",  # queue: the GPU worker under CeleryExecutor
            bash_command=(
                f"torchrun --standalone --nproc_per_node=1 {REPO_ROOT / 'jobs' / 'train.py'} "
                f"--pipeline {pipeline.name} --partition {PARTITION} "
                "{% if params.max_steps %}--max-steps {{ params.max_steps }}{% endif %}"
            ),
            cwd=str(REPO_ROOT), execution_timeout=timedelta(hours=6),
        )
        promote = PythonOperator(
            task_id="promote_model", python_callable=promote_model,
            op_kwargs={"pipeline_name": pipeline.name, "train_summary": "{{ ti.xcom_pull(task_ids='train_model') }}"},
            outlets=[model],
        )
        land >> curate >> feats >> train >> promote
    globals()[f"dag_{pipeline.name}"] = dag
