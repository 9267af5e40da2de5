"""`airflow backfill create` over 7 historical days, executed by the real scheduler of the test session.

The land-only pipeline `itest_backfill` (tests/pipelines/itest_backfill.yaml, on the pipeline path
under pytest) gets 7 days of events with faults, plus a clean day after them so all 7 are complete.
The backfill's runs go through the whole landing path: the completeness sensor, `land_events` with
the PostgreSQL lock, Parquet in S3 committed to the raw and quarantine Iceberg tables (up to 7 runs
committing different partitions of the same tables at once). The 7 published partitions must hold
exactly the producer's ground truth: every landed id once, every quarantined record counted, in
the raw table and in the quarantine table. The backfill's conf (`accept_retention_loss`, and a `partition`)
applies its Params to every run without replacing any run's own day.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from lakeforge.config import Partition, PipelineConfig
from lakeforge.ingest import topic_size
from lakeforge.lake import Lake
from lakeforge.produce import FaultRates, ProduceConfig, iter_events, produce
from lakeforge.stage.run import safe_run_id

pytestmark = pytest.mark.integration

DAG = "itest_backfill"
END = datetime(2026, 11, 20, tzinfo=timezone.utc)
DAYS = [(END - timedelta(days=d)).strftime("%Y-%m-%d") for d in range(7, 0, -1)]  # 2026-11-13 .. 2026-11-19
RECORDS, AFTER = 1400, 40  # events over the 7 days, and on the day after them (so all 7 are complete)
LATE = 12  # events of the first day sent after the backfill (test_late_records_…)
FAULTS = FaultRates(html=0.03, duplicate=0.03, near_duplicate=0.03, pii=0.03, empty=0.02, malformed_json=0.02,
                    invalid_utf8=0.02, missing_field=0.02, wrong_type=0.02, oversize=0.01)


@pytest.fixture(scope="module")
def truth(services, settings, tmp_path_factory):
    """The 7 days' ground truth. Produced once per state dir: a kept test session reuses the topic
    (the events are a pure function of the seed, so the truth is recomputed without sending)."""
    pipeline = PipelineConfig.load(DAG)
    days = ProduceConfig(pipeline=DAG, records=RECORDS, days=7, end=END, seed=41, faults=FAULTS,
                         truth_path=tmp_path_factory.mktemp("backfill") / "truth.jsonl")
    after = ProduceConfig(pipeline=DAG, records=AFTER, days=1, end=END + timedelta(days=1), seed=42,
                          faults=FaultRates.none(), write_truth=False)
    if topic_size(settings, pipeline.topic) == 0:
        produce(days, settings)
        produce(after, settings)
    # a kept session's topic also holds the late events that earlier runs of the last test sent
    sent = late_batches(topic_size(settings, pipeline.topic))
    return [ev.truth for ev in iter_events(days, pipeline)] + [t for k in range(sent) for t in late_events(k)]


def late_batches(size: int) -> int:
    """How many batches of late events the topic holds."""
    k, rest = divmod(size - RECORDS - AFTER, LATE)
    assert k >= 0 and rest == 0, f"the topic holds {size} events: foreign ones"
    return k


def late_config(k: int) -> ProduceConfig:
    """The ``k``-th batch of events of the first day sent after it was landed."""
    first = Partition.parse(DAYS[0])
    return ProduceConfig(pipeline=DAG, records=LATE, days=1, end=first.end, seed=43 + k, faults=FaultRates.none(),
                         write_truth=False)


def late_events(k: int) -> list[dict]:
    return [ev.truth for ev in iter_events(late_config(k), PipelineConfig.load(DAG))]


@pytest.fixture(scope="module")
def airflow(services, settings):
    from lakeforge.airflow_client import AirflowClient

    user, password = services.admin_credentials()
    af = AirflowClient(settings.airflow_url, user, password)
    af.wait_for_dag(DAG, check=services.check_alive)
    yield af
    # leave nothing queued behind: with catchup off, unpausing started a scheduled run for the latest
    # interval, whose sensor would wait for data that never comes. Paused through the CLI wrapper, which
    # prints the state after the change (Airflow's own command prints the one before it)
    out = subprocess.run([sys.executable, "-m", "lakeforge.cli", "airflow", "dags", "pause", DAG],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"{DAG}: paused" in out.stdout, (out.stdout, out.stderr[-2000:])
    assert af.is_paused(DAG)
    for r in af.runs(DAG):
        if r["run_type"] != "backfill" and r["state"] not in ("success", "failed"):
            af.set_run_state(DAG, r["dag_run_id"], "failed")


def test_backfill_of_7_days_publishes_exactly_the_ground_truth(services, settings, truth, airflow):
    airflow.unpause(DAG)
    for b in airflow.backfills(DAG):  # one left running by an interrupted earlier session would block ours
        if not b.get("completed_at"):
            airflow.cancel_backfill(b["id"])
    before = {b["id"] for b in airflow.backfills(DAG)}
    # the conf's Params apply to every run (accept_retention_loss: nothing is lost here, but each commit
    # records that the run accepted it), and a partition in it must not replace each run's own day
    conf = json.dumps({"partition": DAYS[0], "accept_retention_loss": True})
    cmd = [sys.executable, "-m", "lakeforge.cli", "airflow", "backfill", "create", "--dag-id", DAG,
           "--from-date", DAYS[0], "--to-date", DAYS[-1], "--max-active-runs", "7", "--reprocess-behavior", "completed",
           "--dag-run-conf", conf]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (backfill,) = [b for b in airflow.backfills(DAG) if b["id"] not in before]
    assert (backfill["from_date"][:10], backfill["to_date"][:10]) == (DAYS[0], DAYS[-1])
    airflow.wait_backfill(DAG, backfill["id"], timeout=900, check=services.check_alive)

    runs = {r["logical_date"][:10]: r for r in airflow.runs(DAG) if r["run_type"] == "backfill"}
    assert sorted(runs) == DAYS
    failed = {d: r["state"] for d, r in runs.items() if r["state"] != "success"}
    assert not failed, failed

    lake = Lake(settings)
    landed: list[str] = []
    quarantined: Counter[str] = Counter()
    quarantine_rows: Counter[str] = Counter()
    for day in DAYS:
        m = lake.read_commit("raw", DAG, Partition.parse(day))
        assert m.run_id.startswith("backfill__"), m.run_id  # written by the backfill's run, not by hand
        assert m.run_id == safe_run_id(runs[day]["dag_run_id"])  # each run landed its own day
        assert m.stats["accept_retention_loss"] is True and not m.stats["forced"]  # the conf's Param took effect
        ids = lake.read_table(m, columns=["id"]).column("id").to_pylist()
        want = sorted(t["id"] for t in truth if t["partition"] == f"dt={day}" and t["outcome"] == "landed")
        assert sorted(ids) == want, day
        landed += ids
        quarantined.update(m.quarantined)
        q = lake.read_commit("quarantine", DAG, Partition.parse(day))
        assert (q.run_id, q.snapshot_id) == (m.run_id, m.stats["quarantine_snapshot_id"])
        quarantine_rows.update(lake.read_table(q, columns=["reason"]).column("reason").to_pylist())
    # the union of the 7 partitions is the ground truth: each landed record exactly once
    assert len(landed) == len(set(landed))
    assert sorted(landed) == sorted(t["id"] for t in truth if t["outcome"] == "landed")
    assert quarantined == Counter(t["fault"] for t in truth if t["outcome"] == "quarantined")
    assert quarantine_rows == quarantined  # the rows are in <pipeline>.quarantine, with their reasons
    assert sum(quarantined.values()) > 0


def test_backfill_asset_events_carry_the_landing_figures(services, settings, airflow):
    """Each landing's counts reach Airflow as metadata of the raw asset event."""
    events = airflow._req("GET", "/assets/events", params={"limit": 100, "order_by": "-timestamp"})["asset_events"]
    raw = [e for e in events if e.get("source_dag_id") == DAG]
    assert raw, "no asset events from the backfill"
    extra = raw[0]["extra"]
    assert extra["partition"].startswith("dt=2026-11-1") and extra["rows"] > 0
    assert set(extra["topic_partitions"]) == {"0", "1", "2"}
    assert "quarantined" in extra and "late_partitions" in extra


def test_late_records_are_relanded_by_a_triggered_run(services, settings, truth, airflow):
    """Events of the first day sent after the backfill: the next landing reports them, its `reland_late`
    task triggers a run for that day, and the re-landed partition holds them exactly once."""
    lake = Lake(settings)
    first = Partition.parse(DAYS[0])
    before = lake.read_commit("raw", DAG, first)
    k = late_batches(topic_size(settings, PipelineConfig.load(DAG).topic))
    late = late_events(k)
    assert {t["partition"] for t in late} == {f"dt={DAYS[0]}"}
    produce(late_config(k), settings)
    airflow.unpause(DAG)
    # the scheduled run that unpausing started (or any left by an interrupted session) holds the DAG's
    # single active-run slot: end it
    for r in airflow.runs(DAG):
        if r["run_type"] != "backfill" and r["state"] not in ("success", "failed"):
            airflow.set_run_state(DAG, r["dag_run_id"], "failed")
    run = airflow.trigger(DAG, {"partition": DAYS[-1], "force_complete": True})
    assert airflow.wait_run(DAG, run["dag_run_id"], timeout=300, check=services.check_alive) == "success"
    states = airflow.task_states(DAG, run["dag_run_id"])
    assert states["reland_late"] == "success", states

    def relanded():  # runs that reland_late triggered after ours (not those of an earlier session)
        return [r for r in airflow.runs(DAG) if r["run_type"] == "operator_triggered"
                and (r.get("conf") or {}).get("partition") == f"dt={DAYS[0]}" and r["queued_at"] > run["queued_at"]]

    deadline = time.monotonic() + 60
    while not relanded() and time.monotonic() < deadline:
        time.sleep(2)
    (child,) = relanded()[:1] or [None]
    assert child is not None, "reland_late triggered no run for the late partition"
    assert airflow.wait_run(DAG, child["dag_run_id"], timeout=300, check=services.check_alive) == "success"
    after = lake.read_commit("raw", DAG, first)
    ids = lake.read_table(after, columns=["id"]).column("id").to_pylist()
    want = {t["id"] for t in truth + late if t["partition"] == f"dt={DAYS[0]}" and t["outcome"] == "landed"}
    assert set(ids) == want and len(ids) == len(set(ids))
    assert after.stats["late_rows"] == LATE
    assert after.run_id != before.run_id and after.stats["forced"]
    # the re-landing is a new commit; the partition as it was before stays readable at its snapshot
    assert after.snapshot_id != before.snapshot_id
    old_ids = lake.read_table(before, columns=["id"]).column("id").to_pylist()
    assert len(old_ids) == before.rows and set(old_ids) < set(ids) and len(ids) == len(old_ids) + LATE
