"""Airflow 3 on PostgreSQL with the LocalExecutor: api-server, scheduler, dag-processor, triggerer.

All four share one environment (:func:`airflow_env`): AIRFLOW_HOME under the state dir, the repo's
``dags/`` and ``plugins/``, the metadata DB URL, a JWT secret and Fernet key generated once into
secrets.json, SimpleAuthManager with login enabled (user ``admin``, generated password printed by
``lakeforge up``), and the lakeforge endpoints + lake-writer credentials that tasks read at run time.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lakeforge.config import REPO_ROOT
from lakeforge.errors import ServiceError
from lakeforge.services.base import ProcessService, State, http_ok, tail, write_atomic

ADMIN_USER = "admin"


def ensure_airflow_secrets(state: State) -> dict[str, str]:
    sec = state.secrets
    af = sec.get("airflow", {})
    if not af:
        from cryptography.fernet import Fernet

        af = {
            "jwt_secret": secrets.token_urlsafe(32),
            "fernet_key": Fernet.generate_key().decode(),
            "admin_password": secrets.token_urlsafe(12),
        }
        sec["airflow"] = af
        state.set_secrets(sec)
    return af


def write_passwords(path: Path, users: dict[str, str]) -> None:
    """Write SimpleAuthManager's passwords file atomically, and only when it changes.

    The api-server reads this file on every login, and every ``airflow_env`` call (each
    ``lakeforge airflow …``, each ``up``) used to truncate and rewrite it: a login that read it
    mid-way saw no users and answered 401 "Invalid credentials" for the right password.
    """
    text = json.dumps(users)
    if path.exists() and path.read_text() == text:
        return
    write_atomic(path, text, 0o600)


def airflow_env(state: State, db_uri: str, api_port: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment every Airflow process (and so every task) runs with."""
    af = ensure_airflow_secrets(state)
    home = state.home / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    write_passwords(passwords, {ADMIN_USER: af["admin_password"]})
    venv_bin = str(Path(sys.executable).parent)
    api = f"http://127.0.0.1:{api_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": af["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_uri,
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API_AUTH__JWT_SECRET": af["jwt_secret"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(state.logs / "airflow-tasks"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": os.environ.get("LAKEFORGE_SPARK_MASTER", "local[2]")}),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        **extra,
    }


def airflow_cli(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """Run ``airflow <args>`` with the given environment; raise with its output on failure."""
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ServiceError(f"`airflow {' '.join(args)}` failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


@dataclass
class AirflowService(ProcessService):
    """One Airflow process (``role`` is the airflow sub-command)."""

    role: str = "scheduler"
    api_port: int = 8080

    def __post_init__(self):
        self.start_timeout = 180.0
        airflow = str(Path(sys.executable).parent / "airflow")
        if self.role == "api-server":
            self.argv = [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
        else:
            self.argv = [airflow, self.role]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def listen_port(self) -> int | None:
        return self.api_port if self.role == "api-server" else None  # the others answer through the API

    def endpoint(self) -> str:
        return self.url if self.role == "api-server" else f"{self.role} (see {self.url}/api/v2/monitor/health)"

    def _health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/api/v2/monitor/health", timeout=3).json()

    def healthy(self) -> bool:
        if self.role == "api-server":
            return http_ok(f"{self.url}/api/v2/monitor/health")
        if not self.running():
            return False
        key = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}[self.role]
        try:
            return self._health().get(key, {}).get("status") == "healthy"
        except Exception:
            return False


#: The pools the DAGs use: name -> (slots, description). A task in a pool that does not exist is never
#: scheduled, so setup creates every one (``migrate``; the compose deployment's airflow-init does the same).
POOLS = {
    "gpu": (1, "Training slots: one GPU (or the CPU) at a time"),
    "spark": (2, "Spark applications at once (each a local[2] driver on one machine, or a cluster's share)"),
}


def migrate(state: State, env: dict[str, str]) -> None:
    """``airflow db migrate`` (idempotent) and the pools the DAGs use."""
    log_path = state.logs / "airflow-migrate.log"
    try:
        out = airflow_cli(env, "db", "migrate", timeout=600)
        for name, (slots, description) in POOLS.items():
            out += airflow_cli(env, "pools", "set", name, str(slots), description)
        log_path.write_text(out)
    except ServiceError as exc:
        log_path.write_text(str(exc))
        raise ServiceError(f"airflow db migrate failed; log {log_path}:\n{tail(log_path)}") from None
