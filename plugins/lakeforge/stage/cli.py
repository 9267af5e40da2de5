"""The command line shared by the Spark entry points (``jobs/curate.py``, ``jobs/features.py``).

    spark-submit jobs/<stage>.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

The flags become one :class:`~lakeforge.stage.run.StageRun` (each attempt gets its own run id: the
Airflow run id plus a random suffix) and :class:`~lakeforge.stage.spark_io.SparkStageOptions`, which
go to the stage's ``run``. Logs go to stderr; the last stdout line is the JSON summary of the
published commit (:func:`~lakeforge.stage.run.summarize`). What no retry can fix — a failed
data-quality gate, a partition whose columns do not match the pipeline, a bad pipeline file or
partition — exits with status :data:`~lakeforge.stage.run.GATE_FAILED_EXIT` (the Airflow task then
fails without retries) after printing ``{"error": "quality_gate"|"schema"|"config", "message": …}``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Callable, Optional

import typer

from lakeforge.lake import Commit
from lakeforge.stage.run import GATE_FAILED_EXIT, StageRun, summarize
from lakeforge.stage.spark_io import SparkStageOptions

#: ``run(stage, options)`` of a Spark stage, returning the published commit.
SparkStage = Callable[[StageRun, SparkStageOptions], Commit]


def spark_stage_app(name: str, run: SparkStage) -> typer.Typer:
    """A typer app running ``run`` (the stage called ``name``) on one partition."""
    app = typer.Typer(add_completion=False, help=f"Run the {name} stage on one partition.")

    @app.command()
    def main(
        pipeline: str = typer.Option(..., help="pipeline name (pipelines/<name>.yaml) or YAML path"),
        partition: str = typer.Option(..., help="YYYY-MM-DD, or YYYY-MM-DDTHH for hourly pipelines"),
        run_id: Optional[str] = typer.Option(None, help="Airflow's run id; a random suffix makes each attempt's prefix unique"),
        master: Optional[str] = typer.Option(None, help="Spark master URL; default: spark-submit's"),
    ) -> None:
        from lakeforge.errors import ConfigError, DataQualityError, SchemaMismatchError

        try:
            stage = StageRun.create(pipeline, partition, run_id, per_attempt=True)
            commit = run(stage, SparkStageOptions(master=master))
        except (DataQualityError, SchemaMismatchError, ConfigError) as exc:  # the same input fails the same way
            kind = {DataQualityError: "quality_gate", SchemaMismatchError: "schema"}.get(type(exc), "config")
            logging.getLogger(__name__).error("%s", exc)
            print(json.dumps({"error": kind, "message": str(exc)}), flush=True)
            raise typer.Exit(GATE_FAILED_EXIT) from None
        print(json.dumps(summarize(commit, stage.lake)), flush=True)

    return app


def main(name: str, run: SparkStage) -> None:
    """Entry: configure logging to stderr (stdout's last line is the summary), run the stage's CLI."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    spark_stage_app(name, run)()
