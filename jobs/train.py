"""Entry point of the training task: ``torchrun --standalone --nproc_per_node=N jobs/train.py …``.

Parses flags into a :class:`lakeforge.train.TrainConfig`, calls :func:`lakeforge.train.run`, and
prints a one-line JSON summary (run_id, version, metrics) as the last line of stdout on rank 0, which
the Airflow task reads back. Runs as a plain ``python jobs/train.py …`` too.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    pipeline: str = typer.Option(..., help="pipeline name: pipelines/<name>.yaml"),
    partition: str = typer.Option(..., help="features partition, e.g. 2026-11-23 or dt=2026-11-23/hour=05"),
    max_steps: Optional[int] = typer.Option(None, help="override the profile's optimizer steps"),
    run_name: Optional[str] = typer.Option(None, help="MLflow run name (default <pipeline>-<partition>-<profile>)"),
    profile: Optional[str] = typer.Option(None, help="cpu | gpu (default: gpu iff CUDA is available)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow server (default: LAKEFORGE_MLFLOW_URI / lakeforge up)"),
) -> None:
    """Fine-tune the pipeline's model on one features partition and register a new version."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lakeforge.train import TrainConfig, run  # heavy (torch, transformers): after arg parsing

    overrides = {k: v for k, v in {"max_steps": max_steps, "run_name": run_name, "profile": profile,
                                   "tracking_uri": tracking_uri}.items() if v is not None}
    result = run(TrainConfig(pipeline=pipeline, partition=partition, **overrides))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_id": result.run_id, "version": result.version, "model_uri": result.model_uri,
                          "partition": partition, "metrics": result.metrics}), flush=True)


if __name__ == "__main__":
    app()
