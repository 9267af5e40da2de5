"""MLflow tracking server: backend store in PostgreSQL, artifacts proxied into the S3 store.

Clients (training, the model server) talk only HTTP to the server; the server alone holds the
`mlflow` S3 identity (``--artifacts-destination`` makes it proxy artifact uploads/downloads).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lakeforge.services.base import LoopbackHttp, ProcessService, http_ok


@dataclass
class MlflowService(LoopbackHttp, ProcessService):
    port: int = 5000
    backend_uri: str = ""  # postgresql+psycopg2://… (set by the supervisor)
    s3_endpoint: str = ""
    bucket: str = "lakeforge"
    access_key_id: str = ""
    secret_access_key: str = ""

    def __post_init__(self):
        self.start_timeout = 120.0
        self.depends_on = ("postgres", "s3")

    def prepare(self) -> None:
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
        self.argv = [
            mlflow_bin, "server",
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", f"s3://{self.bucket}/mlflow-artifacts",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]
        self.env = {
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            # the venv's bin must be on PATH: the server starts uvicorn/huey by name
            "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ.get('PATH', '')}",
        }

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/health")
