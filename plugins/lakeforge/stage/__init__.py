"""The stage contract: what ingest, curate, features, train and evaluate share.

* :mod:`~lakeforge.stage.run` — :class:`StageRun` (pipeline, one parsed partition, run id, settings,
  lake; built once per process), the run-id sanitizer, :func:`summarize` (commit -> summary),
  :data:`GATE_FAILED_EXIT`;
* :mod:`~lakeforge.stage.steps` — the step kinds (:class:`Step`, :class:`RowFilter`,
  :class:`BatchStep`, …) and :class:`StepRegistry`, through which each stage names its steps;
* :mod:`~lakeforge.stage.chain` — :func:`run_steps`: a chain over a Spark DataFrame, fused Arrow
  passes, drop counts per reason;
* :mod:`~lakeforge.stage.text` — Arrow text batches and the word/shingle primitives batch steps share;
* :mod:`~lakeforge.stage.spark_io` — Spark <-> lake reads and writes, :class:`SparkStageOptions`;
* :mod:`~lakeforge.stage.cli` — the command line of the Spark entry points in ``jobs/``.

Only :mod:`~lakeforge.stage.run` is imported here: the others need pyarrow or pyspark.
"""

from lakeforge.stage.run import GATE_FAILED_EXIT, StageRun, new_run_id, safe_run_id, summarize

__all__ = ["GATE_FAILED_EXIT", "StageRun", "new_run_id", "safe_run_id", "summarize"]
