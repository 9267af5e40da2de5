"""Entry point: lake maintenance of one pipeline's tables (partition tags, snapshot expiry, orphan files).

    spark-submit jobs/maintain.py --pipeline movie_reviews [--snapshot-age-days 7] [--orphan-age-days 3]

A thin CLI over :func:`lakeforge.maintenance.maintain`; the last stdout line is a JSON report per table.
"""

import json
from datetime import timedelta

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(pipeline: str = typer.Option(..., help="pipeline name or YAML path"),
         snapshot_age_days: float = typer.Option(7.0, help="expire snapshots older than this (tagged ones are kept)"),
         orphan_age_days: float = typer.Option(3.0, help="remove unreferenced files older than this"),
         retain_last: int = typer.Option(5, help="snapshots kept per table however old")) -> None:
    from lakeforge.config import PipelineConfig, Settings
    from lakeforge.lake import Lake
    from lakeforge.maintenance import maintain
    from lakeforge.spark import spark_session

    config = PipelineConfig.load(pipeline)
    settings = Settings.load()
    spark = spark_session(f"maintain-{config.name}", settings)
    report = maintain(spark, Lake(settings), config, snapshot_age=timedelta(days=snapshot_age_days),
                      orphan_age=timedelta(days=orphan_age_days), retain_last=retain_last)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    app()
