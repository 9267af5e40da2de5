"""The training stage: :func:`run` fine-tunes the pipeline's classifier on one features partition.

``run(stage, config)`` reads top to bottom: processes -> features -> a recorded result? (a retry
after success returns it) -> plan -> model -> resume -> MLflow run -> the loop
(:func:`lakeforge.train.loop.train`) -> final evaluation -> candidates (fine-tune, TF-IDF baseline)
-> ``DONE.json``. A retry of the same Airflow task resumes from the last checkpoint
(:mod:`lakeforge.train.resume`) and continues the same MLflow run (:mod:`lakeforge.train.tracking`).

The features come from the lake of the :class:`~lakeforge.stage.run.StageRun` (the published
features partition of its pipeline and partition), or from a caller's Arrow table (tests, the
benchmark): then the lake is not used at all, and checkpoints go to ``config.checkpoint_dir`` if
set, else nowhere.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch

from lakeforge.config import ModelSpec, TrainProfile
from lakeforge.errors import DataQualityError
from lakeforge.metrics import classification_metrics
from lakeforge.stage.run import StageRun
from lakeforge.train import checkpoint as ckpt
from lakeforge.train import dist, resume, tracking
from lakeforge.train.config import TrainConfig, TrainResult
from lakeforge.train.data import FeatureSource, LengthBucketedStream, Unit, choose_token_source, loader
from lakeforge.train.loop import LoopState, configure_optimizer, evaluate, lr_scheduler, train, wrap
from lakeforge.train.model import build_model
from lakeforge.weights import resolve_weights

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: Validation metrics the loop itself logs at its validation steps (not logged again at the same step).
LOOP_VAL_METRICS = ("val_loss", "val_accuracy")


def run(stage: StageRun, config: TrainConfig, table=None, *, inputs: list[dict[str, str]] | None = None) -> TrainResult:
    """Train (or resume), evaluate, log and register one model; return the same result on every rank.

    Args:
        stage: the pipeline (model spec, profiles), the features partition and the lake it is read from.
        config: how to train.
        table: features as an Arrow table (``id, text|input_ids, label, split``) instead of the lake's.
        inputs: lineage refs of a ``table`` given by the caller (``{table, snapshot_id, partition}`` for
            lake data; ``{path, sha256}`` for anything else).
    """
    procs = dist.setup(config.cpu_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="lakeforge-train-") as tmp:
            return _run(stage, config, procs, table, inputs, Path(tmp))
    finally:
        dist.teardown(procs)


@dataclass
class Features:
    """The features a run trains on, their lineage and identity."""

    source: FeatureSource
    inputs: list[dict[str, Any]] | None  # logged as the run's lakeforge.inputs (table, snapshot_id, partition)
    upstream: list[dict[str, Any]]  # the features commit's own inputs (the curated snapshot)
    lake: Any  # the lake they came from; None: the caller's table
    refs: list[dict[str, Any]]  # what the checkpoint fingerprint hashes
    stats: dict[str, Any]  # the features commit's stats (tokenization, the curation report)
    token_source: str = ""  # why input_ids or text
    units: dict[str, list[Unit]] = field(default_factory=dict)  # per split: this run's plan
    rows: dict[str, int] = field(default_factory=dict)  # per split


def _run(stage: StageRun, config: TrainConfig, procs: dist.Processes, table, inputs, tmp: Path) -> TrainResult:
    spec = stage.pipeline.model
    profile = config.effective_profile(spec)
    device = procs.device
    bf16 = (profile.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()) or \
           (profile.cpu_bf16 and device.type == "cpu" and dist.cpu_has_native_bf16())
    log_interval = config.log_interval or (10 if device.type == "cuda" else 1)

    data = open_features(stage, profile, table, inputs, tmp)
    store, key = resume.open_store(config, stage.pipeline.name, stage.partition, data.lake)
    if store is not None and config.resume:
        done = store.read_json(ckpt.DONE)
        if done:  # this task already finished (e.g. killed after registering): same result, no training
            log.info("training %s already finished (%s): returning its result", key, store.uri)
            return TrainResult(**done)
    plan(data, stage, profile, procs)
    base, tokenizer, raw_model, optimizer, scheduler = build(spec, profile, device)
    print_fp = resume.fingerprint(profile, spec, data.refs)
    start = resume.restore(store, config, procs, print_fp, raw_model, optimizer, scheduler, profile, key)
    state = start.state
    model = wrap(raw_model, procs, profile)

    tags = tracking.lineage_tags(stage, config, key, data.inputs, data.upstream)
    with tracking.mlflow_run(stage, config, tags, start.mlflow_run_id, key, procs.master) as mlflow_run_id:
        if procs.master:
            resume.record_attempt(store, mlflow_run_id, start.attempts + 1, key)
            tracking.log_attempt(stage, config, profile, tags, start.attempts + 1, state.resumed_from, {
                "world_size": procs.world, "device": device.type, "bf16_autocast": bf16,
                "torch_threads": torch.get_num_threads(), "base_dir": str(base),
                "n_train": data.rows["train"], "n_validation": data.rows["validation"], "n_test": data.rows["test"],
                "token_source": "input_ids" if data.source.use_input_ids else "text",
                "token_source_why": data.token_source, "run_key": key,
                "num_parameters": sum(p.numel() for p in raw_model.parameters()),
                "checkpoints": store.uri if store is not None else "none",
            })
            log.info("training %s on %s: %d train rows, steps %d..%d x %d x %d ranks, %s%s", spec.base,
                     stage.partition.path, data.rows["train"], state.step, profile.max_steps, profile.batch_size,
                     procs.world, device, " bf16" if bf16 else "")

        def measure(split: str) -> dict[str, Any]:
            stream = LengthBucketedStream(
                data.source, data.units[split], tokenizer=tokenizer, max_length=profile.max_length,
                truncation_side=profile.truncation_side, batch_size=profile.eval_batch_size,
                bucket_batches=profile.bucket_batches, pad_to_multiple_of=profile.pad_to_multiple_of,
                rank=procs.rank, world=procs.world, split=split, shuffle=False, epochs=1, num_labels=len(spec.labels))
            return evaluate(raw_model, stream, procs, bf16, len(spec.labels))

        def checkpoint(at: LoopState) -> None:
            resume.save_checkpoint(store, procs, at, raw_model, optimizer, scheduler, print_fp, mlflow_run_id, config)

        batches = iter(loader(train_stream(data, tokenizer, profile, procs, state.position, len(spec.labels)),
                              profile.num_workers, pin_memory=device.type == "cuda"))
        state = train(model, raw_model, optimizer, scheduler, batches, state, procs=procs, profile=profile,
                      bf16=bf16, log_interval=log_interval,
                      validate=(lambda: measure("validation")) if data.rows["validation"] else None,
                      checkpoint=checkpoint if store is not None else None)
        del batches  # stop DataLoader workers before the final phase
        if store is not None:
            store.wait()  # a failed checkpoint upload fails the run here, not silently

        metrics, confusion, reused_val = final_metrics(state, raw_model, measure, data, stage, profile)
        result = TrainResult(run_id=mlflow_run_id or "", model_uri="", version="", metrics=metrics,
                             resumed_from_step=state.resumed_from)
        if procs.master:
            mlflow.log_metrics({k: v for k, v in metrics.items() if not (reused_val and k in LOOP_VAL_METRICS)},
                               step=state.step)
            tracking.log_artifacts(state.record, confusion, spec.labels, data.lake, data.upstream,
                                   data.stats.get("curate_report"))
            register_candidates(result, config, spec, profile, raw_model, tokenizer, data.source, tags)
            keep_inputs(data, spec.registered_name, result.candidates)
            mlflow.flush_async_logging()
            if store is not None:
                store.write_json(ckpt.DONE, result.as_dict())  # before deleting: a crash now is a retry that returns
                if not config.keep_checkpoints:
                    store.clear_checkpoints()
            log.info("run %s: %s; candidates %s", mlflow_run_id, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                     [c["version"] for c in result.candidates])
    return dist.broadcast(procs, result)


def open_features(stage: StageRun, profile: TrainProfile, table, inputs, tmp: Path) -> Features:
    """The features to stream: the caller's ``table`` (written to a local Parquet file in ``tmp``), else
    the stage's published features partition in its lake; and which token column serves the profile."""
    if table is not None:
        import pyarrow.parquet as pq

        path = tmp / "features.parquet"
        pq.write_table(table, path, row_group_size=max(1, table.num_rows))
        refs = inputs or [{"path": "table", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
        data = Features(FeatureSource([str(path)]), inputs, [], None, refs, {})
    else:
        lake = stage.lake
        commit = lake.read_commit("features", stage.pipeline.name, stage.partition)
        # the data files of the features snapshot: a rerun of features meanwhile changes nothing here
        source = FeatureSource(lake.data_files(commit), lake.fs)
        data = Features(source, [commit.ref], list(commit.inputs), lake, [commit.ref], dict(commit.stats or {}))
    data.source.prefer_input_ids, data.token_source = choose_token_source(
        data.source.has_input_ids, data.stats.get("tokens"), profile.max_length, profile.truncation_side)
    return data


def keep_inputs(data: Features, name: str, candidates: list[dict[str, Any]]) -> None:
    """Tag the snapshots every registered version trained on (features, and the curated and raw
    snapshots they came from) so snapshot expiry keeps them (:meth:`lakeforge.lake.Lake.keep`)."""
    from lakeforge.lake import model_tag

    if data.lake is None:
        return
    for candidate in candidates:
        for ref in data.inputs or []:
            kept = data.lake.keep(ref, model_tag(name, candidate["version"]))
            log.info("%s v%s: kept snapshots %s", name, candidate["version"],
                     ", ".join(f"{c.table}@{c.snapshot_id}" for c in kept))


def plan(data: Features, stage: StageRun, profile: TrainProfile, procs: dist.Processes) -> None:
    """Cut each split into this run's units (train: one shard per rank and DataLoader worker).

    Raises:
        DataQualityError: the features have no train rows.
    """
    shards = {"train": procs.world * max(1, profile.num_workers), "validation": procs.world, "test": procs.world}
    data.units = {split: data.source.plan(split, shards[split]) for split in SPLITS}
    data.rows = {split: sum(u.rows for u in units) for split, units in data.units.items()}
    if data.rows["train"] == 0:
        raise DataQualityError(f"no train rows in features of {stage.where}")


def build(spec: ModelSpec, profile: TrainProfile, device: torch.device):
    """``(base dir, tokenizer, model, optimizer, scheduler)``: a fresh classifier on the base weights,
    its head seeded by ``profile.seed`` (the same on every rank)."""
    from transformers import AutoTokenizer

    base = resolve_weights(spec.base)
    tokenizer = AutoTokenizer.from_pretrained(base, truncation_side=profile.truncation_side)
    torch.manual_seed(profile.seed)  # same head init on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(base, spec.labels, spec.pooling).to(device)
    optimizer = configure_optimizer(model, profile, fused=device.type == "cuda")
    return base, tokenizer, model, optimizer, lr_scheduler(optimizer, profile)


def train_stream(data: Features, tokenizer, profile: TrainProfile, procs: dist.Processes, position: int,
                 num_labels: int) -> LengthBucketedStream:
    """This rank's shuffled, length-bucketed train batches, skipped to batch ``position`` (exact resume)."""
    return LengthBucketedStream(
        data.source, data.units["train"], tokenizer=tokenizer, max_length=profile.max_length,
        truncation_side=profile.truncation_side, batch_size=profile.batch_size,
        bucket_batches=profile.bucket_batches, pad_to_multiple_of=profile.pad_to_multiple_of, seed=profile.seed,
        rank=procs.rank, world=procs.world, split="train", start_batch=position, num_labels=num_labels)


def final_metrics(state: LoopState, raw_model: torch.nn.Module, measure, data: Features, stage: StageRun,
                  profile: TrainProfile) -> tuple[dict[str, float], dict[str, list], bool]:
    """``(metrics, confusion matrices, validation reused?)`` of the final weights — the best ones when
    early stopping kept them — on validation and test, with the loop's totals.

    Per split: ``<val|test>_loss``, ``_accuracy`` and ``_macro_f1`` over the pipeline's label space;
    for test also per class ``test_precision_<label>``, ``test_recall_<label>``, ``test_f1_<label>``
    (labels made metric-safe, :func:`lakeforge.metrics.metric_names`)."""
    record = state.record
    if state.best is not None and profile.early_stopping_patience and record["best_step"] != state.step:
        log.info("restoring the weights of step %d (best val_loss %.4f)", record["best_step"], record["best_val_loss"])
        raw_model.load_state_dict(state.best)
        state.last_val = None
    history = record["history"]
    metrics: dict[str, float] = {
        "train_loss": history[-1]["loss"] if history else float("nan"),
        "train_seconds": record["train_seconds"],
        "train_samples_per_s": record["samples"] / max(1e-9, record["train_seconds"]),
        "train_tokens_per_s": record["tokens"] / max(1e-9, record["train_seconds"]),
        # the whole loop's wall time: data waits, validation and checkpoints included
        "loop_seconds": record["loop_seconds"],
        "loop_samples_per_s": record["samples"] / max(1e-9, record["loop_seconds"]),
        "loop_tokens_per_s": record["tokens"] / max(1e-9, record["loop_seconds"]),
        "samples_trained": float(record["samples"]),
        "padding_share": 1.0 - record["tokens"] / max(1.0, record["padded_tokens"]),
        "steps_trained": float(state.step), "stopped_early": float(state.stopped_early),
        "best_step": float(record["best_step"]),
    }
    confusion: dict[str, list] = {}
    reused_val = False
    for split in ("validation", "test"):
        if not data.rows[split]:
            log.warning("no %s rows in %s: not measured", split, stage.where)
            continue
        if split == "validation" and state.last_val is not None and state.last_val[0] == state.step:
            res = state.last_val[1]  # these weights were just validated (and logged at this step)
            reused_val = True
        else:
            res = measure(split)
        prefix = "val" if split == "validation" else "test"
        scores = classification_metrics(res["confusion"], stage.pipeline.model.labels)
        metrics[f"{prefix}_loss"] = res["loss"]
        metrics.update(scores.as_metrics(prefix, per_class=split == "test"))
        metrics[f"{prefix}_accuracy"] = res["accuracy"]  # the loop's figure (logged by it at validation steps)
        confusion[split] = res["confusion"]
    return metrics, confusion, reused_val


def register_candidates(result: TrainResult, config: TrainConfig, spec: ModelSpec, profile: TrainProfile,
                        raw_model: torch.nn.Module, tokenizer, source: FeatureSource, tags: dict[str, str]) -> None:
    """Rank 0: register the fine-tune and train the baseline; fills ``result``'s version, model URI and
    candidates (baseline first, fine-tune last: the order the gate sees them) and adds
    ``baseline_test_accuracy`` and ``baseline_test_macro_f1`` to its metrics."""
    from lakeforge.train.baseline import train_baseline

    metrics, candidates = result.metrics, []
    if config.register_model:
        result.version = tracking.register_finetuned(raw_model, tokenizer, spec, profile, tags, result.run_id)
        result.model_uri = f"models:/{spec.registered_name}/{result.version}"
    if config.baseline if config.baseline is not None else spec.baseline:
        baseline = train_baseline(source, spec, profile, tags, result.run_id, config.register_model)
        if baseline.get("test_accuracy") is not None and "test_accuracy" in metrics:
            extra = {"baseline_test_accuracy": baseline["test_accuracy"],
                     "beats_baseline": float(metrics["test_accuracy"] > baseline["test_accuracy"])}
            if baseline.get("test_macro_f1") is not None:
                extra["baseline_test_macro_f1"] = baseline["test_macro_f1"]
            mlflow.log_metrics(extra)
            metrics.update({k: v for k, v in extra.items() if k != "beats_baseline"})
        if baseline.get("version"):
            candidates.append(baseline)
    if result.version:
        candidates.append({"kind": "finetuned", "version": result.version, "run_id": result.run_id,
                           "test_accuracy": metrics.get("test_accuracy"), "test_macro_f1": metrics.get("test_macro_f1")})
    result.candidates = candidates
