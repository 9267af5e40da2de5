"""The layers' schemas, derived from the pipeline YAML: nothing in the stages names a dataset's columns.

* **raw** keeps the event's fields under their own names and types (``ingest.records.raw_schema``),
  then the Kafka coordinates;
* **curated** names the roles: ``id`` (string), ``text``, ``label`` (bigint: the index into the
  pipeline's ``labels``, whether the event carried a name or an index), ``event_time``, then the
  extra fields under their own names, then ``text_hash`` and ``cluster_id``;
* **features** adds ``split``, ``input_ids`` and ``num_tokens`` to the role columns and keeps the
  extra fields last.

:func:`role_frame` is where raw becomes role columns (curate reads raw through it); the DDL strings
give the column order and types of every layer a Spark stage writes. :func:`table_columns` gives the
``(name, Spark type)`` list of every table of the lake's catalog (:mod:`lakeforge.catalog`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeforge.config import ROLE_COLUMNS, PipelineConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: Spark SQL type of each logical field type of the YAML.
SPARK_TYPES = {"string": "string", "int": "bigint", "float": "double", "bool": "boolean", "timestamp": "timestamp"}
#: Kafka coordinates as the ingest stage writes them (raw and quarantine tables).
KAFKA_COLUMNS = [("kafka_topic", "string"), ("kafka_partition", "int"), ("kafka_offset", "bigint"),
                 ("kafka_timestamp", "timestamp")]
#: Kafka coordinates of every raw row (and of excluded rows) as the Spark stages read them.
KAFKA_DDL = ", ".join(f"{name} {kind}" for name, kind in KAFKA_COLUMNS[:3])
#: Start of the lake partition whose run wrote the row: the partition column of tables whose rows
#: carry no event time of their own (quarantine, dedup index).
PARTITION_START = ("partition_start", "timestamp")


def _ddl(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in columns)


def table_columns(pipeline: PipelineConfig, layer: str) -> list[tuple[str, str]]:
    """``(name, Spark type)`` of the catalog table of ``layer``, in column order."""
    roles = [("id", "string"), ("text", "string"), ("label", "bigint")]
    extras = extra_columns(pipeline)
    tables = {
        "raw": lambda: [(f.name, SPARK_TYPES[f.type]) for f in pipeline.fields] + KAFKA_COLUMNS,
        "quarantine": lambda: [("raw", "binary"), ("reason", "string"), ("detail", "string"), *KAFKA_COLUMNS,
                               PARTITION_START],
        "curated": lambda: [*roles, *extras, ("event_time", "timestamp"), ("text_hash", "string"),
                            ("cluster_id", "string")],
        "excluded": lambda: [("id", "string"), ("reason", "string"), ("text", "string"), ("duplicate_of", "string"),
                             ("similarity", "double"), ("cluster_id", "string"), ("label", "bigint"), *extras,
                             ("event_time", "timestamp"), *KAFKA_COLUMNS[:3]],
        "dedup_index": lambda: [PARTITION_START, ("id", "string"), ("text_hash", "string"), ("cluster_id", "string"),
                                ("bands", "array<bigint>")],
        "features": lambda: [*roles, ("split", "string"), ("input_ids", "array<int>"), ("num_tokens", "int"),
                             ("cluster_id", "string"), *extras, ("event_time", "timestamp")],
    }
    if layer not in tables:
        raise ValueError(f"unknown lake table {layer!r}: expected one of {tuple(tables)}")
    return tables[layer]()


def extra_columns(pipeline: PipelineConfig) -> list[tuple[str, str]]:
    """``(name, Spark type)`` of the extra fields, in YAML order."""
    return [(f.name, SPARK_TYPES[f.type]) for f in pipeline.extra_fields]


def raw_required(pipeline: PipelineConfig) -> dict[str, str]:
    """Raw columns a Spark stage needs, with the Spark type each is read as: the role fields."""
    return {f.name: SPARK_TYPES[f.type] for f in pipeline.fields if f.role != "extra"}


def raw_ddl(pipeline: PipelineConfig) -> str:
    """DDL of a raw partition (the frame of an empty one): the event fields, then the Kafka coordinates."""
    return _ddl([(f.name, SPARK_TYPES[f.type]) for f in pipeline.fields]) + ", " + KAFKA_DDL


def role_ddl(pipeline: PipelineConfig) -> str:
    """DDL of raw rows renamed to roles (what :func:`role_frame` returns), Kafka coordinates included."""
    return _ddl([("id", "string"), ("text", "string"), ("label", "bigint"), *extra_columns(pipeline),
                 ("event_time", "timestamp")]) + ", " + KAFKA_DDL


def curated_ddl(pipeline: PipelineConfig) -> str:
    """DDL of the curated layer, in column order."""
    return _ddl(table_columns(pipeline, "curated"))


def curated_columns(pipeline: PipelineConfig) -> list[str]:
    """Columns of the curated layer, in order."""
    return [part.split(" ")[0] for part in curated_ddl(pipeline).split(", ")]


def excluded_ddl(pipeline: PipelineConfig) -> str:
    """DDL of curate's excluded rows: the row as the dropping step saw it, why, and what it duplicates."""
    return _ddl(table_columns(pipeline, "excluded"))


def curated_required(pipeline: PipelineConfig) -> dict[str, str]:
    """Curated columns the features stage needs, with their Spark types."""
    return {"id": "string", "text": "string", "label": "bigint", "text_hash": "string"}


def features_columns(pipeline: PipelineConfig) -> list[str]:
    """Columns of the features layer, in order: what any trainer needs, then the extra fields."""
    return ["id", "text", "label", "split", "input_ids", "num_tokens", "cluster_id",
            *(name for name, _ in extra_columns(pipeline))]


def role_frame(df: "DataFrame", pipeline: PipelineConfig) -> "DataFrame":
    """Raw rows with their role fields renamed to the role columns (``id``, ``text``, ``label``,
    ``event_time``), the id as a string and the label as its index into ``pipeline.labels``; extra
    fields and the Kafka coordinates pass through. A label name outside the label space becomes null
    (ingest quarantines those; features drops a null label as ``unknown_label``)."""
    from pyspark.sql import functions as F

    renamed = {}
    for role, column in ROLE_COLUMNS.items():
        spec = pipeline.field(role)
        if spec is None:
            continue
        value = F.col(spec.name)
        if role == "id":
            value = value.cast("string")
        elif role == "label" and spec.type == "string":
            pairs = [x for i, name in enumerate(pipeline.labels) for x in (F.lit(name), F.lit(i))]
            value = F.create_map(*pairs)[value]
        renamed[column] = value.cast("bigint") if role == "label" else value
    sources = {pipeline.field(role).name for role in ROLE_COLUMNS if pipeline.field(role) is not None}
    rest = [F.col(c) for c in df.columns if c not in sources and c not in renamed]
    return df.select(*(v.alias(k) for k, v in renamed.items()), *rest)
