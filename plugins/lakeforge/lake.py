"""The lake: Apache Iceberg tables for the data, plain objects for what is not a table.

**Tables.** Every layer of a pipeline is an Iceberg table of the lake's catalog
(:mod:`lakeforge.catalog`: ``<pipeline>.raw``, ``<pipeline>.curated``, …). A stage run publishes
its lake partition as *one* Iceberg commit that replaces exactly that partition; the commit's
snapshot summary carries a :class:`Commit` record — run id, code version, rows, drop and
quarantine counts per reason, the Kafka offset ranges (raw) or the input tables' snapshots (derived
layers). A crash before the commit leaves the table as it was; readers read a partition *at a
snapshot*, so a rerun never pulls files from under them, and the snapshot recorded in lineage
(MLflow) stays readable until maintenance expires it (never right after a commit). Other engines
(Spark SQL, DuckDB, Trino, pyiceberg) read the same tables.

**Objects** (keys built here and nowhere else), inside the lake bucket::

    reports/<pipeline>/dt=YYYY-MM-DD[/hour=HH]/run=<run_id>/<name>    a run's reports (kept after reruns)
    checkpoints/<pipeline>/dt=…/<run_key>/…                           a training run's checkpoints
    warehouse/…                                                      the tables' data and metadata files

:class:`LocalLake` is the same on local disk (a SQLite catalog, ``file://`` warehouse): tests,
benchmarks, a laptop without servers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from lakeforge import code_version
from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.errors import LakeError, PartitionNotPublishedError, PublishConflictError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

log = logging.getLogger(__name__)

#: Snapshot summary keys lakeforge writes on every commit (beside Iceberg's own counts). The whole
#: record is ``lakeforge.commit`` (JSON); the others repeat its headline for people reading
#: ``<table>.snapshots`` in Spark SQL or pyiceberg.
COMMIT_KEY = "lakeforge.commit"
PARTITION_KEY = "lakeforge.partition"
RUN_ID_KEY = "lakeforge.run_id"
CODE_VERSION_KEY = "lakeforge.code_version"
ROWS_KEY = "lakeforge.rows"
OFFSETS_KEY = "lakeforge.kafka_offsets"
INPUTS_KEY = "lakeforge.inputs"
#: Tags that keep snapshots from expiry (:mod:`lakeforge.maintenance`): the latest commit of every
#: partition (its record must outlive the snapshots around it), and the snapshots a registered model
#: version trained on (with the chain of snapshots they were made from).
PARTITION_TAG_PREFIX = "lakeforge-partition-"
MODEL_TAG_PREFIX = "lakeforge-model-"
#: Stats kept out of the snapshot summary (every metadata file repeats every summary): they are in
#: the quality report.
UNSUMMARIZED_STATS = ("dropped_samples",)


class Commit(BaseModel):
    """What one run published to one partition of one table: the record in its snapshot summary."""

    layer: str  # raw | quarantine | curated | excluded | dedup_index | features
    pipeline: str  # pipeline name (the catalog namespace)
    partition: str  # dt=YYYY-MM-DD[/hour=HH]
    interval: tuple[datetime, datetime]  # event-time interval [start, end)
    schema_version: int  # version of the record schema
    code_version: str = Field(default_factory=code_version)  # git commit of the writer
    run_id: str  # writer run (Airflow run id or generated)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    rows: int  # rows the partition holds after this commit
    files: int = 0  # data files of the partition after this commit (from the snapshot, not stored in the record)
    snapshot_id: int | None = None  # the snapshot that published it (from the table, not stored in the record)
    inputs: list[dict[str, Any]] = Field(default_factory=list)  # tables read: {table, snapshot_id, partition}
    kafka_offsets: dict[str, dict[str, list[int]]] = Field(default_factory=dict)  # topic -> topic-partition -> [first, end)
    dropped: dict[str, int] = Field(default_factory=dict)  # rows removed on purpose, per reason
    quarantined: dict[str, int] = Field(default_factory=dict)  # rows sent to quarantine, per reason
    stats: dict[str, Any] = Field(default_factory=dict)  # stage-specific figures

    @property
    def table(self) -> str:
        """``<pipeline>.<layer>``: the table's identifier in the catalog."""
        return f"{self.pipeline}.{self.layer}"

    @property
    def lake_partition(self) -> Partition:
        """The lake partition this commit publishes (its event-time interval)."""
        return Partition(start=self.interval[0], end=self.interval[1])

    @property
    def ref(self) -> dict[str, Any]:
        """Lineage reference: the table, the snapshot that published the partition, the partition."""
        return {"table": self.table, "snapshot_id": self.snapshot_id, "partition": self.partition}

    def properties(self) -> dict[str, str]:
        """The snapshot summary properties of this commit."""
        stats = {k: v for k, v in self.stats.items() if k not in UNSUMMARIZED_STATS}
        record = self.model_copy(update={"stats": stats}).model_dump_json(exclude={"snapshot_id", "files"})
        props = {COMMIT_KEY: record, PARTITION_KEY: self.partition, RUN_ID_KEY: self.run_id,
                 CODE_VERSION_KEY: self.code_version, ROWS_KEY: str(self.rows)}
        if self.kafka_offsets:
            props[OFFSETS_KEY] = json.dumps(self.kafka_offsets, sort_keys=True)
        if self.inputs:
            props[INPUTS_KEY] = json.dumps(self.inputs, sort_keys=True)
        return props

    @classmethod
    def of_snapshot(cls, snapshot: "Snapshot") -> "Commit | None":
        """The record of a snapshot lakeforge committed (None for other snapshots: maintenance, …)."""
        summary = snapshot.summary or {}
        record = summary.get(COMMIT_KEY)
        if record is None:
            return None
        # an overwrite of one partition adds exactly the partition's files
        return cls.model_validate_json(record).model_copy(update={
            "snapshot_id": snapshot.snapshot_id, "files": int(summary.get("added-data-files") or 0)})


def layer_uri(layer: str, pipeline: str, catalog: str | None = None) -> str:
    """``iceberg://<catalog>/<pipeline>/<layer>``: the identity of a layer's table as an Airflow asset.
    ``catalog`` defaults to the configured catalog name, read without credentials, so a DAG file can
    call this at parse time."""
    return f"iceberg://{catalog or Settings.configured_catalog_name()}/{pipeline}/{layer}"


def partition_tag(path: str) -> str:
    """The tag that keeps the latest commit of partition ``path`` (``dt=2026-11-23[/hour=05]``)."""
    return PARTITION_TAG_PREFIX + path.replace("/", "_")


def model_tag(name: str, version: str | int) -> str:
    """The tag that keeps the snapshots registered model version ``name`` v``version`` trained on."""
    return f"{MODEL_TAG_PREFIX}{name}-v{version}"


def tagged_commits(table: "Table", prefix: str) -> list[Commit]:
    """The commits of the snapshots that tags starting with ``prefix`` point at."""
    found = []
    for name, ref in table.metadata.refs.items():
        if ref.snapshot_ref_type == "tag" and name.startswith(prefix):
            snap = table.snapshot_by_id(ref.snapshot_id)
            commit = Commit.of_snapshot(snap) if snap is not None else None
            if commit is not None:
                found.append(commit)
    return found


def table_commits(table: "Table") -> dict[str, Commit]:
    """partition path -> the commit that published the partition's current rows, for every partition of
    ``table`` in the state it was loaded in (one walk of the current snapshot's ancestry, then the
    partition tags maintenance keeps for commits older than the kept ancestry)."""
    found: dict[str, Commit] = {}
    for snap in ancestry(table):
        path = (snap.summary or {}).get(PARTITION_KEY)
        if path is not None and path not in found:
            commit = Commit.of_snapshot(snap)
            if commit is not None:
                found[path] = commit
    for commit in tagged_commits(table, PARTITION_TAG_PREFIX):
        found.setdefault(commit.partition, commit)
    return found


def ancestry(table: "Table"):
    """The snapshots of the table's current state, newest first."""
    snap = table.current_snapshot()
    while snap is not None:
        yield snap
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None


class Lake:
    """The lake's tables (through the catalog) and objects (reports, checkpoints). Clients are created
    on first use, so constructing a Lake touches no server."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.load()
        self.bucket = self.settings.s3_bucket
        self._fs = None
        self._s3 = None
        self._catalog = None

    # -- clients ----------------------------------------------------------------------------------
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

    @property
    def catalog(self) -> "Catalog":
        if self._catalog is None:
            from lakeforge.catalog import load_catalog

            self._catalog = load_catalog(self.settings)
        return self._catalog

    # -- object keys ------------------------------------------------------------------------------
    def report_key(self, pipeline: str, partition: Partition, run_id: str, name: str) -> str:
        """Key of a report file of one run (reports outlive reruns: they are the runs' record)."""
        return f"reports/{pipeline}/{partition.path}/run={run_id}/{name}"

    def checkpoint_key(self, pipeline: str, partition: Partition, run_key: str) -> str:
        """Prefix of one training run's checkpoints; ``run_key`` names the run (Airflow dag/run id)."""
        return f"checkpoints/{pipeline}/{partition.path}/{run_key}"

    def uri(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str:
        """Key inside the bucket of an ``s3://``/``s3a://`` URI or ``bucket/key`` path."""
        rest = uri.split("://", 1)[-1]
        bucket, _, key = rest.partition("/")
        if bucket != self.bucket:
            raise LakeError(f"{uri} is outside the lake bucket {self.bucket!r}")
        return key

    def arrow_path(self, uri_or_key: str) -> str:
        """Path for :attr:`fs` (pyarrow's S3FileSystem: ``bucket/key``)."""
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return f"{self.bucket}/{key}"

    # -- objects ----------------------------------------------------------------------------------
    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        return self.uri(key)

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, default=str).encode(), "application/json")

    def get_bytes(self, uri_or_key: str) -> bytes:
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def read_bytes(self, uri: str) -> bytes:
        """Bytes of one lake object, by URI."""
        with self.fs.open_input_stream(self.arrow_path(uri)) as f:
            return f.read()

    def http_link(self, uri_or_key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """A presigned HTTP(S) URL of an object (for links in Airflow; 7 days, SigV4's longest)."""
        key = self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                              ExpiresIn=expires_s)

    # -- tables -----------------------------------------------------------------------------------
    def table(self, pipeline: PipelineConfig, layer: str) -> "Table":
        """The layer's table, created on first use (columns and partitioning from the pipeline)."""
        from lakeforge.catalog import ensure_table

        return ensure_table(self.catalog, pipeline, layer)

    def existing_table(self, pipeline: str, layer: str) -> "Table | None":
        """The layer's table as it is now, or None when nothing created it yet."""
        from pyiceberg.exceptions import NoSuchTableError

        from lakeforge.catalog import table_name

        try:
            return self.catalog.load_table(table_name(pipeline, layer))
        except NoSuchTableError:
            return None

    def snapshot_id(self, pipeline: str, layer: str) -> int | None:
        """The table's current snapshot id (None: no table or no commit yet): what a writer records
        when it starts, so a rival commit to its partition in the meantime is detected."""
        table = self.existing_table(pipeline, layer)
        snap = table.current_snapshot() if table is not None else None
        return snap.snapshot_id if snap is not None else None

    def commits(self, layer: str, pipeline: str) -> dict[str, Commit]:
        """partition path -> the commit that published the partition's current rows, for every
        partition of the table (one walk of the current snapshot's ancestry)."""
        table = self.existing_table(pipeline, layer)
        return table_commits(table) if table is not None else {}

    def read_commit(self, layer: str, pipeline: str, partition: Partition) -> Commit:
        """The commit that published ``partition`` of ``<pipeline>.<layer>`` (its current rows).

        Raises:
            PartitionNotPublishedError: nothing published the partition yet.
        """
        table = self.existing_table(pipeline, layer)
        for snap in ancestry(table) if table is not None else ():
            if (snap.summary or {}).get(PARTITION_KEY) == partition.path:
                commit = Commit.of_snapshot(snap)
                if commit is not None:
                    return commit
        for commit in tagged_commits(table, partition_tag(partition.path)) if table is not None else ():
            return commit  # older than the kept ancestry: its tag kept it
        raise PartitionNotPublishedError(
            f"no published {layer} partition {partition.path} in table {pipeline}.{layer}: run the upstream "
            f"task for {partition.path} first")

    def commit_of(self, ref: dict[str, Any]) -> Commit:
        """The commit a lineage reference (:attr:`Commit.ref`: table, snapshot id) names, read from
        that snapshot, however the table moved on since.

        Raises:
            PartitionNotPublishedError: the table or the snapshot is gone (expired by maintenance).
        """
        pipeline, _, layer = str(ref.get("table", "")).partition(".")
        table = self.existing_table(pipeline, layer)
        snap = table.snapshot_by_id(int(ref["snapshot_id"])) if table is not None and ref.get("snapshot_id") else None
        commit = Commit.of_snapshot(snap) if snap is not None else None
        if commit is None:
            raise PartitionNotPublishedError(f"no lakeforge commit at snapshot {ref.get('snapshot_id')} of table "
                                             f"{ref.get('table')!r} (expired, or not a lakeforge commit)")
        return commit

    def lineage(self, ref: dict[str, Any]) -> list[Commit]:
        """The commit ``ref`` names and, depth first, the commits it read (features -> curated -> raw)."""
        commit = self.commit_of(ref)
        chain = [commit]
        for upstream in commit.inputs:
            chain += self.lineage(upstream)
        return chain

    def keep(self, ref: dict[str, Any], tag: str) -> list[Commit]:
        """Tag the snapshot ``ref`` names and those it was made from (:meth:`lineage`) with ``tag``, so
        snapshot expiry keeps them: what a model version trained on stays readable by time travel."""
        from lakeforge.catalog import tag_snapshot

        chain = self.lineage(ref)
        for commit in chain:
            tag_snapshot(self.existing_table(commit.pipeline, commit.layer), tag, int(commit.snapshot_id))
        return chain

    def published_partitions(self, layer: str, pipeline: str) -> list[Partition]:
        """Partitions of ``<pipeline>.<layer>`` that a commit published, oldest first."""
        return sorted((c.lake_partition for c in self.commits(layer, pipeline).values()), key=lambda p: p.start)

    def _published_table(self, commit: Commit) -> "Table":
        table = self.existing_table(commit.pipeline, commit.layer)
        if table is None or commit.snapshot_id is None:
            raise PartitionNotPublishedError(f"{commit.table} {commit.partition} has no snapshot")
        return table

    def scan(self, commit: Commit, columns: list[str] | None = None):
        """A pyiceberg scan of the commit's partition at its snapshot: exactly the rows it published,
        however the table moved on since (until maintenance expires that snapshot)."""
        from lakeforge.catalog import interval_filter, partition_column_of

        table = self._published_table(commit)
        return table.scan(row_filter=interval_filter(partition_column_of(table), commit.lake_partition),
                          snapshot_id=commit.snapshot_id, selected_fields=tuple(columns) if columns else ("*",))

    def data_files(self, commit: Commit) -> list[str]:
        """Paths (for :attr:`fs`) of the data files of the commit's partition at its snapshot, in a
        fixed order: exactly what the commit published, however the table moved on since."""
        return sorted(self.arrow_path(task.file.file_path) for task in self.scan(commit).plan_files())

    def read_table(self, commit: Commit, columns: list[str] | None = None) -> "pa.Table":
        """The commit's partition at its snapshot, as one Arrow table."""
        return self.scan(commit, columns).to_arrow()

    def staging_key(self, table: "Table", partition: Partition, run_id: str) -> str:
        """Key prefix under the table's data location where one attempt of a run writes its files
        before committing them (unique per attempt: a retry never overwrites files a snapshot lists)."""
        return f"{self.key_of(table.location())}/data/{partition.path}/{run_id}-{uuid.uuid4().hex[:8]}"

    def publish_files(self, pipeline: PipelineConfig, commit: Commit, paths: list[str],
                      started_from: int | None, attempts: int = 10) -> Commit:
        """Replace exactly the commit's partition of its table with the Parquet files ``paths`` (keys
        in the lake), in one Iceberg commit (one ``overwrite`` snapshot) carrying the record.

        Optimistic concurrency: a commit that loses the race to another writer is retried on the
        fresh table state, so writers of *different* partitions all land. A writer of the *same*
        partition that committed after ``started_from`` (the table's snapshot when this run began)
        wins: this run fails with :class:`PublishConflictError`, having committed nothing.
        """
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from pyiceberg.io.pyarrow import parquet_file_to_data_file
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

        from lakeforge.catalog import interval_filter, partition_column

        table = self.table(pipeline, commit.layer)
        where = interval_filter(partition_column(pipeline, commit.layer), commit.lake_partition)
        uris = [self.table_uri(p) for p in paths]
        props = commit.properties()
        added = None
        for attempt in Retrying(retry=retry_if_exception_type(CommitFailedException), stop=stop_after_attempt(attempts),
                                wait=wait_random_exponential(multiplier=0.1, max=3), reraise=True):
            with attempt:
                table.refresh()
                check_no_rival(table, commit, started_from)
                if added is None:  # the files' stats and partition, read once from their footers
                    added = [parquet_file_to_data_file(table.io, table.metadata, uri) for uri in uris]
                old = [task.file for task in table.scan(row_filter=where).plan_files()]
                try:
                    with table.transaction() as tx:
                        with tx.update_snapshot(snapshot_properties=props).overwrite() as overwrite:
                            # pyiceberg retries a commit that lost a race itself, validating (serializable)
                            # that no files were added meanwhile *matching this filter*: without it, any
                            # file added to any partition (a landing of another day) fails the commit
                            overwrite.delete_by_predicate(where)
                            for data_file in old:
                                overwrite.delete_data_file(data_file)
                            for data_file in added:
                                overwrite.append_data_file(data_file)
                except ValidationException as exc:  # another run committed this partition during the retry
                    check_no_rival(table.refresh(), commit, started_from)  # names it, when it was a lakeforge run
                    raise PublishConflictError(
                        f"{commit.table} {commit.partition}: another commit changed this partition while run "
                        f"{commit.run_id!r} was writing it ({exc}); nothing of this run was committed. Rerun "
                        "it.") from exc
        snap = table.current_snapshot()
        log.info("published %s %s: %d rows in %d files (snapshot %d)", commit.table, commit.partition, commit.rows,
                 len(paths), snap.snapshot_id)
        return Commit.of_snapshot(snap).model_copy(update={"stats": commit.stats})

    def table_uri(self, key: str) -> str:
        """The URI a table's data file at ``key`` has in Iceberg metadata."""
        return self.uri(key)


def check_no_rival(table: "Table", commit: Commit, started_from: int | None) -> None:
    """Fail when another run published the commit's partition after ``started_from`` (None: ever)."""
    for snap in ancestry(table):
        if started_from is not None and snap.snapshot_id == started_from:
            return
        summary = snap.summary or {}
        if summary.get(PARTITION_KEY) == commit.partition and summary.get(RUN_ID_KEY) != commit.run_id:
            raise PublishConflictError(
                f"{commit.table} {commit.partition}: run "
                f"{summary.get(RUN_ID_KEY)!r} published this partition (snapshot {snap.snapshot_id}) while run "
                f"{commit.run_id!r} was writing it; nothing of this run was committed. Rerun it to replace that "
                "run's rows.")


class LocalLake(Lake):
    """A lake on local disk: the same tables (a SQLite catalog, a ``file://`` warehouse) and object
    keys, ``file://`` URIs instead of ``s3://`` (tests, benchmarks, a laptop without an S3 server)."""

    def __init__(self, root, settings: Settings | None = None):
        from pathlib import Path

        from pyarrow import fs as pafs

        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # one catalog name per root: Spark keeps a catalog per name for the whole session
        name = "local_" + hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        base = settings or Settings(home=self.root)
        super().__init__(base.model_copy(update={
            "catalog_uri": f"sqlite:///{self.root / 'catalog.db'}", "catalog_name": name,
            "warehouse": f"file://{self.root / 'warehouse'}"}))
        self._fs = pafs.LocalFileSystem()

    def uri(self, key: str) -> str:
        return f"file://{self.root / key}"  # not as_uri(): it escapes the '=' of dt=…

    def key_of(self, uri: str) -> str:
        from pathlib import Path

        path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            raise LakeError(f"{uri} is outside the local lake {self.root}") from None

    def arrow_path(self, uri_or_key: str) -> str:
        key = self.key_of(uri_or_key) if ":" in uri_or_key.split("/", 1)[0] else uri_or_key
        return str(self.root / key)

    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return self.uri(key)

    def get_bytes(self, uri_or_key: str) -> bytes:
        return (self.root / (self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key)).read_bytes()

    def http_link(self, uri_or_key: str, expires_s: int = 0) -> str:
        return self.uri(self.key_of(uri_or_key) if "://" in uri_or_key else uri_or_key)

    def staging_key(self, table: "Table", partition: Partition, run_id: str) -> str:
        key = super().staging_key(table, partition, run_id)
        (self.root / key).mkdir(parents=True, exist_ok=True)  # a local file system needs the folder (S3 has none)
        return key
