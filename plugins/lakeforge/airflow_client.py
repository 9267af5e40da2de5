"""A small client of Airflow 3's REST API (``/api/v2``) used by the demo and the end-to-end tests.

Authenticates with SimpleAuthManager's ``POST /auth/token`` and keeps the bearer token.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx

from lakeforge.errors import LakeforgeError

TERMINAL = {"success", "failed"}


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0):
        self.base = base_url.rstrip("/")
        self.http = httpx.Client(timeout=timeout)
        resp = self.http.post(f"{self.base}/auth/token", json={"username": username, "password": password})
        if resp.status_code not in (200, 201):
            raise LakeforgeError(f"Airflow login as {username!r} failed at {self.base}: {resp.status_code} {resp.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _req(self, method: str, path: str, **kw) -> Any:
        resp = self.http.request(method, f"{self.base}/api/v2{path}", **kw)
        if resp.status_code >= 400:
            raise LakeforgeError(f"Airflow {method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180, check: Callable[[], None] | None = None) -> dict:
        """Wait until the dag-processor has parsed ``dag_id``; raise with its import errors if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = self.http.get(f"{self.base}/api/v2/dags/{dag_id}")
            if resp.status_code == 200:
                return resp.json()
            if check:
                check()
            time.sleep(2)
        errors = self._req("GET", "/importErrors").get("import_errors", [])
        raise LakeforgeError(f"DAG {dag_id} was not parsed within {timeout:.0f}s; import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        self._req("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self._req("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def runs(self, dag_id: str) -> list[dict]:
        return self._req("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 50})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._req("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self._req("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").get("task_instances", [])
        return {t["task_id"]: t["state"] for t in tis}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        resp = self.http.get(f"{self.base}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                             params={"full_content": True}, headers={"Accept": "text/plain"})
        return resp.text

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 1800, progress: Callable[[dict], None] | None = None,
                 check: Callable[[], None] | None = None) -> str:
        """Follow a run to a terminal state; ``progress`` gets task states when they change."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            states = self.task_states(dag_id, run_id)
            if progress and states != last:
                progress(states)
                last = states
            if state in TERMINAL:
                return state
            if check:
                check()
            time.sleep(3)
        raise LakeforgeError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f}s; task states: {last}")

    def pause(self, dag_id: str) -> None:
        self._req("PATCH", f"/dags/{dag_id}", json={"is_paused": True})

    def is_paused(self, dag_id: str) -> bool:
        return bool(self._req("GET", f"/dags/{dag_id}")["is_paused"])

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        """Mark a run ``failed``/``success``/``queued`` (what the UI's "Mark as" does)."""
        self._req("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": state})

    def backfills(self, dag_id: str) -> list[dict]:
        return self._req("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})["backfills"]

    def cancel_backfill(self, backfill_id: int) -> dict:
        return self._req("PUT", f"/backfills/{backfill_id}/cancel")

    def wait_backfill(self, dag_id: str, backfill_id: int, timeout: float = 900,
                      check: Callable[[], None] | None = None) -> dict:
        """Wait until the scheduler has finished every run of a backfill (``completed_at`` is set)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            backfill = self._req("GET", f"/backfills/{backfill_id}")
            if backfill.get("completed_at"):
                return backfill
            if check:
                check()
            time.sleep(3)
        raise LakeforgeError(f"backfill {backfill_id} of {dag_id} did not complete within {timeout:.0f}s; "
                             f"runs: {[(r['dag_run_id'], r['state']) for r in self.runs(dag_id)]}")
