"""Lake maintenance, daily: for every pipeline, tag each partition's latest commit, expire old Iceberg
snapshots and remove files no snapshot references (``jobs/maintain.py``). Thin: the work is in
plugins/lakeforge/maintenance.py."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from lakeforge.config import REPO_ROOT, pipeline_files
from lakeforge.operators import LakeSparkSubmitOperator

DOC = """
### Lake maintenance

Publishing never deletes files: a rerun's commit replaces a partition and the replaced files stay
readable at older snapshots (a reader mid-way, time travel, the lineage MLflow records). This DAG is
where space comes back, once a day, per pipeline (`spark-submit jobs/maintain.py --pipeline <name>`),
for each of its Iceberg tables (raw, quarantine, curated, excluded, dedup_index, features):

1. tag the latest commit of every partition (`lakeforge-partition-<path>`), so its record (rows,
   Kafka offsets, input snapshots) outlives the snapshots around it;
2. `expire_snapshots` older than 7 days, keeping the last 5 and every tagged snapshot — including
   `lakeforge-model-<name>-v<version>`, which training puts on the features, curated and raw
   snapshots each registered model version trained on;
3. `remove_orphan_files` older than 3 days: files of landings or Spark jobs that crashed before
   their commit.

The task's last log line is a JSON report per table (snapshots before/after, data files deleted,
orphans removed). Run it by hand with a trigger; it is idempotent.
"""

with DAG(
    dag_id="lakeforge_maintenance",
    description="Iceberg snapshot expiry and orphan-file removal for every pipeline's tables",
    doc_md=DOC,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": True,
                  "execution_timeout": timedelta(hours=2)},
    tags=["lakeforge", "maintenance"],
) as dag:
    for path in pipeline_files():
        LakeSparkSubmitOperator(
            task_id=f"maintain_{path.stem}", application=str(REPO_ROOT / "jobs" / "maintain.py"),
            application_args=["--pipeline", str(path)], name=f"maintain-{path.stem}", conn_id="spark_default",
        )
