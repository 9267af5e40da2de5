"""The step framework of curate: step kinds, the registry the pipeline YAML names steps by, and the
runner that applies a chain, counts drops by reason and keeps a sample of dropped rows.

Three kinds of step, all with their thresholds in ``__init__`` and no storage access:

* :class:`TextCleaner` / :class:`RowFilter` — a Spark column expression (cheap JVM work: lengths,
  empties, simple regexes).
* :class:`BatchStep` (:class:`BatchCleaner`, :class:`BatchFilter`) — a function over an Arrow
  batch (:class:`~lakeforge.curate.text.TextBatch`): HTML parsing, NFKC, quality statistics,
  PII, MinHash. The runner *fuses* consecutive batch steps into one ``mapInArrow`` pass, so a
  chain of eight Python steps costs one trip through the Python worker, and the steps share the
  batch's tokenization. A fused chain behaves exactly like the steps applied one after another:
  each step only drops rows still alive, and a dropped row keeps the text it had when dropped.
* frame steps (:class:`Step` subclasses overriding :meth:`Step.apply`) — whole-frame work with
  shuffles, such as exact and near-duplicate removal. A frame step may need per-row inputs
  computed in Python (MinHash band hashes): it names a batch step in :meth:`Step.prepare`, and
  the runner hoists that into the preceding fused pass.

Every step declares the snake_case ``reasons`` it can drop rows for; the runner reports a count
for each (zeros included), so a report always lists every rule of the chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

from lakeforge.config import StepSpec
from lakeforge.errors import ConfigError

if TYPE_CHECKING:  # pyspark and pyarrow are heavy: imported by the functions that need them
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from lakeforge.curate.text import TextBatch

log = logging.getLogger(__name__)

TEXT = "text"
REASON = "reason"
HASH = "text_hash"
#: Prefix of the per-row counter columns a fused pass emits (summed into the report, then dropped).
METRIC_PREFIX = "_metric_"
#: Column tagging each dropped row with the number of the stage that dropped it (internal).
STAGE = "_stage"
#: Longest text kept in a dropped-row sample (samples go into the manifest and the report).
SAMPLE_TEXT_CHARS = 300


class Step:
    """A cleaning, filter or dedup step (see the module docstring for the kinds).

    Subclasses set ``name`` (the key used in pipeline YAML) and ``reasons`` (the snake_case drop
    reasons they can emit) and take their thresholds in ``__init__``.
    """

    name: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]] = ()
    #: False for steps that only drop rows: a later step's :meth:`prepare` may run before them.
    modifies_text: ClassVar[bool] = True

    def apply(self, df: "DataFrame", context: "StepContext | None" = None) -> tuple["DataFrame", "DataFrame | None"]:
        """Return ``(kept, dropped)``; ``dropped`` has a ``reason`` column, or is None for cleaners."""
        raise NotImplementedError

    def prepare(self) -> "BatchStep | None":
        """A batch step computing per-row inputs this step needs (run in the preceding fused pass)."""
        return None

    def params(self) -> dict[str, Any]:
        """The step's parameters (for reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


class TextCleaner(Step):
    """A step that rewrites the ``text`` column with a Spark expression and drops nothing."""

    def clean(self, text: "Column") -> "Column":
        raise NotImplementedError

    def apply(self, df, context=None):
        from pyspark.sql import functions as F

        return df.withColumn(TEXT, self.clean(F.col(TEXT))), None


class RowFilter(Step):
    """A step that drops rows: :meth:`drop_reason` is a Spark column, null for rows to keep."""

    modifies_text = False

    def drop_reason(self) -> "Column":
        raise NotImplementedError

    def apply(self, df, context=None):
        from pyspark.sql import functions as F

        marked = df.withColumn(REASON, self.drop_reason())
        return marked.where(F.col(REASON).isNull()).drop(REASON), marked.where(F.col(REASON).isNotNull())


class BatchStep(Step):
    """A step over Arrow batches; consecutive ones are fused into one ``mapInArrow`` pass.

    Implement :meth:`process`, which reads and updates a :class:`~lakeforge.curate.text.TextBatch`.
    Extra output columns are declared in ``output_fields`` (name, Spark SQL type) and per-row
    counters in ``metrics`` (summed into the report under their name).
    """

    output_fields: ClassVar[tuple[tuple[str, str], ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()

    def process(self, batch: "TextBatch") -> None:
        raise NotImplementedError

    def apply(self, df, context=None):
        from pyspark.sql import functions as F

        marked = FusedPass([self]).apply(df).drop(*(f"{METRIC_PREFIX}{m}" for m in self.metrics))
        if not self.reasons:
            return marked.drop(REASON), None
        return marked.where(F.col(REASON).isNull()).drop(REASON), marked.where(F.col(REASON).isNotNull())

    # -- pure-Python entry, for tests and the baselines ---------------------------------------------
    def run_texts(self, texts: Sequence[str | None]) -> tuple[list[str | None], list[str | None]]:
        """``(texts after the step, drop reason or None)`` for plain strings, without Spark."""
        import pyarrow as pa

        from lakeforge.curate.text import TextBatch

        batch = TextBatch(pa.RecordBatch.from_pydict({TEXT: pa.array(list(texts), pa.string())}))
        self.process(batch)
        return batch.final_text().to_pylist(), list(batch.reasons)


class BatchCleaner(BatchStep):
    """A batch step that rewrites the text: implement :meth:`clean_texts`."""

    def clean_texts(self, text: "pa.Array") -> "pa.Array":
        raise NotImplementedError

    def process(self, batch):
        batch.text = self.clean_texts(batch.text)


class BatchFilter(BatchStep):
    """A batch step that drops rows: implement :meth:`drop_reasons` (an object array of reason or None)."""

    modifies_text = False

    def drop_reasons(self, batch: "TextBatch"):
        raise NotImplementedError

    def process(self, batch):
        batch.drop(self.drop_reasons(batch))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

STEP_REGISTRY: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step available to pipeline YAML under ``cls.name``."""
    if cls.name in STEP_REGISTRY and STEP_REGISTRY[cls.name] is not cls:
        raise ConfigError(f"step name {cls.name!r} registered twice ({STEP_REGISTRY[cls.name]} and {cls})")
    STEP_REGISTRY[cls.name] = cls
    return cls


def build_steps(specs: Sequence[StepSpec | Mapping[str, Any]]) -> list[Step]:
    """Instantiate the chain named in a pipeline's ``curate:`` list.

    Args:
        specs: ``StepSpec``s (or ``{name, params}`` dicts) in the order they run.
    Raises:
        ConfigError: an unknown step name (the message lists the known ones) or bad parameters.
    """
    import lakeforge.curate  # noqa: F401  (registers the built-in steps)

    steps: list[Step] = []
    for raw_spec in specs:
        spec = raw_spec if isinstance(raw_spec, StepSpec) else StepSpec.model_validate(raw_spec)
        cls = STEP_REGISTRY.get(spec.name)
        if cls is None:
            raise ConfigError(f"unknown curate step {spec.name!r}; known steps: {sorted(STEP_REGISTRY)}")
        try:
            steps.append(cls(**spec.params))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad params {spec.params} for curate step {spec.name!r}: {exc}") from exc
    return steps


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

    added = {f.name: to_arrow_type(f.dataType, timezone="UTC") for f in schema.fields}
    names = [f.name for f in schema.fields]

    def run(batches):
        import numpy as np
        import pyarrow as pa

        from lakeforge.curate.text import TextBatch

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
class CurateResult:
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
              context: StepContext | None = None) -> CurateResult:
    """Run steps in order; count dropped rows per reason and sample a few per reason.

    Batch steps run fused (see :func:`plan`); each fused pass's output is persisted once, and the
    counts and counters of all its steps come from one aggregation over it.

    Args:
        df: input rows (must have ``id`` and ``text``).
        steps: the chain, e.g. from :func:`build_steps`.
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
        dropped_all = _union(dropped_frames)
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
    return CurateResult(kept=kept, rows_in=rows_in, rows_out=rows_out, counts_by_reason=counts,
                        dropped_samples=samples, metrics=metrics, dropped=dropped_all,
                        step_stats=step_stats(steps, counts, rows_in), context=context)


def _union(frames: Sequence["DataFrame"]) -> "DataFrame":
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
