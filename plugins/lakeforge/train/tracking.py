"""What a training run writes to MLflow besides its per-step metrics: the run, params, lineage, plots, models.

Only rank 0 calls these. One MLflow run per training run key (:func:`mlflow_run`): a retry of the
same Airflow task continues it. Logged: the whole config and profile as params (:func:`params`);
system metrics; tags naming the features table and snapshot read (and its inputs' snapshots), the code
version and the Airflow dag/run ids (:func:`lineage_tags`); plots (confusion matrices, training
curves), the curation quality report (:func:`log_artifacts`); the tokenizer and the model as the
lakeforge pyfunc (text in, ``label``/``score`` out) with an explicit signature and input example,
registered as a new version of the pipeline's registered model (:func:`register_finetuned`). Plots
use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import mlflow
import pandas as pd

from lakeforge import code_version
from lakeforge.registry import LABELS_METADATA_KEY

if TYPE_CHECKING:
    from lakeforge.config import ModelSpec, TrainProfile
    from lakeforge.stage.run import StageRun
    from lakeforge.train.config import TrainConfig

log = logging.getLogger(__name__)

INPUT_EXAMPLE = pd.DataFrame({"text": ["A moving, beautifully acted film.", "Dull, predictable and far too long."]})


def flat_params(prefixed: dict[str, dict[str, Any]], extra: dict[str, Any]) -> dict[str, str]:
    """``{"profile": {...}, "model": {...}}`` -> ``{"profile.lr": "1e-4", …}`` plus ``extra``; values as text."""
    params: dict[str, Any] = {}
    for prefix, values in prefixed.items():
        params.update({f"{prefix}.{k}" if prefix else k: v for k, v in values.items()})
    params.update(extra)
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in params.items()}


def lineage_tags(stage: StageRun, config: TrainConfig, key: str, inputs: list | None,
                 upstream: list) -> dict[str, str]:
    """The run's tags: code version, pipeline, partition, run key, the features read (``inputs``) and
    their own inputs (``upstream``), the Airflow dag/run ids."""
    tags = {"lakeforge.code_version": code_version(), "lakeforge.partition": stage.partition.path,
            "lakeforge.pipeline": stage.pipeline.name, "lakeforge.run_key": key,
            "mlflow.source.git.commit": code_version()}
    if inputs is not None:
        tags["lakeforge.inputs"] = json.dumps(inputs)
    if upstream:
        tags["lakeforge.upstream_inputs"] = json.dumps(upstream)
    if config.airflow_dag_id:
        tags["airflow.dag_id"] = config.airflow_dag_id
    if config.airflow_run_id:
        tags["airflow.run_id"] = config.airflow_run_id
    return tags


@contextlib.contextmanager
def mlflow_run(stage: StageRun, config: TrainConfig, tags: dict[str, str], run_id: str | None, key: str,
               master: bool) -> Iterator[str | None]:
    """Rank 0: continue MLflow run ``run_id`` (a retry's) if it still exists, else start a new one in
    the experiment (system metrics on); yields the active run's id and ends it (FAILED on an error).
    Other ranks: yields ``run_id`` and does nothing."""
    if not master:
        yield run_id
        return
    experiment_name, run_name = config.names(stage)
    mlflow.set_tracking_uri(config.tracking_uri)
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(5)  # MLflow's 10 s misses most of a short CPU run
    experiment = mlflow.set_experiment(experiment_name)
    if run_id:
        try:
            mlflow.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s of %s is gone: starting a new one", run_id, key)
            run_id = None
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment.experiment_id,
                          run_name=None if run_id else run_name, tags=None if run_id else tags,
                          log_system_metrics=True) as active:
        yield active.info.run_id


def log_attempt(stage: StageRun, config: TrainConfig, profile: TrainProfile, tags: dict[str, str], attempts: int,
                resumed_from: int, extra: dict[str, Any]) -> None:
    """This try's tags (attempt count, resumed step, Airflow try) and the params of the active run.

    Every try logs the params: MLflow accepts the same values again (a first try may have died
    before logging them) and refuses changed ones, which only an inexact resume has (another world
    size): then a warning, not a failure.
    """
    mlflow.set_tags({**tags, "lakeforge.attempts": str(attempts), "lakeforge.resumed_from_step": str(resumed_from)})
    if config.airflow_try_number:
        mlflow.set_tag("airflow.try_number", str(config.airflow_try_number))
    try:
        mlflow.log_params(params(stage, config, profile, extra))
    except mlflow.exceptions.MlflowException as exc:
        log.warning("continuing MLflow run %s with changed params: %s", mlflow.active_run().info.run_id,
                    str(exc)[:300])


def params(stage: StageRun, config: TrainConfig, profile: TrainProfile, extra: dict[str, Any]) -> dict[str, str]:
    """The run's params: the stage (``pipeline``, ``partition``), the config with its resolved names,
    ``profile.*``, ``model.*`` (the model spec without its profiles), then ``extra``; values as text."""
    experiment, run_name = config.names(stage)
    run = {"pipeline": stage.pipeline.name, "partition": stage.partition.path,
           **config.model_dump(exclude={"overrides", "airflow_try_number"}),  # the try is a tag: it changes per try
           "experiment": experiment, "run_name": run_name, "overrides": json.dumps(config.overrides, sort_keys=True)}
    return flat_params({"": run, "profile": profile.model_dump(),
                        "model": stage.pipeline.model.model_dump(exclude={"cpu", "gpu"})}, extra)


def log_artifacts(record: dict[str, Any], confusion: dict[str, list], labels: Sequence[str], lake,
                  upstream: list[dict[str, str]], report: dict | None) -> None:
    """Training curves and confusion matrices (a plotting failure is only a warning), and the curation
    quality report when the features came from ``lake``."""
    try:
        log_curves(record["history"], record["evals"])
        for split, matrix in confusion.items():
            log_confusion(matrix, labels, split)
    except Exception as exc:  # plots are evidence, not results: a plotting failure must not fail training
        log.warning("could not plot the training curves / confusion matrices: %s", exc)
    if lake is not None and (report or upstream):
        log_quality_report(lake, upstream, report)


def register_finetuned(model, tokenizer, spec: ModelSpec, profile: TrainProfile, tags: dict[str, str],
                       run_id: str) -> str:
    """Log the fine-tuned model (moved to CPU) as the run's pyfunc and register it; its version."""
    return log_finetuned(model.cpu(), tokenizer, name=spec.registered_name, labels=spec.labels,
                         max_length=profile.max_length, tags=tags, run_id=run_id)


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # unnamed: a DataFrame `text` column or a list of strings
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )


def existing_version(name: str, run_id: str, kind: str) -> str | None:
    """A version of ``name`` already registered from MLflow run ``run_id`` (a retry must not add another)."""
    client = mlflow.MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    found = [v for v in versions if (v.tags or {}).get("lakeforge.candidate", kind) == kind]
    return str(max(int(v.version) for v in found)) if found else None


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def log_finetuned(model, tokenizer, *, name: str, labels: Sequence[str], max_length: int,
                  tags: dict[str, str], run_id: str) -> str:
    """Save model + tokenizer, log them as the pyfunc of the active run, register a version (once per run)."""
    import torch
    import transformers

    from lakeforge.train.model import TextClassifierPyfunc

    done = existing_version(name, run_id, "finetuned")
    if done:
        log.info("%s v%s was already registered from run %s (an earlier try): reusing it", name, done, run_id)
        return done
    with tempfile.TemporaryDirectory(prefix="lakeforge-tokenizer-") as tok_dir:
        tokenizer.save_pretrained(tok_dir)  # also on its own: the run's tokenizer/ artifact
        mlflow.log_artifacts(tok_dir, "tokenizer")
    with tempfile.TemporaryDirectory(prefix="lakeforge-model-") as tmp:
        model.save_pretrained(tmp)  # safetensors + config.json (model type -> the Auto class)
        tokenizer.save_pretrained(tmp)  # keeps truncation_side: the server cuts texts like training did
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TextClassifierPyfunc(),
            artifacts={"hf_model": tmp},
            signature=signature(),
            input_example=INPUT_EXAMPLE,
            model_config={"max_length": max_length},
            metadata={LABELS_METADATA_KEY: list(labels)},  # the gate and the server read the label space here
            # explicit requirements: inferring them would load the model once more in a subprocess
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"transformers=={transformers.__version__}",
                              f"mlflow=={mlflow.__version__}", "pandas", "lakeforge"],
        )
    return register(info.model_uri, name, {**tags, "lakeforge.candidate": "finetuned"})


def log_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], split: str) -> None:
    """The confusion matrix of ``split`` (rows: true, columns: predicted, in label-id order) as a PNG plot
    and as JSON (with the per-class precision/recall/F1, :mod:`lakeforge.metrics`), under ``plots/``.

    The plot is sized to the label space, its axes carry the label names (tilted when there are more
    than two or they are long) and its title the split, accuracy and macro-F1.

    Raises:
        ValueError: the matrix is not ``len(labels)`` square.
    """
    from lakeforge.metrics import classification_metrics

    scores = classification_metrics(confusion, labels)  # checks the shape against the label space
    fig = confusion_figure(scores.confusion, scores.labels,
                           f"confusion matrix ({split}): accuracy {scores.accuracy:.3f}, macro-F1 {scores.macro_f1:.3f}")
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, f"plots/confusion_matrix_{split}.png")
    plt.close(fig)
    mlflow.log_dict(scores.as_dict(), f"plots/confusion_matrix_{split}.json")


def confusion_figure(confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str):
    """A matplotlib figure (Agg) of a labelled confusion matrix, sized to ``len(labels)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    longest = max((len(str(x)) for x in labels), default=1)
    tilt = n > 2 or longest > 10
    side = max(4.0, 1.6 + 0.75 * n + (0.06 * longest if tilt else 0.0))
    fig, ax = plt.subplots(figsize=(side + 0.06 * longest, side))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), [str(x) for x in labels], rotation=35 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(n), [str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(r) for r in confusion), default=0)
    size = 10 if n <= 5 else max(6, 10 - (n - 5) // 2)
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=size,
                    color="white" if top and v > top / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def log_curves(history: list[dict[str, float]], evals: list[dict[str, float]]) -> None:
    """Training curves (loss, learning rate, tokens/s, validation) as one PNG under ``plots/``."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [h["loss"] for h in history], label="train loss", lw=1)
    if evals:
        axes[0].plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="val loss")
        ax2 = axes[0].twinx()
        ax2.plot([e["step"] for e in evals], [e["val_accuracy"] for e in evals], "s--", color="tab:green",
                 label="val accuracy")
        ax2.set_ylabel("val accuracy")
    axes[0].set_xlabel("step")
    axes[0].legend(loc="upper right")
    axes[1].plot(steps, [h["lr"] for h in history])
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("step")
    axes[2].plot(steps, [h["tokens_per_s"] for h in history])
    axes[2].set_title("tokens/s")
    axes[2].set_xlabel("step")
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/training_curves.png")
    plt.close(fig)
    mlflow.log_dict({"steps": history, "evals": evals}, "plots/training_curves.json")


def log_quality_report(lake, upstream: list[dict[str, str]], report: dict | None = None) -> list[str]:
    """Log the curation quality report under ``quality_report/`` of the active run.

    The report is ``{"json": "s3://…", "html": "s3://…"}``: the features commit carries the curated
    commit's as ``stats["curate_report"]`` (``report``); without it, the curated commits the features
    commit's ``inputs`` name are read for their ``stats["report"]``. Absent or unreadable reports are
    logged and skipped: the report is evidence, not input.
    """
    logged = []
    reports = [report] if report else []
    for ref in upstream if not report else []:
        try:
            commit = lake.commit_of(ref)
        except Exception as exc:  # the upstream snapshot may have been expired since
            log.warning("cannot read upstream commit %s for its quality report: %s", ref, exc)
            continue
        reports.append((commit.stats or {}).get("report") or {})
    for links in reports:
        for kind, uri in sorted(links.items()):
            if not isinstance(uri, str):
                continue
            try:
                data = lake.read_bytes(uri)
            except Exception as exc:
                log.warning("quality report %s (%s) unreadable: %s", uri, kind, exc)
                continue
            name = uri.rsplit("/", 1)[-1] or f"report.{kind}"
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                path.write_bytes(data)
                mlflow.log_artifact(str(path), "quality_report")
            logged.append(uri)
    return logged
