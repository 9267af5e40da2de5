"""The configuration of one training run (:class:`TrainConfig`) and what it returns (:class:`TrainResult`).

The pipeline and the partition are not part of it: they come with the
:class:`~lakeforge.stage.run.StageRun` that :func:`lakeforge.train.run` takes first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lakeforge.config import ModelSpec, Settings, TrainProfile
from lakeforge.errors import ConfigError

if TYPE_CHECKING:
    from lakeforge.stage.run import StageRun


def _default_tracking_uri() -> str:
    return Settings.load().require("mlflow_uri")


def _default_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


class TrainConfig(BaseModel):
    """How to train, given the stage (pipeline, partition, lake): logged whole to MLflow as params,
    saved in checkpoints. Unknown fields are refused (``pipeline``/``partition`` live in the StageRun)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Literal["cpu", "gpu"] = Field(default_factory=_default_profile)  # hyper-parameter set; gpu iff CUDA
    max_steps: int | None = Field(default=None, ge=1)  # override of the profile's optimizer steps (smoke runs)
    overrides: dict[str, Any] = Field(default_factory=dict)  # profile fields to override, e.g. {"max_length": 32}
    tracking_uri: str = Field(default_factory=_default_tracking_uri)  # MLflow server (Settings.mlflow_uri)
    experiment: str | None = None  # MLflow experiment; None -> the pipeline name (see names())
    run_name: str | None = None  # MLflow run name; None -> <pipeline>-<partition path>-<profile> (see names())
    log_interval: int | None = Field(default=None, ge=1)  # per-step metrics every N steps; None: 1 on CPU, 10 on GPU
    cpu_threads: int | None = Field(default=None, ge=1)  # torch threads per process on CPU; None -> cpu_threads_default()
    airflow_dag_id: str | None = Field(default_factory=lambda: os.environ.get("AIRFLOW_CTX_DAG_ID"))  # launching DAG
    airflow_run_id: str | None = Field(default_factory=lambda: os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"))  # its run
    airflow_try_number: int | None = Field(  # the task's try (1, 2, … on retries)
        default_factory=lambda: int(os.environ["AIRFLOW_CTX_TRY_NUMBER"]) if os.environ.get("AIRFLOW_CTX_TRY_NUMBER") else None)
    run_key: str | None = None  # checkpoint key; None -> <dag_id>/<run_id> in Airflow, else a fresh one per run
    checkpoint_dir: str | None = None  # local directory for checkpoints instead of the lake (tests, bench)
    resume: bool = True  # continue from the last checkpoint of run_key (False: start over, dropping it)
    baseline: bool | None = None  # train + register the TF-IDF baseline; None -> the model spec's `baseline`
    register_model: bool = True  # log the model to MLflow and register a version (the benchmark turns it off)
    keep_checkpoints: bool = False  # keep the checkpoints after success (default: delete, keep DONE.json)

    def names(self, stage: StageRun) -> tuple[str, str]:
        """``(experiment, run_name)`` of the run in MLflow: the configured ones, else the pipeline's name
        and ``<pipeline>-<partition path>-<profile>``."""
        experiment = self.experiment if self.experiment is not None else stage.pipeline.name
        run_name = self.run_name if self.run_name is not None else \
            f"{stage.pipeline.name}-{stage.partition.path}-{self.profile}"
        return experiment, run_name

    def effective_profile(self, spec: ModelSpec) -> TrainProfile:
        """The profile's hyper-parameters with ``overrides`` and ``max_steps`` applied (validated)."""
        base = getattr(spec, self.profile).model_dump()
        unknown = set(self.overrides) - set(base)
        if unknown:
            raise ConfigError(f"unknown profile fields {sorted(unknown)}; known: {sorted(base)}")
        update = {**self.overrides, **({"max_steps": self.max_steps} if self.max_steps else {})}
        try:
            return TrainProfile.model_validate({**base, **update})
        except Exception as exc:
            raise ConfigError(f"invalid profile overrides {update}: {exc}") from exc


@dataclass
class TrainResult:
    """What a training run produced (the same on every rank)."""

    run_id: str  # MLflow run id of the fine-tune
    model_uri: str  # models:/<registered_name>/<version>
    version: str  # registered model version of the fine-tune
    metrics: dict[str, float] = field(default_factory=dict)  # val_accuracy, test_accuracy, train_loss, …
    candidates: list[dict[str, Any]] = field(default_factory=list)  # versions to gate: [{kind, version, run_id, …}]
    resumed_from_step: int = 0  # 0: trained from scratch; else the checkpoint step it continued from

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_uri": self.model_uri, "version": self.version, "metrics": self.metrics,
                "candidates": self.candidates, "resumed_from_step": self.resumed_from_step}
