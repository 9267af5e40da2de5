"""`lakeforge demo` / `make demo`: from nothing to a served prediction, all through Airflow.

Starts the embedded services, replays reviews into Kafka, triggers the pipeline's DAG through the
Airflow REST API for yesterday's partition, follows it to success (stopping with the service name
and log tail if a service dies), waits for the model server to hot-load the new champion, and asks
it for a prediction.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import psutil

from lakeforge.config import DEFAULT_PIPELINE, PipelineConfig, Settings
from lakeforge.errors import LakeforgeError

#: Texts to ask a model about when its pipeline lists no ``examples`` (movie reviews: the default demo).
EXAMPLE_TEXTS = [
    "A moving, beautifully acted film. I loved every minute of it.",
    "Dull, predictable and far too long. I want my two hours back.",
]


class RssSampler:
    """Samples the summed RSS of this process tree plus the state dir's services, keeps the peak."""

    def __init__(self, pids_fn, interval: float = 1.0):
        self.pids_fn, self.interval = pids_fn, interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            total = 0
            seen = set()
            for pid in self.pids_fn():
                try:
                    root = psutil.Process(pid)
                    for p in [root] + root.children(recursive=True):
                        if p.pid not in seen:
                            seen.add(p.pid)
                            total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class DemoResult:
    time_to_first_prediction_s: float
    peak_rss_mb: float
    services: list[str]
    prediction: dict
    dag_id: str
    run_id: str
    partition: str
    urls: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # the texts the prediction answers


def wait_for_champion(serve_url: str, version: str | int | None, pipeline: str, timeout: float = 300,
                      check=None) -> dict:
    """Wait until the model server serves ``version`` (None: any version) of ``pipeline``'s model.

    Exact, not "at least": the gate may crown several candidates in turn (the baseline, then the
    fine-tune registered before it), so the champion's version number can go down.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{serve_url}/v1/models/{pipeline}", timeout=5)
            if resp.status_code == 200:
                info = resp.json()
                if version is None or str(info.get("version")) == str(version):
                    return info
        except httpx.HTTPError:
            pass
        if check:
            check()
        time.sleep(2)
    raise LakeforgeError(f"the model server at {serve_url} did not load champion version {version} within {timeout:.0f}s")


def run_demo(pipeline_name: str = DEFAULT_PIPELINE, records: int = 6000, days: int = 3, max_steps: int | None = None,
             say=print, home=None) -> DemoResult:
    from lakeforge.airflow_client import AirflowClient
    from lakeforge.services.supervisor import Supervisor

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    sup = Supervisor(home)
    pipeline = PipelineConfig.load(pipeline_name)
    services = sup.service_names()

    def pids():
        return [p for p in (sup.service(n).pid() for n in services) if p] + [psutil.Process().pid]

    with RssSampler(pids) as rss:
        say("[1/5] starting services")
        sup.up(progress=say)
        timings["services_up_s"] = round(time.monotonic() - t0, 1)
        settings = Settings.load(home=sup.state.home)

        say(f"[2/5] producing {records} events over the last {days} days into {pipeline.topic}")
        summary = _produce_once(settings, pipeline, records, days)
        say(f"      {summary}")
        timings["produced_s"] = round(time.monotonic() - t0, 1)

        partition = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
        user, password = sup.admin_credentials()
        af = AirflowClient(settings.require("airflow_url"), user, password)
        dag_id = pipeline.name
        say(f"[3/5] triggering DAG {dag_id} for partition dt={partition} through the Airflow REST API")
        af.wait_for_dag(dag_id, check=sup.check_alive)
        run_id = _start_run(af, dag_id, partition, max_steps, say)

        def show(states):
            say("      " + "  ".join(f"{k}={v or 'none'}" for k, v in states.items()))

        state = af.wait_run(dag_id, run_id, progress=show, check=sup.check_alive)
        timings["dag_run_s"] = round(time.monotonic() - t0, 1)
        if state != "success":
            failed = [t for t, s in af.task_states(dag_id, run_id).items() if s == "failed"]
            logs = "\n".join(af.task_log(dag_id, run_id, t)[-3000:] for t in failed[:1])
            raise LakeforgeError(f"DAG run {run_id} ended {state}; failed tasks {failed}\n{logs}")

        from lakeforge.registry import champion_version, mlflow_client

        champion = champion_version(mlflow_client(settings.require("mlflow_uri")), pipeline.model.registered_name)
        say(f"[4/5] waiting for the model server to load the champion (version {champion})")
        serve_url = settings.require("serve_url")
        info = wait_for_champion(serve_url, champion, pipeline.name, check=sup.check_alive)
        say(f"      serving {info.get('name')} version {info.get('version')}")

        say("[5/5] asking for a prediction")
        predict_url = f"{serve_url}/v1/models/{pipeline.name}/predict"
        resp = httpx.post(predict_url, json={"texts": pipeline.examples or EXAMPLE_TEXTS}, timeout=60)
        resp.raise_for_status()
        prediction = resp.json()
        ttfp = time.monotonic() - t0
    return DemoResult(
        time_to_first_prediction_s=round(ttfp, 1), peak_rss_mb=round(rss.peak_mb, 1), services=services,
        prediction=prediction, dag_id=dag_id, run_id=run_id, partition=f"dt={partition}",
        urls={"airflow": settings.airflow_url, "mlflow": settings.mlflow_uri, "serve": serve_url,
              "predict": predict_url}, timings=timings, examples=pipeline.examples or EXAMPLE_TEXTS,
    )


def _start_run(af, dag_id: str, partition: str, max_steps: int | None, say) -> str:
    """Unpause the DAG. With catchup off, the scheduler then starts the run for the latest complete
    interval (yesterday): follow it. If it has not appeared within a few seconds (or training steps
    are overridden), trigger a manual run that names its partition through the `partition` Param."""
    af.unpause(dag_id)
    if not max_steps:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for run in af.runs(dag_id):
                if (run.get("data_interval_start") or "").startswith(partition) and run.get("run_type") == "scheduled":
                    say(f"      following the scheduled run {run['dag_run_id']} (unpaused through the REST API)")
                    return run["dag_run_id"]
            time.sleep(2)
    conf: dict = {"partition": partition}
    if max_steps:
        conf["max_steps"] = max_steps
    run = af.trigger(dag_id, conf)
    say(f"      triggered manual run {run['dag_run_id']} with conf {conf}")
    return run["dag_run_id"]


def _produce_once(settings, pipeline, records, days) -> dict:
    """Produce unless the topic already holds events (a rerun of the demo reuses them)."""
    from lakeforge.ingest import topic_size
    from lakeforge.produce import ProduceConfig, produce

    existing = topic_size(settings, pipeline.topic)
    if existing:
        return {"topic": pipeline.topic, "records": 0, "note": f"topic already holds {existing} events; reusing them"}
    return produce(ProduceConfig(pipeline=pipeline.name, records=records, days=days), settings)


def print_result(res: DemoResult, sup, say=print) -> None:
    user, password = sup.admin_credentials()
    texts = json.dumps({"texts": (res.examples or EXAMPLE_TEXTS)[:1]})
    say("")
    say("lakeforge demo: done")
    say(f"  Airflow UI   {res.urls['airflow']}   (login {user} / {password})  DAG {res.dag_id}, run {res.run_id}")
    say(f"  MLflow UI    {res.urls['mlflow']}")
    say(f"  Model server {res.urls['serve']}")
    predict = res.urls.get("predict", f"{res.urls['serve']}/v1/models/{res.dag_id}/predict")
    say(f"  Try:  curl -s -X POST {predict} -H 'Content-Type: application/json' -d '{texts}'")
    say(f"  Answer: {json.dumps(res.prediction)}")
    say(f"  Time from start to first prediction: {res.time_to_first_prediction_s}s (peak RSS {res.peak_rss_mb} MB)")
    say("  Stop everything with `lakeforge down` (or `make down`).")
