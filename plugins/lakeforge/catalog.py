"""The lake's Apache Iceberg catalog: one JDBC/SQL catalog on PostgreSQL, shared by pyiceberg and Spark.

Every layer of a pipeline is an Iceberg table in the namespace named after the pipeline
(``<pipeline>.raw``, ``<pipeline>.curated``, …, see :data:`LAYERS`), partitioned by the pipeline's
event-time grain (``day`` or ``hour`` of its partition column). The columns come from the pipeline
YAML through :mod:`lakeforge.stage.schema`.

Both sides read the same catalog tables in PostgreSQL: pyiceberg's ``SqlCatalog``
(:func:`load_catalog`, used by ingest, training and the CLI) and Spark's ``SparkCatalog`` over
Iceberg's ``JdbcCatalog`` (:func:`spark_conf` + :func:`spark_secrets`, used by the Spark stages). The
catalog name is part of every catalog row, so it is the same on both sides
(``Settings.catalog_name``). Data and metadata files live under ``s3://<bucket>/warehouse/`` and are
read and written with Iceberg's own S3 clients (pyiceberg's pyarrow FileIO, Spark's ``S3FileIO``), not
through Hadoop's s3a (which lakeforge does not load). A :class:`~lakeforge.lake.LocalLake` has the same
catalog in a SQLite file and its warehouse on local disk.

Secrets (the catalog database password inside ``Settings.catalog_uri``, the S3 keys) never enter a
Spark launch config: :func:`spark_secrets` returns them for ``spark.conf.set`` at run time (catalogs
are instantiated lazily, on first use), so they never show on a command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.errors import ConfigError
from lakeforge.stage import schema as layer_schema

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

#: The tables of every pipeline, in the order the stages write them.
LAYERS: tuple[str, ...] = ("raw", "quarantine", "curated", "excluded", "dedup_index", "features")
#: Column a layer without an event-time column is partitioned by: the start of the lake partition
#: (event-time interval) whose run wrote the row.
PARTITION_START = layer_schema.PARTITION_START[0]
WAREHOUSE_PREFIX = "warehouse"
#: Iceberg's Spark SQL extensions (``CALL`` procedures, ``ALTER TABLE … WRITE ORDERED BY``): a
#: session's extensions are fixed when it starts.
SPARK_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"


# -- names and places ------------------------------------------------------------------------


def namespace(pipeline: str) -> str:
    """The catalog namespace of a pipeline: its name."""
    return pipeline


def table_name(pipeline: str, layer: str) -> str:
    """``<pipeline>.<layer>``: the identifier of a layer's table inside the catalog."""
    if layer not in LAYERS:
        raise ConfigError(f"unknown lake table {layer!r}: expected one of {LAYERS}")
    return f"{namespace(pipeline)}.{layer}"


def spark_table(pipeline: str, layer: str, settings: Settings) -> str:
    """The table's name in Spark SQL: ``<catalog>.<pipeline>.<layer>``."""
    return f"{settings.catalog_name}.{table_name(pipeline, layer)}"


def warehouse(settings: Settings) -> str:
    """Where new tables put their files: ``Settings.warehouse``, default ``s3://<bucket>/warehouse``."""
    return settings.warehouse or f"s3://{settings.s3_bucket}/{WAREHOUSE_PREFIX}"


def on_s3(settings: Settings) -> bool:
    """Whether the tables' files live in the S3 store (else on a local file system: a LocalLake)."""
    return warehouse(settings).startswith(("s3://", "s3a://"))


# -- the pyiceberg side ----------------------------------------------------------------------


def io_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg FileIO properties: the lake writer identity on the configured S3 endpoint."""
    return {
        "s3.endpoint": settings.require("s3_endpoint"),
        "s3.access-key-id": settings.require("s3_access_key_id"),
        "s3.secret-access-key": settings.require("s3_secret_access_key"),
        "s3.region": settings.s3_region,
        "s3.force-virtual-addressing": "false",  # SeaweedFS/MinIO: path-style buckets
    }


def load_catalog(settings: Settings | None = None) -> "SqlCatalog":
    """The lake's catalog for pyiceberg (PostgreSQL through SQLAlchemy, ``Settings.catalog_uri``; a
    SQLite file for a local lake)."""
    from pyiceberg.catalog.sql import SqlCatalog

    settings = settings or Settings.load()
    return SqlCatalog(settings.catalog_name, uri=settings.require("catalog_uri"), warehouse=warehouse(settings),
                      **(io_properties(settings) if on_s3(settings) else {}))


# -- the Spark side --------------------------------------------------------------------------


def jdbc_parts(catalog_uri: str) -> tuple[str, str, str]:
    """``(jdbc url, user, password)`` of a ``postgresql[+driver]://user:pw@host:port/db`` URI (or of
    ``sqlite:///path``: a local lake's catalog)."""
    from sqlalchemy.engine import make_url

    url = make_url(catalog_uri)
    if url.drivername.startswith("sqlite"):
        return f"jdbc:sqlite:{url.database}", "", ""
    if not url.drivername.startswith("postgresql"):
        raise ConfigError(f"the Iceberg catalog must be on PostgreSQL for Spark's JDBC catalog, got {url.drivername!r}")
    if not url.host:
        raise ConfigError("the Iceberg catalog URI needs a TCP host: the PostgreSQL JDBC driver has no unix sockets")
    jdbc = f"jdbc:postgresql://{url.host}:{url.port or 5432}/{url.database}"
    return jdbc, url.username or "", url.password or ""


def spark_conf(settings: Settings) -> dict[str, str]:
    """Non-secret Spark settings for the lake's catalog (``spark.sql.catalog.<name>.*``) and Iceberg's
    SQL extensions (:data:`SPARK_EXTENSIONS`)."""
    jdbc, user, _ = jdbc_parts(settings.require("catalog_uri"))
    c = f"spark.sql.catalog.{settings.catalog_name}"
    conf = {
        "spark.sql.extensions": SPARK_EXTENSIONS,
        c: "org.apache.iceberg.spark.SparkCatalog",
        f"{c}.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        f"{c}.uri": jdbc,
        f"{c}.jdbc.user": user,
        f"{c}.warehouse": warehouse(settings),
        # Spark's catalog caches table metadata (30 s by default): a job must see the commit of
        # the job before it, so every lookup loads the current metadata.
        f"{c}.cache-enabled": "false",
    }
    if on_s3(settings):  # else Iceberg's default FileIO reads and writes the local warehouse
        conf.update({f"{c}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
                     f"{c}.s3.endpoint": settings.require("s3_endpoint"),
                     f"{c}.s3.path-style-access": "true",
                     f"{c}.client.region": settings.s3_region})
    return conf


def spark_secrets(settings: Settings) -> dict[str, str]:
    """The catalog's secret settings, for ``spark.conf.set`` before the catalog's first use."""
    _, _, password = jdbc_parts(settings.require("catalog_uri"))
    c = f"spark.sql.catalog.{settings.catalog_name}"
    secrets = {f"{c}.jdbc.password": password}
    if on_s3(settings):
        secrets.update({f"{c}.s3.access-key-id": settings.require("s3_access_key_id"),
                        f"{c}.s3.secret-access-key": settings.require("s3_secret_access_key")})
    return secrets


# -- tables ----------------------------------------------------------------------------------


def _iceberg_type(spark_type: str):
    from pyiceberg import types as T

    simple = {"string": T.StringType(), "bigint": T.LongType(), "int": T.IntegerType(), "double": T.DoubleType(),
              "boolean": T.BooleanType(), "timestamp": T.TimestamptzType(), "binary": T.BinaryType()}
    if spark_type in simple:
        return simple[spark_type]
    raise ConfigError(f"no Iceberg type for Spark type {spark_type!r}")


def layer_columns(pipeline: PipelineConfig, layer: str) -> list[tuple[str, str]]:
    """``(name, Spark type)`` of a layer's table, in order (:func:`lakeforge.stage.schema.table_columns`)."""
    table_name(pipeline.name, layer)  # an unknown layer is a ConfigError, like everywhere in this module
    return layer_schema.table_columns(pipeline, layer)


def partition_column(pipeline: PipelineConfig, layer: str) -> str:
    """The column a layer's table is partitioned by: the event time (raw: the YAML's event-time field),
    else :data:`PARTITION_START` for layers whose rows carry no event time of their own."""
    if layer == "raw":
        field = pipeline.field("event_time")
        if field is None:
            raise ConfigError(f"pipeline {pipeline.name!r} has no field with role event_time")
        return field.name
    return PARTITION_START if layer in ("quarantine", "dedup_index") else "event_time"


def iceberg_schema(pipeline: PipelineConfig, layer: str) -> "Schema":
    """The Iceberg schema of a layer's table (all columns optional, so a required YAML field missing
    from a record is the quarantine's business, not a write error).

    Field ids are those the catalog gives the table: the columns 1..n in order, then the ids of nested
    fields (list elements). The table's name mapping (how files without field ids, ingest's, are read)
    is made from this schema, so its ids must be the table's own.
    """
    from pyiceberg.schema import Schema, assign_fresh_schema_ids
    from pyiceberg.types import ListType, NestedField

    fields = []
    next_id = 1
    for name, kind in layer_columns(pipeline, layer):
        if kind.startswith("array<"):
            element = _iceberg_type(kind[len("array<"):-1])
            fields.append(NestedField(next_id, name, ListType(next_id + 1, element, element_required=False),
                                      required=False))
            next_id += 2
        else:
            fields.append(NestedField(next_id, name, _iceberg_type(kind), required=False))
            next_id += 1
    # a catalog re-numbers the ids of a new table this way (Iceberg's fresh ids, breadth first)
    return assign_fresh_schema_ids(Schema(*fields))


def partition_spec(pipeline: PipelineConfig, layer: str, schema: "Schema") -> "PartitionSpec":
    """Partitioning by the pipeline's grain: ``day(col)`` for daily pipelines, ``hour(col)`` for hourly."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, HourTransform

    column = partition_column(pipeline, layer)
    hourly = pipeline.partition == "hourly"
    source = schema.find_field(column)
    return PartitionSpec(PartitionField(source_id=source.field_id, field_id=1000,
                                        transform=HourTransform() if hourly else DayTransform(),
                                        name=f"{column}_{'hour' if hourly else 'day'}"))


#: Table properties of particular layers. features: 16 MiB row groups, the unit training streams and
#: shards by (Spark writes the table).
LAYER_PROPERTIES = {"features": {"write.parquet.row-group-size-bytes": str(16 << 20)}}


def partition_column_of(table: "Table") -> str:
    """The source column of a table's (one) partition field."""
    (field,) = table.spec().fields
    return table.schema().find_field(field.source_id).name


def ensure_table(catalog: "SqlCatalog", pipeline: PipelineConfig, layer: str) -> "Table":
    """The layer's table, created (with its namespace) on first use. Idempotent under concurrency: a
    creator that loses the race loads the winner's table."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
    from sqlalchemy.exc import IntegrityError

    ident = table_name(pipeline.name, layer)
    if catalog.table_exists(ident):
        return catalog.load_table(ident)
    try:
        catalog.create_namespace(namespace(pipeline.name))
    # pyiceberg checks, then inserts: a creator that loses the race between the two gets the
    # database's unique-key violation instead of NamespaceAlreadyExistsError
    except (NamespaceAlreadyExistsError, IntegrityError):
        pass
    table_schema = iceberg_schema(pipeline, layer)
    properties = {
        "format-version": "2", "write.parquet.compression-codec": "zstd",
        # files written outside Iceberg's writers (ingest's) carry no field ids: read them by name
        "schema.name-mapping.default": table_schema.name_mapping.model_dump_json(),
        # concurrent commits to other partitions of the table are retried, not failed
        "commit.retry.num-retries": "10",
        "lakeforge.pipeline": pipeline.name, "lakeforge.layer": layer, **LAYER_PROPERTIES.get(layer, {})}
    try:
        return catalog.create_table(ident, schema=table_schema,
                                    partition_spec=partition_spec(pipeline, layer, table_schema),
                                    properties=properties)
    except (TableAlreadyExistsError, IntegrityError):  # the same race, for the table
        return catalog.load_table(ident)


def ensure_tables(catalog: "SqlCatalog", pipeline: PipelineConfig) -> dict[str, "Table"]:
    """Every layer's table of a pipeline (:data:`LAYERS`), created where missing."""
    return {layer: ensure_table(catalog, pipeline, layer) for layer in LAYERS}


# -- partitions and snapshots ---------------------------------------------------------------


def interval_filter(column: str, partition: Partition):
    """The row filter ``start <= column < end`` of a lake partition (an event-time interval)."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    return And(GreaterThanOrEqual(column, partition.start.isoformat()), LessThan(column, partition.end.isoformat()))


def _retrying_commits(attempts: int = 10):
    """Retry a metadata commit that lost the race to another writer (on the refreshed table)."""
    from pyiceberg.exceptions import CommitFailedException
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

    return Retrying(retry=retry_if_exception_type(CommitFailedException), stop=stop_after_attempt(attempts),
                    wait=wait_random_exponential(multiplier=0.1, max=3), reraise=True)


def tag_snapshot(table: "Table", tag: str, snapshot_id: int) -> None:
    """Tag a snapshot (e.g. ``lakeforge-model-<name>-v<version>`` on the features snapshot a model
    version trained on): snapshot expiry keeps tagged snapshots, so the rows stay readable by time
    travel. Re-tagging the same snapshot is a no-op; moving a tag to another snapshot replaces it."""
    set_tags(table, {tag: snapshot_id})


def set_tags(table: "Table", tags: dict[str, int]) -> None:
    """Point every tag of ``tags`` (name -> snapshot id) at its snapshot, in one metadata commit."""
    for attempt in _retrying_commits():
        with attempt:
            refs = table.refresh().metadata.refs
            moves = {t: s for t, s in tags.items() if t not in refs or refs[t].snapshot_id != s}
            if not moves:
                return
            with table.manage_snapshots() as ms:
                for tag, snapshot_id in moves.items():
                    if tag in refs:
                        ms.remove_tag(tag)
                    ms.create_tag(snapshot_id=snapshot_id, tag_name=tag)


def remove_tags(table: "Table", tags: list[str]) -> None:
    """Remove tags (those that exist) in one metadata commit."""
    for attempt in _retrying_commits():
        with attempt:
            present = [t for t in tags if t in table.refresh().metadata.refs]
            if not present:
                return
            with table.manage_snapshots() as ms:
                for tag in present:
                    ms.remove_tag(tag)
