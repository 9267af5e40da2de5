"""Curate: clean, filter and deduplicate one raw partition on Spark, publish it as ``curated``.

The cleaning chain is named in the pipeline YAML (``curate: [{name, params}]``) and built from
the step registry below, so a new dataset is a new YAML file, not new code. Each step is a small
class over a Spark DataFrame with its thresholds in its constructor and one ``apply`` method
returning ``(kept, dropped)``; dropped rows carry a snake_case ``reason`` column. The runner
(:func:`curate_frame`) counts drops per reason and keeps a few sample rows per reason (with their
Kafka coordinates) so every drop can be traced to its event.

Steps never touch storage. :func:`run` is the job: it reads exactly the files the raw manifest
lists, runs the chain, writes Parquet under its own run prefix and publishes the curated manifest
(see :mod:`lakeforge.lake` for the publish protocol).

Data contracts
    raw:     id, text, label, source, event_time, kafka_topic, kafka_partition, kafka_offset
    curated: id, text (cleaned), label, source, event_time, text_hash (sha256 hex of the
             lowercased, whitespace-normalized text), sorted by id within each file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lakeforge.config import PipelineConfig, Partition, StepSpec
from lakeforge.errors import ConfigError, ManifestError
from lakeforge.lake import Lake, Manifest, new_run_id

if TYPE_CHECKING:  # pyspark is heavy: imported by the functions that need it
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

TEXT = "text"
REASON = "reason"
HASH = "text_hash"

#: Columns the curate job needs from raw, with their Spark SQL types (others pass through).
RAW_REQUIRED = {"id": "string", "text": "string", "label": "bigint", "source": "string",
                "event_time": "timestamp"}
#: Columns of a full raw record (used to build an empty frame for an empty partition).
RAW_SCHEMA = ("id string, text string, label bigint, source string, event_time timestamp, "
              "kafka_topic string, kafka_partition int, kafka_offset bigint")
#: Output columns of the curated layer, in order.
CURATED_COLUMNS = ("id", "text", "label", "source", "event_time", "text_hash")
CURATED_SCHEMA = ("id string, text string, label bigint, source string, event_time timestamp, "
                  "text_hash string")
#: Longest text kept in a dropped-row sample (samples go into the manifest).
SAMPLE_TEXT_CHARS = 300


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------

class Step:
    """A cleaning or filter step over a Spark DataFrame.

    Subclasses set ``name`` (the key used in pipeline YAML) and ``reasons`` (the snake_case drop
    reasons they can emit), take their thresholds in ``__init__`` and implement :meth:`apply`.
    """

    name: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]] = ()

    def apply(self, df: "DataFrame") -> tuple["DataFrame", "DataFrame | None"]:
        """Return ``(kept, dropped)``; ``dropped`` has a ``reason`` column, or is None for cleaners."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class TextCleaner(Step):
    """A step that rewrites the ``text`` column and drops nothing."""

    def clean(self, text: "Column") -> "Column":
        raise NotImplementedError

    def apply(self, df):
        from pyspark.sql import functions as F

        return df.withColumn(TEXT, self.clean(F.col(TEXT))), None


class RowFilter(Step):
    """A step that drops rows: :meth:`drop_reason` is a column, null for rows to keep."""

    def drop_reason(self) -> "Column":
        raise NotImplementedError

    def apply(self, df):
        from pyspark.sql import functions as F

        marked = df.withColumn(REASON, self.drop_reason())
        kept = marked.where(F.col(REASON).isNull()).drop(REASON)
        dropped = marked.where(F.col(REASON).isNotNull())
        return kept, dropped


STEP_REGISTRY: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step available to pipeline YAML under ``cls.name``."""
    if cls.name in STEP_REGISTRY and STEP_REGISTRY[cls.name] is not cls:
        raise ConfigError(f"step name {cls.name!r} registered twice ({STEP_REGISTRY[cls.name]} and {cls})")
    STEP_REGISTRY[cls.name] = cls
    return cls


@register_step
class HtmlStripper(TextCleaner):
    """Remove HTML markup with Spark regexes: ``<br>``/block ends become newlines, other tags go,
    script/style bodies and comments go, and the common entities are unescaped.

    A stop-gap: a later issue replaces it with a real HTML parser. Tags are only recognized when a
    letter follows ``<`` so ``3 < 5`` survives.
    """

    name = "strip_html"

    # (pattern, replacement), applied in order. Entities come after tags so an escaped tag
    # (``&lt;b&gt;``) stays visible text, and ``&amp;`` comes last so ``&amp;lt;`` -> ``&lt;``.
    RULES: ClassVar[tuple[tuple[str, str], ...]] = (
        (r"(?is)<(script|style)\b[^>]*>.*?</\1\s*>", ""),
        (r"(?s)<!--.*?-->", ""),
        (r"<![^>]*>", ""),
        (r"(?i)<br\s*/?>", "\n"),
        (r"(?i)</(p|div|li|tr|h[1-6])\s*>", "\n"),
        (r"</?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?>", ""),
        ("&nbsp;", " "),
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", '"'),
        ("&#34;", '"'),
        ("&#39;", "'"),
        ("&#x27;", "'"),
        ("&apos;", "'"),
        ("&amp;", "&"),
    )

    def clean(self, text):
        from pyspark.sql import functions as F

        for pattern, replacement in self.RULES:
            text = F.regexp_replace(text, pattern, replacement)
        return text


@register_step
class WhitespaceNormalizer(TextCleaner):
    """Remove control/format characters, collapse whitespace runs to one space, keep paragraph
    breaks (at most one blank line), and trim."""

    name = "normalize_whitespace"

    RULES: ClassVar[tuple[tuple[str, str], ...]] = (
        (r"\r\n?", "\n"),
        # control (Cc) and invisible format (Cf: zero-width, BOM, soft hyphen) characters, except
        # the whitespace ones, which the next rule turns into spaces
        (r"[\p{Cc}\p{Cf}&&[^\n\t\x0B\x0C]]", ""),
        (r"[\h\x0B\x0C]+", " "),  # \h: horizontal whitespace incl. NBSP and the Unicode spaces
        (r" ?\n ?", "\n"),
        (r"\n{3,}", "\n\n"),
        (r"^\s+|\s+$", ""),
    )

    def clean(self, text):
        from pyspark.sql import functions as F

        for pattern, replacement in self.RULES:
            text = F.regexp_replace(text, pattern, replacement)
        return text


@register_step
class EmptyTextFilter(RowFilter):
    """Drop rows whose text is null or only whitespace (reason ``empty_text``)."""

    name = "drop_empty"
    reasons = ("empty_text",)

    def drop_reason(self):
        from pyspark.sql import functions as F

        has_content = F.coalesce(F.col(TEXT).rlike(r"\S"), F.lit(False))
        return F.when(~has_content, F.lit("empty_text"))


@register_step
class LengthFilter(RowFilter):
    """Drop texts shorter than ``min_chars`` (``too_short``) or longer than ``max_chars``
    (``too_long``), counted in characters. A null text counts as length 0."""

    name = "length_filter"
    reasons = ("too_short", "too_long")

    def __init__(self, min_chars: int = 0, max_chars: int | None = None):
        """Args:
            min_chars: shortest text kept (inclusive).
            max_chars: longest text kept (inclusive); None for no upper bound.
        """
        if min_chars < 0 or (max_chars is not None and max_chars < min_chars):
            raise ConfigError(
                f"length_filter needs 0 <= min_chars <= max_chars, got min_chars={min_chars}, max_chars={max_chars}"
            )
        self.min_chars = int(min_chars)
        self.max_chars = None if max_chars is None else int(max_chars)

    def drop_reason(self):
        from pyspark.sql import functions as F

        length = F.coalesce(F.length(F.col(TEXT)), F.lit(0))
        reason = F.when(length < self.min_chars, F.lit("too_short"))
        if self.max_chars is not None:
            reason = reason.when(length > self.max_chars, F.lit("too_long"))
        return reason


def text_hash(text: "Column") -> "Column":
    """sha256 hex of the lowercased, whitespace-collapsed, trimmed text: the dedup and split key."""
    from pyspark.sql import functions as F

    normalized = F.lower(F.regexp_replace(F.regexp_replace(text, r"\s+", " "), r"^ | $", ""))
    return F.sha2(normalized, 256)


@register_step
class ExactDeduplicator(Step):
    """Keep one row per ``text_hash`` (the smallest id; ties broken by text), drop the others
    (reason ``exact_duplicate``, with ``duplicate_of`` naming the kept id). Adds ``text_hash``."""

    name = "exact_dedup"
    reasons = ("exact_duplicate",)

    def apply(self, df):
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        hashed = df.withColumn(HASH, text_hash(F.col(TEXT)))
        order = Window.partitionBy(HASH).orderBy(F.col("id").asc_nulls_last(), F.col(TEXT).asc_nulls_last())
        ranked = (hashed.withColumn("_rank", F.row_number().over(order))
                  .withColumn("duplicate_of", F.first("id").over(order)))
        kept = ranked.where(F.col("_rank") == 1).drop("_rank", "duplicate_of")
        dropped = (ranked.where(F.col("_rank") > 1).drop("_rank")
                   .withColumn(REASON, F.lit("exact_duplicate")))
        return kept, dropped


def build_steps(specs: Sequence[StepSpec | Mapping[str, Any]]) -> list[Step]:
    """Instantiate the chain named in a pipeline's ``curate:`` list.

    Args:
        specs: ``StepSpec``s (or ``{name, params}`` dicts) in the order they run.
    Raises:
        ConfigError: an unknown step name (the message lists the known ones) or bad parameters.
    """
    steps: list[Step] = []
    for raw_spec in specs:
        spec = raw_spec if isinstance(raw_spec, StepSpec) else StepSpec.model_validate(raw_spec)
        cls = STEP_REGISTRY.get(spec.name)
        if cls is None:
            raise ConfigError(f"unknown curate step {spec.name!r}; known steps: {sorted(STEP_REGISTRY)}")
        try:
            steps.append(cls(**spec.params))
        except TypeError as exc:
            raise ConfigError(f"bad params {spec.params} for curate step {spec.name!r}: {exc}") from exc
    return steps


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------

@dataclass
class CurateResult:
    """What a chain of steps did to a frame."""

    kept: "DataFrame"  # surviving rows (persisted; call release() when written)
    rows_in: int  # rows before the first step
    rows_out: int  # rows after the last step
    counts_by_reason: dict[str, int] = field(default_factory=dict)  # every reason of the chain, 0 included
    dropped_samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # first rows by id, per reason

    def release(self) -> None:
        """Drop the cached kept rows."""
        self.kept.unpersist()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, (datetime, date)):
            value = value.isoformat()
        elif key == TEXT and isinstance(value, str) and len(value) > SAMPLE_TEXT_CHARS:
            value = value[:SAMPLE_TEXT_CHARS] + "…"
        out[key] = value
    return out


def run_steps(df: "DataFrame", steps: Sequence[Step], *, samples_per_reason: int = 5) -> CurateResult:
    """Run steps in order; count dropped rows per reason and sample a few per reason.

    The input is persisted while the chain runs (both the kept and the dropped branches read it),
    and so are the result and, while they are counted and sampled, the dropped rows.

    Args:
        df: input rows (must have ``id`` and ``text``).
        steps: the chain, e.g. from :func:`build_steps`.
        samples_per_reason: dropped rows kept per reason (smallest ids first), for tracing.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    owns_input_cache = not df.storageLevel.useMemory and not df.storageLevel.useDisk
    if owns_input_cache:
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
    rows_in = df.count()

    kept = df
    dropped_frames = []
    counts: dict[str, int] = {}
    for step in steps:
        counts.update({reason: 0 for reason in step.reasons if reason not in counts})
        kept, dropped = step.apply(kept)
        if dropped is not None:
            dropped_frames.append(dropped)

    kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
    rows_out = kept.count()

    samples: dict[str, list[dict[str, Any]]] = {}
    if dropped_frames:
        dropped = dropped_frames[0]
        for more in dropped_frames[1:]:
            dropped = dropped.unionByName(more, allowMissingColumns=True)
        # two passes (counts, samples) over the dropped rows: cache them rather than rerun the chain
        dropped = dropped.persist(StorageLevel.MEMORY_AND_DISK)
        counts.update({r[REASON]: r["count"] for r in dropped.groupBy(REASON).count().collect()})
        if samples_per_reason > 0:
            # a rank filter alone, so Spark keeps only the top rows per reason before shuffling
            order = Window.partitionBy(REASON).orderBy(F.col("id").asc_nulls_last(), F.col(TEXT).asc_nulls_last())
            ranked = (dropped.withColumn("_rank", F.row_number().over(order))
                      .where(F.col("_rank") <= samples_per_reason))
            for row in ranked.orderBy(REASON, "_rank").collect():
                record = row.asDict()
                del record["_rank"]
                samples.setdefault(record[REASON], []).append(_jsonable(record))
        dropped.unpersist()

    if owns_input_cache:
        df.unpersist()
    if rows_in != rows_out + sum(counts.values()):
        log.warning("rows_in %d != rows_out %d + dropped %d: a step added or lost rows",
                    rows_in, rows_out, sum(counts.values()))
    return CurateResult(kept=kept, rows_in=rows_in, rows_out=rows_out, counts_by_reason=counts,
                        dropped_samples=samples)


class TextHasher(Step):
    """Add ``text_hash`` of the current text (not registered: the runner appends it last)."""

    name = "text_hash"

    def apply(self, df):
        from pyspark.sql import functions as F

        return df.withColumn(HASH, text_hash(F.col(TEXT))), None


def curate_frame(df: "DataFrame", steps: Sequence[Step], *, samples_per_reason: int = 5) -> CurateResult:
    """Run the cleaning chain and add ``text_hash`` of the final text (the curated contract).

    Args:
        df: raw rows (at least ``id`` and ``text``; other columns pass through).
        steps: the chain, e.g. ``build_steps(pipeline.curate)``.
        samples_per_reason: dropped rows kept per reason for the manifest.
    """
    # The hash is recomputed even after exact_dedup: a later step may have changed the text.
    return run_steps(df, [*steps, TextHasher()], samples_per_reason=samples_per_reason)


def select_curated(df: "DataFrame") -> "DataFrame":
    """The curated contract's columns and types, in order."""
    from pyspark.sql import functions as F

    types = dict(part.strip().split(" ") for part in CURATED_SCHEMA.split(","))
    return df.select(*(F.col(c).cast(types[c]).alias(c) for c in CURATED_COLUMNS))


# --------------------------------------------------------------------------------------------
# Spark <-> lake I/O (thin; paths come from Lake)
# --------------------------------------------------------------------------------------------

def read_manifest_frame(spark: "SparkSession", lake: Lake, manifest: Manifest,
                        required: Mapping[str, str], empty_schema: str) -> "DataFrame":
    """Read exactly the files a manifest lists (as ``s3a://``), casting the required columns.

    Args:
        required: column -> Spark SQL type; a missing column raises ManifestError.
        empty_schema: DDL schema of the frame returned for a manifest without files.
    """
    from pyspark.sql import functions as F

    if not manifest.files:
        return spark.emptyDataFrame(empty_schema)  # JVM-side: no Python worker for nothing
    uris = [lake.uri(lake.key_of(f.path), scheme="s3a") for f in manifest.files]
    df = spark.read.parquet(*uris)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{manifest.layer} partition {manifest.pipeline}/{manifest.partition} lacks columns {missing}"
            f" (found {df.columns}); was it written by an older schema?"
        )
    return df.withColumns({c: F.col(c).cast(t) for c, t in required.items()})


def check_rows_read(manifest: Manifest, rows_read: int) -> None:
    """Fail when the files of a manifest hold another number of rows than it says."""
    if rows_read != manifest.rows:
        raise ManifestError(
            f"{manifest.layer} partition {manifest.pipeline}/{manifest.partition} (run {manifest.run_id}) lists"
            f" {manifest.rows} rows but its files hold {rows_read}: rerun the upstream task for {manifest.partition}"
        )


def write_sorted_parquet(df: "DataFrame", uri: str, rows: int, rows_per_file: int) -> None:
    """Write ``df`` as zstd Parquet under ``uri``: the same rows in the same files and order on reruns.

    (The bytes match too within one JVM; across JVMs parquet-mr may list a column chunk's
    encodings in another order in the footer, so compare rows, not file checksums.)

    One file when ``rows <= rows_per_file`` (globally sorted by id), else ``ceil(rows /
    rows_per_file)`` files hash-partitioned on id; every file is sorted by id, then by the other
    columns so duplicate ids still come out in a fixed order.
    """
    files = max(1, math.ceil(rows / rows_per_file))
    # hash partitioning (not range) so file contents never depend on sampling
    parts = df.repartition(1) if files == 1 else df.repartition(files, "id")
    order = ["id"] + [c for c in df.columns if c != "id"]
    parts.sortWithinPartitions(*order).write.mode("overwrite").option("compression", "zstd").parquet(uri)


def publish_frame(lake: Lake, df: "DataFrame", rows: int, *, layer: str, pipeline: PipelineConfig,
                  partition: Partition, run_id: str, rows_per_file: int, inputs: list[dict[str, str]],
                  dropped: dict[str, int], stats: dict[str, Any]) -> Manifest:
    """Write ``df`` under the run prefix, describe the files and publish the manifest (last)."""
    files = []
    if rows > 0:  # an empty partition publishes a manifest without files
        run_key = lake.run_key(layer, pipeline.name, partition, run_id)  # type: ignore[arg-type]
        write_sorted_parquet(df, lake.uri(run_key, scheme="s3a"), rows, rows_per_file)
        files = [lake.describe_file(uri) for uri in lake.list_run_files(run_key)]
        written = sum(f.rows for f in files)
        if written != rows:
            raise ManifestError(f"{lake.uri(run_key)} holds {written} rows, expected {rows}: not publishing")
    manifest = Manifest(
        layer=layer, pipeline=pipeline.name, partition=partition.path,
        interval=(partition.start, partition.end), schema_version=pipeline.schema_version,
        run_id=run_id, files=files, rows=rows, inputs=inputs, dropped=dropped, stats=stats,
    )
    lake.publish(manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

def safe_run_id(value: str | None) -> str:
    """``value`` made path-safe (an Airflow run id has ``:`` and ``+``), or a new run id if empty."""
    if not value:
        return new_run_id()
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)[:120]


class SparkJobConfig(BaseModel):
    """Arguments of one Spark stage run on one partition (``jobs/curate.py``, ``jobs/features.py``)."""

    model_config = ConfigDict(frozen=True)
    pipeline: str  # pipeline name (pipelines/<name>.yaml) or a path to its YAML
    partition: str  # YYYY-MM-DD, or YYYY-MM-DDTHH for hourly pipelines
    run_id: str = Field(default_factory=new_run_id)  # run prefix in the lake; made path-safe
    master: str | None = None  # Spark master URL; None: spark_session's default / spark-submit's
    samples_per_reason: int = 5  # dropped rows per reason recorded in the manifest
    rows_per_file: int = 1_000_000  # above this, output is split into several files

    @field_validator("run_id", mode="before")
    @classmethod
    def _safe_run_id(cls, v: str | None) -> str:
        return safe_run_id(v)


class CurateConfig(SparkJobConfig):
    """Arguments of one curate run (``jobs/curate.py``)."""


def summarize(manifest: Manifest, lake: Lake | None = None) -> dict[str, Any]:
    """The one-line JSON summary the jobs print: manifest path, rows, dropped counts."""
    lake = lake or Lake()
    part = Partition(start=manifest.interval[0], end=manifest.interval[1])
    path = lake.uri(lake.manifest_key(manifest.layer, manifest.pipeline, part))  # type: ignore[arg-type]
    summary = {"manifest": path, "layer": manifest.layer, "partition": manifest.partition,
               "run_id": manifest.run_id, "rows": manifest.rows, "files": len(manifest.files),
               "dropped": manifest.dropped}
    if "rows_per_split" in manifest.stats:
        summary["rows_per_split"] = manifest.stats["rows_per_split"]
    return summary


def run(config: CurateConfig, *, lake: Lake | None = None, spark: "SparkSession | None" = None) -> Manifest:
    """Curate one raw partition and publish it as ``curated``.

    Args:
        config: what to curate.
        lake: the lake to use (default: ``Lake(Settings.load())``); tests pass a local one.
        spark: a session to use (default: ``lakeforge.spark.spark_session`` with the lake's settings).
    """
    pipeline = PipelineConfig.load(config.pipeline)
    partition = Partition.parse(config.partition, pipeline.partition)
    lake = lake or Lake()
    steps = build_steps(pipeline.curate)  # fail on a bad chain before starting Spark
    raw_manifest, raw_ref = lake.read_input("raw", pipeline.name, partition)
    inputs = [raw_ref]
    if spark is None:
        from lakeforge.spark import spark_session

        spark = spark_session(f"curate-{pipeline.name}-{partition.path}", lake.settings, config.master)

    raw = read_manifest_frame(spark, lake, raw_manifest, RAW_REQUIRED, RAW_SCHEMA)
    result = curate_frame(raw, steps, samples_per_reason=config.samples_per_reason)
    check_rows_read(raw_manifest, result.rows_in)
    log.info("curate %s %s: %d -> %d rows, dropped %s", pipeline.name, partition.path,
             result.rows_in, result.rows_out, result.counts_by_reason)
    stats = {
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "steps": [spec.model_dump() for spec in pipeline.curate],
        "dropped_samples": result.dropped_samples,
    }
    try:
        return publish_frame(lake, select_curated(result.kept), result.rows_out, layer="curated",
                             pipeline=pipeline, partition=partition, run_id=config.run_id,
                             rows_per_file=config.rows_per_file, inputs=inputs,
                             dropped=result.counts_by_reason, stats=stats)
    finally:
        result.release()
