"""The step framework of every Spark stage: the step kinds and the registry a pipeline YAML names
steps by (the runner that applies a chain is :mod:`lakeforge.stage.chain`).

Three kinds of step, all with their thresholds in ``__init__`` and no storage access:

* :class:`TextCleaner` / :class:`RowFilter` — a Spark column expression (cheap JVM work: lengths,
  empties, simple regexes).
* :class:`BatchStep` (:class:`BatchCleaner`, :class:`BatchFilter`) — a function over an Arrow
  batch (:class:`~lakeforge.stage.text.TextBatch`): HTML parsing, NFKC, quality statistics,
  PII, MinHash. The runner (:func:`~lakeforge.stage.chain.run_steps`) *fuses* consecutive batch steps into one ``mapInArrow`` pass, so a
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

from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Sequence

from lakeforge.config import StepSpec
from lakeforge.errors import ConfigError

if TYPE_CHECKING:  # pyspark and pyarrow are heavy: imported by the functions that need them
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from lakeforge.stage.chain import StepContext
    from lakeforge.stage.text import TextBatch

TEXT = "text"
REASON = "reason"
HASH = "text_hash"
#: Prefix of the per-row counter columns a fused pass emits (summed into the report, then dropped).
METRIC_PREFIX = "_metric_"
#: Column tagging each dropped row with the number of the stage that dropped it (internal).
STAGE = "_stage"
#: Longest text kept in a dropped-row sample (samples go into the report).
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

    Implement :meth:`process`, which reads and updates a :class:`~lakeforge.stage.text.TextBatch`.
    Extra output columns are declared in ``output_fields`` (name, Spark SQL type) and per-row
    counters in ``metrics`` (summed into the report under their name).
    """

    output_fields: ClassVar[tuple[tuple[str, str], ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()

    def process(self, batch: "TextBatch") -> None:
        raise NotImplementedError

    def apply(self, df, context=None):
        from pyspark.sql import functions as F

        from lakeforge.stage.chain import FusedPass

        marked = FusedPass([self]).apply(df).drop(*(f"{METRIC_PREFIX}{m}" for m in self.metrics))
        if not self.reasons:
            return marked.drop(REASON), None
        return marked.where(F.col(REASON).isNull()).drop(REASON), marked.where(F.col(REASON).isNotNull())

    # -- pure-Python entry, for tests and the baselines ---------------------------------------------
    def run_texts(self, texts: Sequence[str | None]) -> tuple[list[str | None], list[str | None]]:
        """``(texts after the step, drop reason or None)`` for plain strings, without Spark."""
        import pyarrow as pa

        from lakeforge.stage.text import TextBatch

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

class StepRegistry:
    """The steps a stage's pipeline YAML may name, by :attr:`Step.name`.

    Each stage lists its steps explicitly in one place (``lakeforge.curate.steps.CURATE_STEPS``): a
    new step is one class plus one entry there. Iterating yields the names.
    """

    def __init__(self, stage: str, steps: Sequence[type[Step]] = ()):
        """
        Args:
            stage: the stage the steps belong to (named in error messages).
            steps: the step classes, each with a unique ``name``.
        """
        self.stage = stage
        self._steps: dict[str, type[Step]] = {}
        for cls in steps:
            self.register(cls)

    def register(self, cls: type[Step]) -> type[Step]:
        """Add a step class (usable as a class decorator); a name taken by another class is an error."""
        if cls.name in self._steps and self._steps[cls.name] is not cls:
            raise ConfigError(f"{self.stage} step name {cls.name!r} registered twice ({self._steps[cls.name]} and {cls})")
        self._steps[cls.name] = cls
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __contains__(self, name: object) -> bool:
        return name in self._steps

    def __getitem__(self, name: str) -> type[Step]:
        return self._steps[name]

    def build(self, specs: Sequence[StepSpec | Mapping[str, Any]]) -> list[Step]:
        """Instantiate a chain named in a pipeline's YAML.

        Args:
            specs: ``StepSpec``s (or ``{name, params}`` dicts) in the order they run.
        Raises:
            ConfigError: an unknown step name (the message lists the known ones) or bad parameters.
        """
        steps: list[Step] = []
        for raw_spec in specs:
            spec = raw_spec if isinstance(raw_spec, StepSpec) else StepSpec.model_validate(raw_spec)
            cls = self._steps.get(spec.name)
            if cls is None:
                raise ConfigError(f"unknown {self.stage} step {spec.name!r}; known steps: {sorted(self._steps)}")
            try:
                steps.append(cls(**spec.params))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"bad params {spec.params} for {self.stage} step {spec.name!r}: {exc}") from exc
        return steps


def chain_reasons(steps: Sequence[Step]) -> list[str]:
    """Every drop reason a chain can emit, in chain order."""
    out: list[str] = []
    for step in steps:
        prep = step.prepare()
        out += [r for r in (*step.reasons, *(prep.reasons if prep else ())) if r not in out]
    return out
