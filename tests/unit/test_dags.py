"""DAG integrity: every DAG file imports without touching a connection, and is wired as documented."""

from __future__ import annotations

import os

import pytest

from lakeforge.config import REPO_ROOT, PipelineConfig, Settings, all_pipelines


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    # no services: a DAG file that reached for a connection or secret at parse time would fail here
    for k in [k for k in os.environ if k.startswith("LAKEFORGE_S3_") or k.startswith("AIRFLOW_CONN_")]:
        os.environ.pop(k)
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


#: What a DAG file must never import at parse time: the dag-processor parses every file every few
#: minutes, and these take seconds (and gigabytes) to import.
HEAVY = ("torch", "pyspark", "transformers", "mlflow")

PARSE = """
import json, os, sys, time
from airflow.dag_processing.dagbag import DagBag
t0 = time.monotonic()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.monotonic() - t0, "dags": sorted(bag.dags),
                  "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
                  "warnings": [w for ws in bag.captured_warnings.values() for w in ws],
                  "heavy": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def test_parse_is_fast_and_imports_nothing_heavy(tmp_path):
    """Parse the DAG folder in a fresh interpreter, as the dag-processor does: no heavy library loaded."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_S3_", "AIRFLOW_CONN_"))}
    env.update(AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", PARSE, str(REPO_ROOT / "dags"), *HEAVY], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and set(result["dags"]) >= {p.name for p in all_pipelines()}
    assert result["heavy"] == [], f"DAG files import {result['heavy']} at parse time"
    assert result["seconds"] < 20, "DAG files must parse fast"


BAD_PIPELINES = {
    "bad_role": ("fields", [{"name": "id", "type": "string", "role": "id"},
                            {"name": "text", "type": "string", "role": "txt"}], "role"),
    "bad_labels": ("labels", None, "labels"),
    "bad_step": ("curate", [{"name": "strip_htm"}], "strip_html"),
}


def test_a_bad_pipeline_file_is_refused_and_the_others_still_load(tmp_path):
    """A YAML with an unknown field role, no label list, or a cleaning step that does not exist builds
    no DAG; the log names the file and the fix; every other pipeline's DAG loads."""
    import json
    import subprocess
    import sys

    import yaml

    base = yaml.safe_load((REPO_ROOT / "pipelines" / "movie_reviews.yaml").read_text())
    extra = tmp_path / "pipelines"
    extra.mkdir()
    for name, (key, value, _) in BAD_PIPELINES.items():
        spec = {**base, "name": name, "topic": f"{name}.events"}
        if value is None:
            spec.pop(key)
            spec["model"] = {k: v for k, v in spec["model"].items() if k != "labels"}
        else:
            spec[key] = value
        (extra / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    good = {**base, "name": "still_good", "topic": "still_good.events"}
    (extra / "still_good.yaml").write_text(yaml.safe_dump(good))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_S3_", "AIRFLOW_CONN_"))}
    env.update(AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW_HOME=str(tmp_path / "airflow"),
               LAKEFORGE_PIPELINES_PATH=str(extra))
    out = subprocess.run([sys.executable, "-c", PARSE, str(REPO_ROOT / "dags")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert {"movie_reviews", "bbc_news", "still_good"} <= set(result["dags"])
    assert not set(BAD_PIPELINES) & set(result["dags"])
    for name, (_, _, hint) in BAD_PIPELINES.items():  # the parse warnings Airflow records for the file
        refusal = next((w for w in result["warnings"] if f"{name}.yaml refused" in w), None)
        assert refusal is not None and hint in refusal, result["warnings"]


@pytest.mark.parametrize("pipeline", [p.name for p in all_pipelines()])
def test_one_dag_per_pipeline(dagbag, pipeline):
    dag = dagbag.dags.get(pipeline)
    assert dag is not None
    stage_tasks = {"land": ["land_events"], "curate": ["curate_partition"], "features": ["build_features"],
                   "train": ["train_model", "promote_model"]}
    main = [t for s in PipelineConfig.load(pipeline).stages for t in stage_tasks[s]]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "wait_for_partition" and [t for t in order if t in sum(stage_tasks.values(), [])] == main
    # the re-land of late partitions hangs off the landing, and blocks nothing downstream
    assert dag.get_task("late_partitions").upstream_task_ids == {"land_events"}
    assert dag.get_task("reland_late").upstream_task_ids == {"late_partitions"}
    assert dag.get_task("reland_late").downstream_task_ids == set()
    # each stage's outlet is its layer's Iceberg table (the catalog name read at parse time, no secret)
    catalog = Settings.configured_catalog_name()
    for task_id, layer in {"land_events": "raw", "curate_partition": "curated", "build_features": "features"}.items():
        if task_id in order:
            (asset,) = dag.get_task(task_id).outlets
            assert (asset.name, asset.uri) == (f"{pipeline}.{layer}", f"iceberg://{catalog}/{pipeline}/{layer}")
    sensor = dag.get_task("wait_for_partition")
    from lakeforge.operators import PartitionCompleteSensor

    assert isinstance(sensor, PartitionCompleteSensor) and sensor.timeout > 0  # deferrable: waits on the triggerer
    if "train" in PipelineConfig.load(pipeline).stages:
        train = dag.get_task("train_model")
        assert train.pool == "gpu"
        # torchrun replaces the shell and dies with the task; a crashed worker fails the try (Airflow retries)
        assert "exec $PDEATH torchrun" in train.bash_command and "--max-restarts=0" in train.bash_command
        assert "setpriv --pdeathsig TERM" in train.bash_command and "jobs/train.py" in train.bash_command
        assert "resume" in dag.doc_md.lower()
    assert {"partition", "force_complete"} <= set(dag.params) and dag.doc_md and "Backfill" in dag.doc_md
    # a run waiting for its data never queues the others; what must not overlap is serialized per task
    assert dag.max_active_runs > 1 and not dag.catchup
    serialized = {"curate_partition", "promote_model"} & set(order)
    assert all(dag.get_task(t).max_active_tis_per_dag == 1 for t in serialized)
    for t in dag.tasks:
        assert t.retries >= 1, f"{t.task_id} must retry transient failures"
        assert t.execution_timeout is not None, f"{t.task_id} must not run (hang) forever"
    for task_id in ("curate_partition", "build_features"):
        if task_id in order:
            assert dag.get_task(task_id).pool == "spark"


@pytest.mark.parametrize("value,ok", [("2026-11-23", True), ("dt=2026-11-23", True), (None, True),
                                      ("2026-11-23T05", False), ("23.11.2026", False), ("yesterday", False)])
def test_the_trigger_form_refuses_a_partition_off_the_grid_before_a_run_exists(dagbag, value, ok):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["movie_reviews"].params)  # what a trigger does with the form's values
    if ok:
        params["partition"] = value
        assert params.validate()["partition"] == value
    else:
        with pytest.raises(ParamValidationError, match="partition"):
            params["partition"] = value


def test_scheduled_runs_get_a_real_data_interval(dagbag):
    from datetime import datetime, timedelta, timezone

    dag = dagbag.dags["movie_reviews"]
    after = datetime(2026, 11, 24, 0, 0, tzinfo=timezone.utc)
    interval = dag.timetable.infer_manual_data_interval(run_after=after)
    assert interval.end - interval.start == timedelta(days=1)
