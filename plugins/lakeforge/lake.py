"""The S3 lake: paths, manifests and the publish protocol. Paths are built here and nowhere else.

Layout (inside the lake bucket)::

    <layer>/<pipeline>/dt=YYYY-MM-DD[/hour=HH]/_MANIFEST.json          the published partition
    <layer>/<pipeline>/dt=YYYY-MM-DD[/hour=HH]/run=<run_id>/part-*.parquet  files of one run
    <layer>/<pipeline>/dt=…/run=<run_id>/_<part>/part-*.parquet          a run's side outputs (curated:
                                                                        _index, _excluded), listed in its manifest
    quarantine/<pipeline>/dt=…/run=<run_id>/part-*.parquet              rejected records + reason
    reports/<pipeline>/dt=…/run=<run_id>/<name>                         a run's reports (kept after reruns)
    checkpoints/<pipeline>/dt=…/<run_key>/…                             a training run's checkpoints

Publish protocol: a writer puts its files under its own ``run=<run_id>/`` prefix, then writes
``_MANIFEST.json`` (one atomic S3 PUT) listing them with sizes, checksums and row counts. Readers
read the manifest, never a listing, so a crash before the manifest leaves the previous version (or
nothing) visible, and a rerun replaces the partition whole. Files of superseded runs are deleted
after the new manifest is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from lakeforge import code_version
from lakeforge.config import Partition, Settings
from lakeforge.errors import ManifestError

log = logging.getLogger(__name__)

Layer = Literal["raw", "curated", "features", "quarantine", "reports", "checkpoints"]
MANIFEST_NAME = "_MANIFEST.json"


class FileEntry(BaseModel):
    """One data file of a partition."""

    path: str  # s3://bucket/key
    size: int  # bytes
    sha256: str  # hex digest of the file's bytes
    rows: int  # rows in the file


class Manifest(BaseModel):
    """The ``_MANIFEST.json`` of a published partition (see module docstring)."""

    layer: str  # raw | curated | features
    pipeline: str  # pipeline name
    partition: str  # dt=YYYY-MM-DD[/hour=HH]
    interval: tuple[datetime, datetime]  # event-time interval [start, end)
    schema_version: int  # version of the record schema
    code_version: str = Field(default_factory=code_version)  # git commit of the writer
    run_id: str  # writer run (Airflow run id or generated)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    files: list[FileEntry]  # the data files, in read order
    rows: int  # total rows over files
    inputs: list[dict[str, str]] = Field(default_factory=list)  # manifests read: {path, sha256}
    kafka_offsets: dict[str, dict[str, list[int]]] = Field(default_factory=dict)  # topic -> topic-partition -> [first, last+1)
    dropped: dict[str, int] = Field(default_factory=dict)  # rows removed on purpose, per reason
    quarantined: dict[str, int] = Field(default_factory=dict)  # rows sent to quarantine, per reason
    quarantine_files: list[FileEntry] = Field(default_factory=list)  # where the quarantined rows went
    stats: dict[str, Any] = Field(default_factory=dict)  # stage-specific figures

    @property
    def lake_partition(self) -> Partition:
        """The lake partition this manifest publishes (its event-time interval)."""
        return Partition(start=self.interval[0], end=self.interval[1])


def layer_uri(layer: Layer, pipeline: str, bucket: str | None = None) -> str:
    """``s3://<bucket>/<layer>/<pipeline>``: where a pipeline's layer lives (the identity of its Airflow
    asset). ``bucket`` defaults to the configured lake bucket, read without credentials, so a DAG file
    can call this at parse time."""
    return f"s3://{bucket or Settings.configured_bucket()}/{layer}/{pipeline}"


class Lake:
    """Reads and writes lake partitions through manifests. All lake paths are built here."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.load()
        self.bucket = self.settings.s3_bucket
        self._fs = None
        self._s3 = None

    # -- clients (created lazily so constructing a Lake touches no server) ----------------------
    @property
    def fs(self):
        if self._fs is None:
            self._fs = self.settings.arrow_fs()
        return self._fs

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = self.settings.s3_client()
        return self._s3

    # -- paths ------------------------------------------------------------------------------------
    def partition_key(self, layer: Layer, pipeline: str, partition: Partition) -> str:
        return f"{layer}/{pipeline}/{partition.path}"

    def run_key(self, layer: Layer, pipeline: str, partition: Partition, run_id: str) -> str:
        return f"{self.partition_key(layer, pipeline, partition)}/run={run_id}"

    def manifest_key(self, layer: Layer, pipeline: str, partition: Partition) -> str:
        return f"{self.partition_key(layer, pipeline, partition)}/{MANIFEST_NAME}"

    def run_part_key(self, layer: Layer, pipeline: str, partition: Partition, run_id: str, part: str) -> str:
        """Prefix of a run's side output ``part`` (e.g. ``index``): removed with the run's files."""
        return f"{self.run_key(layer, pipeline, partition, run_id)}/_{part}"

    def report_key(self, pipeline: str, partition: Partition, run_id: str, name: str) -> str:
        """Key of a report file of one run (reports outlive reruns: they are the runs' record)."""
        return f"{self.run_key('reports', pipeline, partition, run_id)}/{name}"

    def checkpoint_key(self, pipeline: str, partition: Partition, run_key: str) -> str:
        """Prefix of one training run's checkpoints; ``run_key`` names the run (Airflow dag/run id)."""
        return f"{self.partition_key('checkpoints', pipeline, partition)}/{run_key}"

    def uri(self, key: str, scheme: str = "s3") -> str:
        """``s3://bucket/key`` (or ``s3a://`` for Spark)."""
        return f"{scheme}://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str:
        """Key inside the bucket of an ``s3://``/``s3a://`` URI or ``bucket/key`` path."""
        rest = uri.split("://", 1)[-1]
        bucket, _, key = rest.partition("/")
        if bucket != self.bucket:
            raise ManifestError(f"{uri} is outside the lake bucket {self.bucket!r}")
        return key

    def arrow_path(self, uri_or_key: str) -> str:
        """Path for pyarrow's S3FileSystem (``bucket/key``)."""
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return f"{self.bucket}/{key}"

    # -- files -------------------------------------------------------------------------------------
    def describe_file(self, uri: str, rows: int | None = None) -> FileEntry:
        """Size, sha256 and row count of a written file (read back from the store)."""
        import pyarrow.parquet as pq

        digest = hashlib.sha256()
        size = 0
        with self.fs.open_input_stream(self.arrow_path(uri)) as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
                size += len(chunk)
        if rows is None:
            rows = pq.ParquetFile(self.fs.open_input_file(self.arrow_path(uri))).metadata.num_rows
        return FileEntry(path=uri if "://" in uri else self.uri(uri), size=size, sha256=digest.hexdigest(), rows=rows)

    def list_run_files(self, run_prefix_key: str, suffix: str = ".parquet") -> list[str]:
        """Data files a run wrote directly under its prefix, not in sub-prefixes (used only by the
        writer itself, before publish)."""
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=run_prefix_key + "/",
                                                                   Delimiter="/")
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
        return [self.uri(k) for k in sorted(keys)]

    def published_partitions(self, layer: Layer, pipeline: str) -> list[Partition]:
        """Partitions of ``layer/pipeline`` that have a published manifest (the one listing readers
        do: of manifests, never of data files)."""
        prefix = f"{layer}/{pipeline}/"
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith("/" + MANIFEST_NAME)]
        return sorted({partition_of_key(k[len(prefix):]) for k in keys}, key=lambda p: p.start)

    # -- manifests ---------------------------------------------------------------------------------
    def publish(self, manifest: Manifest) -> str:
        """Write the manifest (the commit point), then delete files of superseded runs."""
        part = manifest.lake_partition
        key = self.manifest_key(manifest.layer, manifest.pipeline, part)  # type: ignore[arg-type]
        body = manifest.model_dump_json(indent=2).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        log.info("published %s (%d rows in %d files)", self.uri(key), manifest.rows, len(manifest.files))
        self._delete_other_runs(manifest.layer, manifest.pipeline, part, manifest.run_id)  # type: ignore[arg-type]
        return self.uri(key)

    def _delete_other_runs(self, layer: Layer, pipeline: str, partition: Partition, keep_run: str) -> None:
        prefix = self.partition_key(layer, pipeline, partition) + "/run="
        keep = f"{prefix}{keep_run}/"
        stale = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            stale += [{"Key": o["Key"]} for o in page.get("Contents", []) if not o["Key"].startswith(keep)]
        for i in range(0, len(stale), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": stale[i:i + 1000], "Quiet": True})
        if stale:
            log.info("removed %d files of superseded runs under %s", len(stale), self.uri(prefix))

    def manifest_bytes(self, layer: Layer, pipeline: str, partition: Partition) -> tuple[str, bytes]:
        """URI and raw bytes of a published manifest (the one place that fetches it)."""
        key = self.manifest_key(layer, pipeline, partition)
        try:
            return self.uri(key), self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise ManifestError(
                f"no published {layer} partition at {self.uri(key)}: run the upstream task for {partition.path} first"
            ) from None

    def read_input(self, layer: Layer, pipeline: str, partition: Partition) -> tuple[Manifest, dict[str, str]]:
        """A manifest and its lineage ref ``{path, sha256}``, from one fetch (what a stage reads)."""
        uri, body = self.manifest_bytes(layer, pipeline, partition)
        return Manifest.model_validate_json(body), {"path": uri, "sha256": hashlib.sha256(body).hexdigest()}

    def read_bytes(self, uri: str) -> bytes:
        """Bytes of one lake object, by URI (``s3://bucket/key``)."""
        with self.fs.open_input_stream(self.arrow_path(uri)) as f:
            return f.read()

    def read_manifest_at(self, uri: str) -> tuple[Manifest, dict[str, str]]:
        """The manifest at ``uri`` (e.g. an ``inputs`` entry of another manifest) and its ref."""
        body = self.read_bytes(uri)
        return Manifest.model_validate_json(body), {"path": uri, "sha256": hashlib.sha256(body).hexdigest()}

    def read_manifest(self, layer: Layer, pipeline: str, partition: Partition) -> Manifest:
        return self.read_input(layer, pipeline, partition)[0]

    def manifest_ref(self, layer: Layer, pipeline: str, partition: Partition) -> dict[str, str]:
        """``{path, sha256}`` of a published manifest, for lineage (inputs, MLflow tags)."""
        return self.read_input(layer, pipeline, partition)[1]

    def read_table(self, manifest: Manifest, columns: list[str] | None = None):
        """Read the partition's files (exactly those the manifest lists) as one Arrow table."""
        import pyarrow.parquet as pq
        import pyarrow as pa

        tables = [pq.read_table(self.arrow_path(f.path), filesystem=self.fs, columns=columns) for f in manifest.files]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables)

    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        return self.uri(key)

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, default=str).encode(), "application/json")

    def get_bytes(self, uri_or_key: str) -> bytes:
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def http_link(self, uri_or_key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """A presigned HTTP(S) URL of an object (for links in Airflow; 7 days, SigV4's longest)."""
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                              ExpiresIn=expires_s)


def partition_of_key(rest: str) -> Partition:
    """The Partition of a key fragment ``dt=YYYY-MM-DD[/hour=HH]/…``."""
    parts = rest.split("/")
    value = parts[0]
    if len(parts) > 1 and parts[1].startswith("hour="):
        value += "/" + parts[1]
    return Partition.parse(value)


class LocalLake(Lake):
    """A lake on local disk: the same keys, manifests and publish protocol, ``file://`` URIs
    instead of ``s3://``/``s3a://`` (for tests, benchmarks and a laptop without an S3 server)."""

    def __init__(self, root, settings: Settings | None = None):
        from pathlib import Path

        from pyarrow import fs as pafs

        self.root = Path(root).resolve()
        super().__init__(settings or Settings(home=self.root))
        self._fs = pafs.LocalFileSystem()

    def uri(self, key: str, scheme: str = "s3") -> str:
        return f"file://{self.root / key}"  # not as_uri(): it escapes the '=' of dt=…

    def key_of(self, uri: str) -> str:
        from pathlib import Path

        return Path(uri.removeprefix("file://")).relative_to(self.root).as_posix()

    def arrow_path(self, uri_or_key: str) -> str:
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return str(self.root / key)

    def list_run_files(self, run_prefix_key: str, suffix: str = ".parquet") -> list[str]:
        files = sorted((self.root / run_prefix_key).glob(f"*{suffix}"))
        return [self.uri(p.relative_to(self.root).as_posix()) for p in files]

    def published_partitions(self, layer: Layer, pipeline: str) -> list[Partition]:
        base = self.root / layer / pipeline
        found = {partition_of_key(p.parent.relative_to(base).as_posix()) for p in base.glob(f"**/{MANIFEST_NAME}")}
        return sorted(found, key=lambda p: p.start)

    def publish(self, manifest: Manifest) -> str:
        import shutil

        part = manifest.lake_partition
        path = self.root / self.manifest_key(manifest.layer, manifest.pipeline, part)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(manifest.model_dump_json(indent=2))
        tmp.replace(path)  # atomic, like the S3 PUT
        for run_dir in path.parent.glob("run=*"):
            if run_dir.name != f"run={manifest.run_id}":
                shutil.rmtree(run_dir)
        return f"file://{path}"

    def manifest_bytes(self, layer: Layer, pipeline: str, partition: Partition) -> tuple[str, bytes]:
        path = self.root / self.manifest_key(layer, pipeline, partition)
        if not path.exists():
            raise ManifestError(f"no published {layer} partition at {path}: run the upstream task for {partition.path} first")
        return f"file://{path}", path.read_bytes()

    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return self.uri(key)

    def get_bytes(self, uri_or_key: str) -> bytes:
        return (self.root / (self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key)).read_bytes()

    def http_link(self, uri_or_key: str, expires_s: int = 0) -> str:
        return self.uri(self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key)
