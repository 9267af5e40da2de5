"""The completeness wait on the real scheduler and triggerer: a run of an incomplete partition defers its
`wait_for_partition` to the triggerer (no worker slot held), and resumes and lands once Kafka holds a
record past the partition's end + allowed lateness on every topic-partition; meanwhile another run that
waits for data that never comes does not hold it back.

The land-only pipeline `itest_defer` (tests/pipelines/itest_defer.yaml) has its own topic. Each session
uses two fresh days after what earlier sessions of a kept state dir sent, so the partition is incomplete
when the run starts.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from lakeforge.config import Partition, PipelineConfig
from lakeforge.ingest import topic_size
from lakeforge.lake import Lake
from lakeforge.produce import FaultRates, ProduceConfig, produce

pytestmark = pytest.mark.integration

DAG = "itest_defer"
EVENTS = 30  # per day sent
BASE = datetime(2026, 10, 1, tzinfo=timezone.utc)


def send(settings, day: datetime, seed: int) -> None:
    produce(ProduceConfig(pipeline=DAG, records=EVENTS, days=1, end=day + timedelta(days=1), seed=seed,
                          faults=FaultRates.none(), write_truth=False), settings)


@pytest.mark.slow  # (~90 s: a deferral, a triggerer poke, a resume) the backfill test runs the sensor's inline check
def test_an_incomplete_partition_waits_on_the_triggerer_and_lands_once_complete(services, settings):
    from lakeforge.airflow_client import AirflowClient

    k = -(-topic_size(settings, PipelineConfig.load(DAG).topic) // (2 * EVENTS))  # sessions (even cut short) before
    day = BASE + timedelta(days=2 * k)
    send(settings, day, seed=60 + k)  # the day's events: nothing past its end yet, so it is incomplete
    user, password = services.admin_credentials()
    af = AirflowClient(settings.airflow_url, user, password)
    af.wait_for_dag(DAG, check=services.check_alive)
    af.unpause(DAG)
    try:
        # a run of a day that will stay incomplete waits (deferred) the whole test, like the scheduled run
        # unpausing starts: it must not keep the run below from starting
        blocker = af.trigger(DAG, {"partition": f"{day + timedelta(days=1):%Y-%m-%d}"})["dag_run_id"]
        run = af.trigger(DAG, {"partition": f"{day:%Y-%m-%d}"})["dag_run_id"]
        deadline = time.monotonic() + 180
        while not {af.task_states(DAG, r).get("wait_for_partition") for r in (blocker, run)} == {"deferred"}:
            for r in (blocker, run):
                state = af.run(DAG, r)["state"]
                assert state not in ("success", "failed"), (r, state, af.task_states(DAG, r))
            assert time.monotonic() < deadline, \
                f"the waits never both deferred: {af.task_states(DAG, blocker)}, {af.task_states(DAG, run)}"
            services.check_alive()
            time.sleep(1)
        assert af.task_states(DAG, run).get("land_events") in (None, "none", "scheduled", "queued")  # still waiting

        send(settings, day + timedelta(days=1), seed=61 + k)  # records of the next day complete it (not that one)
        assert af.wait_run(DAG, run, timeout=300, check=services.check_alive) == "success"
        states = af.task_states(DAG, run)
        assert states["wait_for_partition"] == "success" and states["land_events"] == "success", states
        commit = Lake(settings).read_commit("raw", DAG, Partition.parse(f"{day:%Y-%m-%d}"))
        assert commit.rows == EVENTS and not commit.stats["forced"]  # it waited, then landed the whole day
        assert af.task_states(DAG, blocker)["wait_for_partition"] == "deferred"  # still waiting, on the triggerer
    finally:
        af.pause(DAG)
        for r in af.runs(DAG):
            if r["state"] not in ("success", "failed"):
                af.set_run_state(DAG, r["dag_run_id"], "failed")
