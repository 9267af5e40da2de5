"""The supervisor behind ``lakeforge up | down | status | logs``.

Starts the embedded default in dependency order, health-checks each service, and records the
endpoints (``endpoints.json``) and generated credentials (``secrets.json``, mode 600) in the state
dir so every other command finds them. A service whose endpoint the user set in the environment
(``LAKEFORGE_KAFKA_BOOTSTRAP``, ``LAKEFORGE_S3_ENDPOINT``, ``LAKEFORGE_PG_URI``,
``LAKEFORGE_MLFLOW_URI``) is not started: lakeforge uses the user's server instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lakeforge.config import Settings, default_home
from lakeforge.errors import PortTakenError, ServiceError
from lakeforge.services.base import LoopbackHttp, ProcessService, State, http_ok, port_open, tail

log = logging.getLogger(__name__)

# preferred ports (the usual ones); any that is taken is replaced by a free one
PREFERRED_PORTS = {
    "kafka": 9092, "kafka-controller": 9093,
    "s3": 8333, "s3-master": 9333, "s3-volume": 8081, "s3-filer": 8888,
    "s3-grpc": 18333, "s3-master-grpc": 19333, "s3-volume-grpc": 18081, "s3-filer-grpc": 18888,
    "mlflow": 5000, "airflow": 8080, "model-server": 8000, "postgres": 5432,
}


@dataclass
class ModelServerService(LoopbackHttp, ProcessService):
    """``lakeforge serve``: answers /v1/models/<pipeline>/predict with every pipeline's MLflow ``champion``
    (``/v1/predict``: the default pipeline, ``LAKEFORGE_SERVE_MODEL``, or the only one)."""

    port: int = 8000
    model_name: str = ""
    tracking_uri: str = ""

    def __post_init__(self):
        self.start_timeout = 90.0
        self.argv = [sys.executable, "-m", "lakeforge.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                     *(["--model", self.model_name] if self.model_name else [])]
        self.env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/healthz")


class Supervisor:
    """Builds, starts and stops the embedded services of one state dir."""

    def __init__(self, home: Path | None = None):
        self.state = State(home or default_home())
        self.external = {
            "kafka": os.environ.get("LAKEFORGE_KAFKA_BOOTSTRAP"),
            "s3": os.environ.get("LAKEFORGE_S3_ENDPOINT"),
            "postgres": os.environ.get("LAKEFORGE_PG_URI"),
            "mlflow": os.environ.get("LAKEFORGE_MLFLOW_URI"),
        }

    # -- building the services ------------------------------------------------------------------
    def _port(self, name: str, svc_names: tuple[str, ...] = ()) -> int:
        owned = lambda p: any(self._owns(n) for n in svc_names)  # noqa: E731
        return self.state.port(name, PREFERRED_PORTS[name], owned=owned)

    def _owns(self, name: str) -> bool:
        pid_file = self.state.run / f"{name}.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text()), 0)
            return True
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True

    def postgres(self):
        from lakeforge.services.postgres import PostgresService, catalog_password

        def ours(port: int) -> bool:  # the postmaster of this state dir listens there
            return PostgresService(name="postgres", state=self.state).postmaster_port() == port

        port = self.state.port("postgres", PREFERRED_PORTS["postgres"], owned=ours)
        return PostgresService(name="postgres", state=self.state, port=port,
                               catalog_password=catalog_password(self.state))

    def s3(self):
        from lakeforge.services.s3 import SeaweedS3Service

        return SeaweedS3Service(
            name="s3", state=self.state, port=self._port("s3", ("s3",)),
            master_port=self._port("s3-master", ("s3",)), volume_port=self._port("s3-volume", ("s3",)),
            filer_port=self._port("s3-filer", ("s3",)), bucket=Settings.load(home=self.state.home).s3_bucket,
            grpc_ports={role: self._port(f"s3-{role}-grpc" if role != "s3" else "s3-grpc", ("s3",))
                        for role in ("master", "volume", "filer", "s3")},
        )

    def kafka(self):
        from lakeforge.services.kafka import KafkaService

        return KafkaService(name="kafka", state=self.state, port=self._port("kafka", ("kafka",)),
                            controller_port=self._port("kafka-controller", ("kafka",)))

    def _pg_uri(self, database: str) -> str:
        if self.external["postgres"]:
            base = self.external["postgres"].rstrip("/")
            # postgresql://user:pw@host:port[/db][?query] -> swap the database
            head, _, query = base.partition("?")
            scheme, _, rest = head.partition("://")
            hostpart = rest.split("/", 1)[0]
            uri = f"postgresql+psycopg2://{hostpart}/{database}" + (f"?{query}" if query else "")
            return uri
        try:
            return self.postgres().sqlalchemy_uri(database)
        except ServiceError:
            # postgres is down: fine for `down`/`status`, which build the services without starting
            # them; `up` starts postgres before anything that connects to it
            return f"postgresql+psycopg2://postgres:@/{database}?host={self.postgres().pgdata}"

    def mlflow(self):
        from lakeforge.services.mlflow_server import MlflowService
        from lakeforge.services.s3 import ensure_keys

        if self.external["s3"]:
            key_id = os.environ.get("LAKEFORGE_MLFLOW_S3_ACCESS_KEY_ID") or os.environ.get("LAKEFORGE_S3_ACCESS_KEY_ID", "")
            secret = os.environ.get("LAKEFORGE_MLFLOW_S3_SECRET_ACCESS_KEY") or os.environ.get("LAKEFORGE_S3_SECRET_ACCESS_KEY", "")
        else:
            keys = ensure_keys(self.state)["mlflow"]
            key_id, secret = keys["access_key_id"], keys["secret_access_key"]
        return MlflowService(
            name="mlflow", state=self.state, port=self._port("mlflow", ("mlflow",)),
            backend_uri=self._pg_uri("mlflow"), s3_endpoint=self.s3_endpoint(),
            bucket=Settings.load(home=self.state.home).s3_bucket, access_key_id=key_id, secret_access_key=secret,
        )

    def s3_endpoint(self) -> str:
        return self.external["s3"] or f"http://127.0.0.1:{self._port('s3', ('s3',))}"

    def kafka_bootstrap(self) -> str:
        return self.external["kafka"] or f"127.0.0.1:{self._port('kafka', ('kafka',))}"

    def mlflow_uri(self) -> str:
        return self.external["mlflow"] or f"http://127.0.0.1:{self._port('mlflow', ('mlflow',))}"

    def airflow_port(self) -> int:
        return self._port("airflow", ("airflow-api-server",))

    def serve_port(self) -> int:
        return self._port("model-server", ("model-server",))

    def writer_env(self) -> dict[str, str]:
        """LAKEFORGE_* variables tasks need: endpoints and the lake-writer identity."""
        from lakeforge.services.s3 import ensure_keys

        env = {
            "LAKEFORGE_HOME": str(self.state.home),
            "LAKEFORGE_KAFKA_BOOTSTRAP": self.kafka_bootstrap(),
            "LAKEFORGE_S3_ENDPOINT": self.s3_endpoint(),
            "LAKEFORGE_MLFLOW_URI": self.mlflow_uri(),
            "LAKEFORGE_AIRFLOW_URL": f"http://127.0.0.1:{self.airflow_port()}",
            "LAKEFORGE_SERVE_URL": f"http://127.0.0.1:{self.serve_port()}",
            "MLFLOW_TRACKING_URI": self.mlflow_uri(),
        }
        if self.external["s3"]:
            for k in ("LAKEFORGE_S3_ACCESS_KEY_ID", "LAKEFORGE_S3_SECRET_ACCESS_KEY"):
                if os.environ.get(k):
                    env[k] = os.environ[k]
        else:
            w = ensure_keys(self.state)["writer"]
            env["LAKEFORGE_S3_ACCESS_KEY_ID"] = w["access_key_id"]
            env["LAKEFORGE_S3_SECRET_ACCESS_KEY"] = w["secret_access_key"]
        if self.external["postgres"]:
            if os.environ.get("LAKEFORGE_CATALOG_URI"):
                env["LAKEFORGE_CATALOG_URI"] = os.environ["LAKEFORGE_CATALOG_URI"]
        else:
            env["LAKEFORGE_CATALOG_URI"] = self.postgres().catalog_uri()
        for k in ("LAKEFORGE_S3_BUCKET", "LAKEFORGE_CATALOG_NAME", "LAKEFORGE_SPARK_MASTER", "LAKEFORGE_JAR_CACHE", "LAKEFORGE_PIPELINES_PATH",
                  "LAKEFORGE_PUSHGATEWAY_URL"):
            if os.environ.get(k):
                env[k] = os.environ[k]
        return env

    def airflow_env(self) -> dict[str, str]:
        from lakeforge.services.airflow_server import airflow_env

        return airflow_env(self.state, self._pg_uri("airflow"), self.airflow_port(), self.writer_env())

    def airflow(self, role: str):
        from lakeforge.services.airflow_server import AirflowService

        svc = AirflowService(name=f"airflow-{role}", state=self.state, role=role, api_port=self.airflow_port())
        svc.env = self.airflow_env()
        return svc

    def model_server(self):
        name = os.environ.get("LAKEFORGE_SERVE_MODEL", "")  # the default pipeline of /v1/predict (optional)
        svc = ModelServerService(name="model-server", state=self.state, port=self.serve_port(),
                                 model_name=name, tracking_uri=self.mlflow_uri())
        svc.env.update(self.writer_env())
        return svc

    AIRFLOW_ROLES = ("api-server", "scheduler", "dag-processor", "triggerer")

    def service_names(self) -> list[str]:
        names = []
        for n in ("postgres", "s3", "kafka", "mlflow"):
            if not self.external.get(n):
                names.append(n)
        names += [f"airflow-{r}" for r in self.AIRFLOW_ROLES]
        names.append("model-server")
        return names

    def service(self, name: str) -> ProcessService:
        if name.startswith("airflow-"):
            return self.airflow(name.removeprefix("airflow-"))
        return {"postgres": self.postgres, "s3": self.s3, "kafka": self.kafka, "mlflow": self.mlflow,
                "model-server": self.model_server}[name]()

    # -- lifecycle ---------------------------------------------------------------------------------
    def up(self, progress=print, only: tuple[str, ...] | None = None) -> dict[str, str]:
        """Start every service not yet healthy, in order; idempotent. Returns the endpoints.

        Args:
            only: start just these services (e.g. ``("postgres", "s3", "kafka")`` for the ingest
                benchmark); they must not depend on one left out.
        """
        from lakeforge.services.airflow_server import migrate

        t0 = time.monotonic()
        unknown = set(only or ()) - set(self.service_names())
        if unknown:
            raise ServiceError(f"unknown services {sorted(unknown)}; known: {self.service_names()}")
        for name in self.service_names():
            if only is not None and name not in only:
                continue
            svc = self.service(name)
            if name == "airflow-api-server":
                progress("  airflow: db migrate + pools")
                migrate(self.state, self.airflow_env())
            t = time.monotonic()
            try:
                svc.start()
            except PortTakenError as exc:
                # another state dir's server took the port we had chosen: choose another, once
                progress(f"  {name}: {exc}; choosing another port")
                self.state.forget_port(exc.port)
                svc = self.service(name)
                svc.start()
            progress(f"  {name:<22} up  {svc.endpoint()}  ({time.monotonic() - t:.1f}s)")
        endpoints = {
            "kafka_bootstrap": self.kafka_bootstrap(),
            "s3_endpoint": self.s3_endpoint(),
            "mlflow_uri": self.mlflow_uri(),
            "airflow_url": f"http://127.0.0.1:{self.airflow_port()}",
            "serve_url": f"http://127.0.0.1:{self.serve_port()}",
        }
        if not self.external["postgres"]:
            endpoints["pg_uri"] = self.postgres().uri()
        self.state.set_endpoints(**endpoints)
        sec = self.state.secrets
        w = self.writer_env()
        sec["writer_env"] = {"s3_access_key_id": w.get("LAKEFORGE_S3_ACCESS_KEY_ID"),
                             "s3_secret_access_key": w.get("LAKEFORGE_S3_SECRET_ACCESS_KEY"),
                             "catalog_uri": w.get("LAKEFORGE_CATALOG_URI")}
        self.state.set_secrets(sec)
        progress(f"  all services up in {time.monotonic() - t0:.1f}s")
        return endpoints

    def down(self, progress=print) -> list[int]:
        """Stop every service (reverse order). Returns our ports still listening (should be [])."""
        for name in reversed(self.service_names()):
            svc = self.service(name)
            was = svc.running()
            svc.stop()
            if was:
                progress(f"  {name:<22} stopped")
        # the pipeline's own children (spark-submit, torchrun) die with the scheduler's group;
        # check our ports are really free
        still = [p for p in self.state.ports.values() if port_open(p)]
        return still

    def status(self) -> list[dict]:
        rows = []
        for name in self.service_names():
            svc = self.service(name)
            running = svc.running()
            try:
                healthy = running and svc.healthy()
            except Exception:
                healthy = False
            rows.append({"service": name, "pid": svc.pid(), "running": running, "healthy": healthy,
                         "endpoint": svc.endpoint() if running else "", "log": str(svc.log_path)})
        return rows

    def check_alive(self) -> None:
        """Raise ServiceError naming the first service that died, with its log tail."""
        for name in self.service_names():
            svc = self.service(name)
            if not svc.running():
                raise ServiceError(f"service {name} is not running; log {svc.log_path}:\n{tail(svc.log_path)}")

    def admin_credentials(self) -> tuple[str, str]:
        from lakeforge.services.airflow_server import ADMIN_USER, ensure_airflow_secrets

        return ADMIN_USER, ensure_airflow_secrets(self.state)["admin_password"]
