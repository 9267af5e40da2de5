"""Entry point: build the training rows of one curated partition and publish them as ``features``.

    spark-submit jobs/features.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

A thin CLI over :func:`lakeforge.features.run`; the last stdout line is a JSON summary (manifest
path, rows, dropped counts) that the Airflow task pushes to XCom.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    pipeline: str = typer.Option(..., help="pipeline name (pipelines/<name>.yaml) or YAML path"),
    partition: str = typer.Option(..., help="YYYY-MM-DD, or YYYY-MM-DDTHH for hourly pipelines"),
    run_id: Optional[str] = typer.Option(None, help="Airflow's run id; a random suffix makes each attempt's prefix unique"),
    master: Optional[str] = typer.Option(None, help="Spark master URL; default: spark-submit's"),
) -> None:
    """Build features for one partition and print a one-line JSON summary."""
    from lakeforge.curate import summarize
    from lakeforge.features import FeaturesConfig, run
    from lakeforge.lake import new_run_id

    config = FeaturesConfig(pipeline=pipeline, partition=partition, run_id=new_run_id(run_id), master=master)
    manifest = run(config)
    print(json.dumps(summarize(manifest)), flush=True)


if __name__ == "__main__":
    # logs go to stderr: stdout's last line is the JSON summary the Airflow task reads
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    app()
