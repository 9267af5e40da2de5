"""Exact resume: which checkpoint store a run uses, what a checkpoint saves, and how it is restored.

A run's store (:func:`open_store`) is keyed by ``config.run_key``, else the Airflow dag/run ids
(:func:`lakeforge.train.summary.run_key`), else a fresh key per run. A checkpoint is only valid for
the same hyper-parameters, model and data (:func:`fingerprint`); a mismatch starts fresh, with a new
MLflow run. :func:`save_checkpoint` and :func:`restore` are each other's inverse: model, optimizer,
scheduler, the loop's :class:`~lakeforge.train.loop.LoopState`, the best weights and, per rank, the
RNG states and the data position (so the resumed stream continues with the very next batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lakeforge.config import ModelSpec, TrainProfile
from lakeforge.train import checkpoint as ckpt
from lakeforge.train import dist
from lakeforge.train.config import TrainConfig
from lakeforge.train.loop import LoopState
from lakeforge.train.summary import run_key

log = logging.getLogger(__name__)


def fingerprint(profile: TrainProfile, spec: ModelSpec, data_refs: list[dict[str, str]]) -> str:
    """What a checkpoint is only valid for: hyper-parameters, model and data. A mismatch starts fresh."""
    body = json.dumps({"profile": profile.model_dump(), "base": spec.base, "pooling": spec.pooling,
                       "labels": spec.labels, "data": [r.get("sha256") or f"{r.get('table')}@{r.get('snapshot_id')}"
                                                              for r in data_refs]}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def open_store(config: TrainConfig, pipeline: str, partition, lake) -> tuple[ckpt.CheckpointStore | None, str]:
    """``(store, run key)``: the run's checkpoint store — under ``config.checkpoint_dir`` if set, else in
    ``lake`` — or None (no lake and no checkpoint_dir: the caller's own table, not checkpointed)."""
    key = config.run_key or run_key(config.airflow_dag_id, config.airflow_run_id)
    if key is None:  # outside Airflow without an explicit key: a fresh run every time
        key = f"manual/{uuid.uuid4().hex[:12]}"
    if config.checkpoint_dir:
        from pyarrow import fs as pafs

        base = str(Path(config.checkpoint_dir).resolve() / key)
        return ckpt.CheckpointStore(pafs.LocalFileSystem(), base, base), key
    if lake is None:
        return None, key
    return ckpt.store_for(lake, pipeline, partition, key), key


@dataclass
class Start:
    """Where a run starts: the loop's state (step 0 when fresh) and the MLflow run to continue."""

    state: LoopState
    mlflow_run_id: str | None  # the run of the checkpoint (or of RUN.json); None: a new MLflow run
    attempts: int  # tries RUN.json counted before this one


def restore(store: ckpt.CheckpointStore | None, config: TrainConfig, procs: dist.Processes, print_fp: str,
            model: torch.nn.Module, optimizer, scheduler, profile: TrainProfile, key: str) -> Start:
    """Load the last committed checkpoint of ``store`` into the model, optimizer, scheduler and RNGs.

    Without one (no store, ``resume`` off, nothing committed, another fingerprint) the run starts at
    step 0, and a store's stale checkpoints are cleared first (a fresh start must not find a stale
    LATEST later).
    """
    state: dict[str, Any] | None = None
    run_info = (store.read_json(ckpt.RUN) if store is not None and config.resume else None) or {}
    latest = store.latest() if store is not None and config.resume else None
    if latest:
        state = store.read_state(f"{latest['dir']}/{ckpt.STATE}")
        if state.get("fingerprint") != print_fp:
            log.warning("checkpoint %s/%s was made for other hyper-parameters or data: starting fresh",
                        store.uri, latest["dir"])
            state, run_info = None, {}  # a new MLflow run too: the old one's params describe the old config
    if store is not None and state is None:
        dist.barrier(procs)
        if procs.master:
            store.clear_checkpoints()
    loop = LoopState()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loop.step = loop.resumed_from = int(state["step"])
        loop.record.update(json.loads(state["loop"]))
        if state.get("has_best"):
            loop.best = store.read_state(ckpt.BEST)
        try:
            mine = store.read_state(f"{latest['dir']}/rank-{procs.rank}.pt")
        except FileNotFoundError:
            mine = None
        if mine is not None and int(mine["world"]) == procs.world:
            ckpt.set_rng_state(mine["rng"])
            loop.position = int(mine["batches"])
        else:  # other world size: same weights and optimizer, but the data order cannot continue exactly
            log.warning("resuming %s at step %d with %d ranks (checkpoint had another count): inexact data order",
                        key, loop.step, procs.world)
            loop.position = loop.step * profile.grad_accum
        log.info("resuming %s from step %d (%s)", key, loop.step, store.uri)
    return Start(state=loop, mlflow_run_id=(state or {}).get("mlflow_run_id") or run_info.get("mlflow_run_id"),
                 attempts=int(run_info.get("attempts", 0)))


def save_checkpoint(store: ckpt.CheckpointStore, procs: dist.Processes, state: LoopState, model: torch.nn.Module,
                    optimizer, scheduler, print_fp: str, mlflow_run_id: str | None, config: TrainConfig) -> None:
    """Every rank writes its RNG + data position; then rank 0 snapshots the rest and commits (async)."""
    store.save_rank(state.step, procs.rank, {"rng": ckpt.rng_state(), "batches": state.position, "world": procs.world})
    dist.barrier(procs)  # rank files of this step exist before LATEST can point at it
    if procs.master:
        saved = {"step": state.step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "loop": json.dumps(state.record), "fingerprint": print_fp,
                 "mlflow_run_id": mlflow_run_id or "", "has_best": state.best is not None, "world": procs.world,
                 "config": config.model_dump_json()}
        store.commit_async(state.step, saved, best=state.best if state.best_dirty else None)


def record_attempt(store: ckpt.CheckpointStore | None, mlflow_run_id: str, attempts: int, key: str) -> None:
    """``RUN.json``: the MLflow run of this training run, so a retry continues it (rank 0)."""
    if store is not None:
        store.write_json(ckpt.RUN, {"mlflow_run_id": mlflow_run_id, "attempts": attempts, "run_key": key})
