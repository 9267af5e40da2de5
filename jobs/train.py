"""Entry point of the training task: ``torchrun --standalone --nproc-per-node=N jobs/train.py …``.

Builds the :class:`~lakeforge.stage.run.StageRun` once from ``--pipeline``/``--partition`` (run id:
``AIRFLOW_CTX_DAG_RUN_ID`` when set), parses the other flags into a
:class:`lakeforge.train.TrainConfig`, calls ``lakeforge.train.run(stage, config)``, and prints a
one-line JSON summary (run_id, version, metrics, candidates, partition) as the last line of stdout on
rank 0, which the Airflow task pushes to XCom for ``promote_model``. Runs as a plain
``python jobs/train.py …`` too.

Inside Airflow, ``AIRFLOW_CTX_DAG_ID``/``AIRFLOW_CTX_DAG_RUN_ID`` key the run's checkpoints: a retry
of the task resumes from the last one. Under torchrun each worker asks the kernel to kill it when
torchrun dies, so a ``kill -9`` of the launcher leaves no worker behind.
"""

from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

import typer
import yaml

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def parse_overrides(pairs: list[str]) -> dict:
    """``["max_length=32", "cpu_bf16=false"]`` -> ``{"max_length": 32, "cpu_bf16": False}`` (YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
def main(
    pipeline: str = typer.Option(..., help="pipeline name: pipelines/<name>.yaml"),
    partition: str = typer.Option(..., help="features partition, e.g. 2026-11-23 or dt=2026-11-23/hour=05"),
    max_steps: Optional[int] = typer.Option(None, help="override the profile's optimizer steps"),
    run_name: Optional[str] = typer.Option(None, help="MLflow run name (default <pipeline>-<partition>-<profile>)"),
    profile: Optional[str] = typer.Option(None, help="cpu | gpu (default: gpu iff CUDA is available)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow server (default: LAKEFORGE_MLFLOW_URI / lakeforge up)"),
    set_: List[str] = typer.Option([], "--set", help="override a profile field: --set max_length=64 (repeatable)"),
    run_key: Optional[str] = typer.Option(None, help="checkpoint key (default: <dag_id>/<run_id> in Airflow)"),
    resume: bool = typer.Option(True, help="continue from the run key's last checkpoint (--no-resume: start over)"),
) -> None:
    """Fine-tune the pipeline's model on one features partition and register a new version."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lakeforge.stage.run import StageRun
    from lakeforge.train import TrainConfig, run  # heavy (torch, transformers): after arg parsing
    from lakeforge.train.dist import die_with_parent

    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: never outlive it (run() does it too)
        die_with_parent()
    stage = StageRun.create(pipeline, partition, os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or None)
    overrides = {k: v for k, v in {"max_steps": max_steps, "run_name": run_name, "profile": profile,
                                   "tracking_uri": tracking_uri, "run_key": run_key}.items() if v is not None}
    config = TrainConfig(overrides=parse_overrides(set_), resume=resume, **overrides)
    result = run(stage, config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({**result.as_dict(), "partition": stage.partition.path}), flush=True)


if __name__ == "__main__":
    app()
