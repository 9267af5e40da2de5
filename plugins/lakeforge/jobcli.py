"""The command line shared by the Spark entry points (``jobs/curate.py``, ``jobs/features.py``).

    spark-submit jobs/<stage>.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

Logs go to stderr; the last stdout line is a JSON summary (manifest path, rows, dropped counts,
report links). A failed data-quality gate exits with status 3 (the Airflow task then fails without
retries) after printing ``{"error": "quality_gate", "message": …}``.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Optional

import typer

STAGES = {"curate": "CurateConfig", "features": "FeaturesConfig"}
#: Exit status when the stage's data-quality gate failed (lakeforge.operators.GATE_FAILED_EXIT).
GATE_FAILED_EXIT = 3


def spark_stage_app(stage: str) -> typer.Typer:
    """A typer app running ``lakeforge.<stage>.run`` on one partition."""
    if stage not in STAGES:
        raise ValueError(f"unknown Spark stage {stage!r}; known: {sorted(STAGES)}")
    app = typer.Typer(add_completion=False, help=f"Run the {stage} stage on one partition.")

    @app.command()
    def main(
        pipeline: str = typer.Option(..., help="pipeline name (pipelines/<name>.yaml) or YAML path"),
        partition: str = typer.Option(..., help="YYYY-MM-DD, or YYYY-MM-DDTHH for hourly pipelines"),
        run_id: Optional[str] = typer.Option(None, help="Airflow's run id; a random suffix makes each attempt's prefix unique"),
        master: Optional[str] = typer.Option(None, help="Spark master URL; default: spark-submit's"),
    ) -> None:
        from lakeforge.curate import summarize
        from lakeforge.errors import DataQualityError
        from lakeforge.lake import new_run_id

        module = importlib.import_module(f"lakeforge.{stage}")
        config = getattr(module, STAGES[stage])(pipeline=pipeline, partition=partition,
                                                 run_id=new_run_id(run_id), master=master)
        try:
            manifest = module.run(config)
        except DataQualityError as exc:
            logging.getLogger(__name__).error("%s", exc)
            print(json.dumps({"error": "quality_gate", "message": str(exc)}), flush=True)
            raise typer.Exit(GATE_FAILED_EXIT) from None
        print(json.dumps(summarize(manifest)), flush=True)

    return app


def main(stage: str) -> None:
    """Entry: configure logging to stderr (stdout's last line is the summary), run the stage's CLI."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    spark_stage_app(stage)()
