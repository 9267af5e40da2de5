"""Running a chain of steps over a Spark DataFrame: fused Arrow passes, drop counts per reason,
samples of dropped rows (:func:`run_steps`).

Consecutive batch steps become one :class:`FusedPass` (one ``mapInArrow`` trip through the Python
worker for the whole run of steps); a frame step's :meth:`~lakeforge.stage.steps.Step.prepare` step
is hoisted into the pass before it (:func:`plan`). The result (:class:`ChainResult`) holds the kept
rows, every dropped row with its reason, counts for every reason the chain can emit (zeros
included), counters of the batch steps and per-step figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from lakeforge.stage.steps import METRIC_PREFIX, REASON, SAMPLE_TEXT_CHARS, STAGE, TEXT, BatchStep, Step

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Fused batch passes
# --------------------------------------------------------------------------------------------

def spark_schema_with(df: "DataFrame", extra: Sequence[tuple[str, str]]):
    """``df``'s schema plus extra ``(name, Spark SQL type)`` fields (replacing same-named ones)."""
    from pyspark.sql.types import StructType, _parse_datatype_string

    names = {n for n, _ in extra}
    fields = [f for f in df.schema.fields if f.name not in names]
    schema = StructType(fields)
    for name, kind in extra:
        schema = schema.add(name, _parse_datatype_string(kind), nullable=True)
    return schema


class FusedPass:
    """Consecutive batch steps run as one ``mapInArrow`` pass over the frame.

    The output has every input column (``text`` rewritten by the cleaners), the steps' extra
    columns, ``reason`` (null for rows kept) and one ``_metric_<name>`` counter column per metric.
    """

    def __init__(self, steps: Sequence[BatchStep]):
        self.steps = list(steps)

    @property
    def metrics(self) -> list[str]:
        return [m for s in self.steps for m in s.metrics]

    def extra_fields(self) -> list[tuple[str, str]]:
        fields = [f for s in self.steps for f in s.output_fields]
        fields.append((REASON, "string"))
        fields += [(f"{METRIC_PREFIX}{m}", "bigint") for m in self.metrics]
        return fields

    def apply(self, df: "DataFrame") -> "DataFrame":
        schema = spark_schema_with(df, self.extra_fields())
        return df.mapInArrow(make_batch_function(self.steps, schema), schema)


def make_batch_function(steps: Sequence[BatchStep], schema) -> Callable[[Iterator["pa.RecordBatch"]], Iterator["pa.RecordBatch"]]:
    """The function ``mapInArrow`` runs in the Python workers: every step over every batch.

    Columns passed through keep the Arrow type Spark sent them with (timestamps in the session's
    time zone); added columns get the type of their declared Spark type.
    """
    from pyspark.sql.pandas.types import to_arrow_type

    added = {f.name: to_arrow_type(f.dataType) for f in schema.fields}  # timestamps: tz UTC (the default)
    names = [f.name for f in schema.fields]

    def run(batches):
        import numpy as np
        import pyarrow as pa

        from lakeforge.stage.text import TextBatch

        for rb in batches:
            batch = TextBatch(rb)
            for step in steps:
                step.process(batch)
            columns, fields = [], []
            for name in names:
                kind = rb.schema.field(name).type if name in rb.schema.names else added[name]
                if name == TEXT:
                    values = batch.final_text()
                elif name == REASON:
                    values = pa.array(batch.reasons, pa.string())
                elif name.startswith(METRIC_PREFIX):
                    values = pa.array(np.broadcast_to(batch.metrics.get(name[len(METRIC_PREFIX):], 0),
                                                      len(batch)), pa.int64())
                elif name in batch.columns:
                    values = batch.columns[name]
                elif name in rb.schema.names:
                    values = rb.column(name)
                else:
                    values = pa.nulls(len(batch), kind)
                columns.append(values.cast(kind) if values.type != kind else values)
                fields.append(pa.field(name, kind))
            yield pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))

    return run


def plan(steps: Sequence[Step]) -> list[FusedPass | Step]:
    """Group a chain into stages: runs of batch steps become one :class:`FusedPass`; a frame step's
    :meth:`~Step.prepare` step joins the latest pass when only row-dropping steps lie between."""
    stages: list[FusedPass | Step] = []
    for step in steps:
        if isinstance(step, BatchStep):
            if stages and isinstance(stages[-1], FusedPass):
                stages[-1].steps.append(step)
            else:
                stages.append(FusedPass([step]))
            continue
        prep = step.prepare()
        if prep is not None:
            target = None
            for stage in reversed(stages):
                if isinstance(stage, FusedPass):
                    target = stage
                    break
                if stage.modifies_text:
                    break
            if target is None:
                stages.append(FusedPass([prep]))
            else:
                target.steps.append(prep)
        stages.append(step)
    return stages


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------

@dataclass
class StepContext:
    """What a frame step may use besides its input: the dedup index of other partitions, and
    frames to release when the job is done."""

    prior: Any = None  # lakeforge.curate.dedup.PriorIndex of the other published partitions, or None
    stats: dict[str, Any] = field(default_factory=dict)  # figures steps report (e.g. dedup clusters)
    _cached: list["DataFrame"] = field(default_factory=list)

    def persist(self, df: "DataFrame") -> "DataFrame":
        """Persist ``df`` (memory, spilling to disk) until :meth:`release`."""
        from pyspark import StorageLevel

        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self._cached.append(df)
        return df

    def release(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()


@dataclass
class ChainResult:
    """What a chain of steps did to a frame."""

    kept: "DataFrame"  # surviving rows (persisted; call release() when written)
    rows_in: int  # rows before the first step
    rows_out: int  # rows after the last step
    counts_by_reason: dict[str, int] = field(default_factory=dict)  # every reason of the chain, 0 included
    dropped_samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # first rows by id, per reason
    metrics: dict[str, int] = field(default_factory=dict)  # counters of the batch steps (e.g. PII found)
    dropped: "DataFrame | None" = None  # every dropped row with its reason (persisted), or None
    step_stats: list[dict[str, Any]] = field(default_factory=list)  # per step: name, params, rows in, drops
    context: StepContext = field(default_factory=StepContext)

    def release(self) -> None:
        """Drop the cached frames."""
        self.kept.unpersist()
        if self.dropped is not None:
            self.dropped.unpersist()
        self.context.release()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key.startswith("_"):
            continue
        if isinstance(value, (datetime, date)):
            value = value.isoformat()
        elif key == TEXT and isinstance(value, str) and len(value) > SAMPLE_TEXT_CHARS:
            value = value[:SAMPLE_TEXT_CHARS] + "…"
        out[key] = value
    return out


def run_steps(df: "DataFrame", steps: Sequence[Step], *, samples_per_reason: int = 5,
              context: StepContext | None = None) -> ChainResult:
    """Run steps in order; count dropped rows per reason and sample a few per reason.

    Batch steps run fused (see :func:`plan`); each fused pass's output is persisted once, and the
    counts and counters of all its steps come from one aggregation over it.

    Args:
        df: input rows (must have ``id`` and ``text``).
        steps: the chain, e.g. from :meth:`StepRegistry.build`.
        samples_per_reason: dropped rows kept per reason (smallest ids first), for tracing.
        context: index of other partitions and cache registry; default: an empty one.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    context = context or StepContext()
    owns_input_cache = not df.storageLevel.useMemory and not df.storageLevel.useDisk
    if owns_input_cache:
        df = context.persist(df)
    rows_in = df.count()

    kept = df
    dropped_frames: list["DataFrame"] = []  # every stage's dropped rows, tagged with the stage's number
    frame_stages: set[int] = set()  # stages whose drops are counted from the cached dropped rows
    counts: dict[str, int] = {}
    metrics: dict[str, int] = {}
    for step in steps:
        prep = step.prepare()
        for reason in (*step.reasons, *(prep.reasons if prep else ())):
            counts.setdefault(reason, 0)
    for number, stage in enumerate(plan(steps)):
        if isinstance(stage, FusedPass):
            marked = context.persist(stage.apply(kept))
            metric_cols = [f"{METRIC_PREFIX}{m}" for m in stage.metrics]
            aggs = [F.count(F.lit(1)).alias("_rows")] + [F.sum(c).alias(c) for c in metric_cols]
            for row in marked.groupBy(REASON).agg(*aggs).collect():
                if row[REASON] is not None:
                    counts[row[REASON]] = counts.get(row[REASON], 0) + row["_rows"]
                for c in metric_cols:
                    name = c[len(METRIC_PREFIX):]
                    metrics[name] = metrics.get(name, 0) + int(row[c] or 0)
            marked = marked.drop(*metric_cols)
            kept = marked.where(F.col(REASON).isNull()).drop(REASON)
            dropped_frames.append(marked.where(F.col(REASON).isNotNull()).withColumn(STAGE, F.lit(number)))
        else:
            kept, dropped = stage.apply(kept, context)
            if dropped is not None:
                dropped_frames.append(dropped.withColumn(STAGE, F.lit(number)))
                frame_stages.add(number)

    kept = kept.persist()
    rows_out = kept.count()

    samples: dict[str, list[dict[str, Any]]] = {}
    dropped_all = None
    if dropped_frames:
        dropped_all = union_frames(dropped_frames)
        # counts, samples and the excluded-rows output all read the dropped rows: cache them
        dropped_all = dropped_all.persist()
        if frame_stages:
            frame_rows = dropped_all.where(F.col(STAGE).isin(sorted(frame_stages)))
            for row in frame_rows.groupBy(REASON).count().collect():
                counts[row[REASON]] = counts.get(row[REASON], 0) + row["count"]
        if samples_per_reason > 0:
            # a rank filter alone, so Spark keeps only the top rows per reason before shuffling
            order = Window.partitionBy(REASON).orderBy(F.col("id").asc_nulls_last(), F.col(TEXT).asc_nulls_last())
            ranked = (dropped_all.withColumn("_rank", F.row_number().over(order))
                      .where(F.col("_rank") <= samples_per_reason))
            for row in ranked.orderBy(REASON, "_rank").collect():
                record = row.asDict()
                samples.setdefault(record[REASON], []).append(_jsonable(record))

    if rows_in != rows_out + sum(counts.values()):
        log.warning("rows_in %d != rows_out %d + dropped %d: a step added or lost rows",
                    rows_in, rows_out, sum(counts.values()))
    return ChainResult(kept=kept, rows_in=rows_in, rows_out=rows_out, counts_by_reason=counts,
                        dropped_samples=samples, metrics=metrics, dropped=dropped_all,
                        step_stats=step_stats(steps, counts, rows_in), context=context)


def union_frames(frames: Sequence["DataFrame"]) -> "DataFrame | None":
    """The rows of every frame, matched by column name (a column some lack is null there); None for none."""
    if not frames:
        return None
    out = frames[0]
    for more in frames[1:]:
        out = out.unionByName(more, allowMissingColumns=True)
    return out


def step_stats(steps: Sequence[Step], counts: Mapping[str, int], rows_in: int) -> list[dict[str, Any]]:
    """Per step, in chain order: name, params, rows reaching it, rows it dropped per reason."""
    out, alive = [], rows_in
    for step in steps:
        reasons = list(step.reasons) + list(step.prepare().reasons if step.prepare() else ())
        dropped = {r: int(counts.get(r, 0)) for r in reasons}
        out.append({"name": step.name, "params": step.params(), "rows_in": alive, "dropped": dropped})
        alive -= sum(dropped.values())
    return out
