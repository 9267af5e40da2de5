"""Airflow heals a training crash: kill -9 of the worker, the task's retry resumes from the checkpoint.

Slow (the whole chain through the real scheduler, Spark jobs included, plus Airflow's retry delay),
so `make test-all` runs it. The fast version of the same contract, through the task's own command, is
tests/integration/test_train.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import psutil
import pytest

from lakeforge.config import Partition
from lakeforge.lake import Lake
from lakeforge.train import checkpoint as ckpt
from lakeforge.train.summary import run_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG = "itest_train_retry"  # tests/pipelines/itest_train_retry.yaml


def workers_of(run_id: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "jobs/train.py" in " ".join(p.info["cmdline"] or []) and p.environ().get("AIRFLOW_CTX_DAG_RUN_ID") == run_id:
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_airflow_retry_resumes_training_after_kill_9(services, settings):
    from mlflow.tracking import MlflowClient

    from lakeforge.airflow_client import AirflowClient
    from lakeforge.produce import ProduceConfig, produce

    # two days of events up to now: yesterday's partition is complete, so the scheduled run proceeds
    produce(ProduceConfig(pipeline=DAG, records=700, days=2, seed=23), settings)
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
    af = AirflowClient(settings.require("airflow_url"), *services.admin_credentials())
    af.wait_for_dag(DAG)
    af.unpause(DAG)  # catchup is off: the scheduler starts the run of the latest interval, yesterday
    deadline = time.monotonic() + 120
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        run_id = next((r["dag_run_id"] for r in af.runs(DAG) if (r.get("data_interval_start") or "").startswith(yesterday)), None)
        time.sleep(2)
    assert run_id, f"no scheduled run of {DAG} for {yesterday}"

    store = ckpt.store_for(Lake(settings), DAG, Partition.parse(yesterday), run_key(DAG, run_id))
    if af.run(DAG, run_id)["state"] in ("failed", "success"):  # left by an earlier session in this state dir
        store.delete_all()
        af._req("POST", f"/dags/{DAG}/clearTaskInstances",
                json={"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True})
    deadline = time.monotonic() + 900
    while (store.latest() or {}).get("step", 0) < 5:
        assert af.run(DAG, run_id)["state"] not in ("failed", "success"), af.task_states(DAG, run_id)
        assert time.monotonic() < deadline, f"no checkpoint of {run_id} within 900 s: {af.task_states(DAG, run_id)}"
        time.sleep(1)
    victims = workers_of(run_id)
    assert victims, "the training worker of the run was not found"
    first_try = af._req("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/train_model")["try_number"]
    killed_at = store.latest()["step"]
    for p in victims:
        os.kill(p.pid, signal.SIGKILL)  # what the OOM killer does

    state = af.wait_run(DAG, run_id, timeout=1200, check=services.check_alive)
    assert state == "success", af.task_states(DAG, run_id)
    ti = af._req("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/train_model")
    assert ti["try_number"] == first_try + 1, ti  # exactly one retry healed it
    done = store.read_json(ckpt.DONE)
    assert done["resumed_from_step"] >= killed_at and done["metrics"]["steps_trained"] == 40
    run = MlflowClient(settings.mlflow_uri).get_run(done["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["lakeforge.attempts"] == "2"  # one MLflow run, 2 tries
    assert run.data.tags["airflow.run_id"] == run_id
    promoted = af._req("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/promote_model")
    assert promoted["state"] == "success"
    assert not workers_of(run_id)
    # lineage: the features table's snapshot the model trained on
    features = Lake(settings).read_commit("features", DAG, Partition.parse(yesterday))
    assert json.loads(run.data.tags["lakeforge.inputs"]) == [features.ref]
