"""Training: fine-tune the pipeline's text classifier on one features partition, resumably.

``torchrun jobs/train.py …`` builds a :class:`~lakeforge.stage.run.StageRun` and calls
``run(stage, config)`` (:func:`lakeforge.train.job.run`) with a :class:`TrainConfig`. The modules:

* :mod:`~lakeforge.train.job` — the stage: features -> resume -> MLflow run -> loop -> final
  evaluation -> candidates -> ``DONE.json``;
* :mod:`~lakeforge.train.loop` — the loop itself (AdamW, warmup + decay, clipping, accumulation,
  bf16, DDP, compile, validation with early stopping, checkpoints) and :func:`evaluate`;
* :mod:`~lakeforge.train.data` — stream the features Parquet from the lake (pyarrow dataset ->
  IterableDataset sharded by rank and worker), length bucketing, dynamic padding, exact skip on resume;
* :mod:`~lakeforge.train.model` — the MiniLM encoder under a classification head, through the HF
  Auto classes, and the MLflow pyfunc that serves it;
* :mod:`~lakeforge.train.resume`, :mod:`~lakeforge.train.checkpoint` — exact resume; checkpoints in the lake;
* :mod:`~lakeforge.train.tracking` — the MLflow run: params, lineage tags, plots, registration;
* :mod:`~lakeforge.train.baseline` — the TF-IDF + logistic-regression candidate;
* :mod:`~lakeforge.train.summary` — the recorded result (``DONE.json``) and the task summary the
  evaluate stage reads (no torch);
* :mod:`~lakeforge.train.launch` — the ``torchrun`` command of the DAG's task (no torch);
* :mod:`~lakeforge.train.dist` — processes and devices.

Heavy modules (torch, transformers, mlflow) load on first use of a name below, so importing the
package stays cheap for callers that only need the config, the launch command or the summary.
"""

from __future__ import annotations

import importlib
import os

# Nothing may download from a model hub: the base weights come from a registry package on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lakeforge.train.config import TrainConfig, TrainResult  # noqa: E402

_LAZY = {
    "run": "lakeforge.train.job",
    "configure_optimizer": "lakeforge.train.loop",
    "evaluate": "lakeforge.train.loop",
    "WarmupDecay": "lakeforge.train.loop",
    "MeanPooledBertForSequenceClassification": "lakeforge.train.model",
    "MeanPooledBertConfig": "lakeforge.train.model",
    "TextClassifierPyfunc": "lakeforge.train.model",  # registered pyfuncs refer to it by this path
    "build_model": "lakeforge.train.model",
    "load_classifier": "lakeforge.train.model",
    "cpu_threads_default": "lakeforge.train.dist",
    "torchrun_command": "lakeforge.train.launch",  # torch-free
    "summary_of": "lakeforge.train.summary",  # torch-free
    "recorded_result": "lakeforge.train.summary",  # torch-free
    "run_key": "lakeforge.train.summary",  # torch-free
}

__all__ = ["TrainConfig", "TrainResult", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lakeforge.train' has no attribute {name!r}")
