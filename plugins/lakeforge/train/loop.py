"""The training run: stream features from the lake, fine-tune, checkpoint, evaluate, log, register.

Reads top to bottom in nanoGPT style — ``run(config)``: processes -> data -> model -> optimizer ->
resume -> MLflow -> loop -> final evaluation -> baseline -> registration — with a few named helpers
(:class:`WarmupDecay`, :func:`configure_optimizer`, :func:`evaluate`, :func:`save_checkpoint`).

The loop: AdamW (no decay on biases/LayerNorm, the new head at ``head_lr_scale`` x lr), linear warmup
then linear or cosine decay (``LambdaLR``), gradient accumulation (DDP all-reduces only on the last
micro batch), global-norm clipping, bf16 autocast (CUDA; CPUs with native bf16 when the profile
says so), optional ``torch.compile``, validation every ``eval_interval`` steps with early stopping
on val_loss (the best weights are restored), a tqdm bar (a log line per 5 % when not on a terminal)
with tokens/s, and a resumable checkpoint every ``checkpoint_interval`` steps
(:mod:`lakeforge.train.checkpoint`). A retry of the same Airflow task resumes from the last one and
continues the same MLflow run; after success, a retry returns the recorded result.

Rank 0 alone talks to MLflow: the whole config as params; per-step ``loss``, ``lr``,
``tokens_per_s``, ``samples_per_s``, ``memory_mb``; system metrics; tags linking the features
manifest (and its inputs) with their sha256, the code version and the Airflow dag/run ids; plots
(confusion matrices, training curves), the tokenizer, the curation quality report; the model as a
pyfunc with signature and input example, registered as a version. The TF-IDF baseline is trained on
the same split in a child run and registered too (:mod:`lakeforge.train.baseline`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import torch

from lakeforge import code_version
from lakeforge.config import Partition, PipelineConfig, Settings, TrainProfile
from lakeforge.errors import DataQualityError
from lakeforge.train import checkpoint as ckpt
from lakeforge.train import dist
from lakeforge.train.config import TrainConfig, TrainResult
from lakeforge.train.data import FeatureSource, LengthBucketedStream, choose_token_source, loader
from lakeforge.train.model import build_model, head_parameters, resolve_base

log = logging.getLogger(__name__)


class WarmupDecay:
    """LR multiplier of optimizer step ``k``: linear warmup to 1, then linear or cosine decay to 0.

    A class, not a closure, so ``LambdaLR.state_dict()`` saves its fields and a checkpoint restores them.
    """

    def __init__(self, warmup_steps: int, max_steps: int, schedule: str = "linear"):
        self.warmup_steps, self.max_steps, self.schedule = warmup_steps, max_steps, schedule

    def __call__(self, k: int) -> float:
        if k < self.warmup_steps:
            return (k + 1) / self.warmup_steps
        progress = (k - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)


def configure_optimizer(model: torch.nn.Module, profile: TrainProfile, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with four groups: (encoder, head) x (decayed, not decayed), each at its own peak lr.

    The head learns at ``profile.head_lr_scale`` x lr: a random linear layer can take ~1e-3, the
    encoder at that rate would forget its pretraining. Biases and LayerNorm weights (the 1-D tensors)
    get no weight decay: decaying them towards 0 only fights the normalisation.
    """
    head = [p for p in head_parameters(model) if p.requires_grad]
    head_ids = {id(p) for p in head}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = []
    for params, scale in ((encoder, 1.0), (head, profile.head_lr_scale)):
        groups += [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": profile.weight_decay,
             "lr": profile.lr * scale, "lr_scale": scale},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0,
             "lr": profile.lr * scale, "lr_scale": scale},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=profile.lr, fused=fused)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, stream: LengthBucketedStream, procs: dist.Processes, bf16: bool,
             num_labels: int) -> dict[str, Any]:
    """Loss, accuracy and confusion matrix (rows: truth) of one split, summed over the ranks' shards."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_labels * num_labels, dtype=torch.float64)
    loss_sum = 0.0
    for batch in stream:
        batch = {k: v.to(procs.device, non_blocking=True) for k, v in batch.items()}
        with dist.autocast(procs.device, bf16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        pairs = (batch["labels"] * num_labels + logits.argmax(dim=-1)).cpu()
        confusion += torch.bincount(pairs, minlength=num_labels * num_labels).double()
    total = dist.all_sum(procs, [loss_sum, *confusion.tolist()])
    model.train(was_training)
    matrix = torch.tensor(total[1:]).view(num_labels, num_labels)
    rows = int(matrix.sum())
    return {"loss": total[0] / max(1, rows), "accuracy": float(matrix.diag().sum()) / max(1, rows), "rows": rows,
            "confusion": matrix.long().tolist()}


def memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or this process's resident memory on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def fingerprint(profile: TrainProfile, spec, data_refs: list[dict[str, str]]) -> str:
    """What a checkpoint is only valid for: hyper-parameters, model and data. A mismatch starts fresh."""
    body = json.dumps({"profile": profile.model_dump(), "base": spec.base, "pooling": spec.pooling,
                       "labels": spec.labels, "data": [r.get("sha256") for r in data_refs]}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _open_data(config: TrainConfig, pipeline: PipelineConfig, partition: Partition, table, inputs, lake, tmp: Path):
    """``(source, inputs, upstream, lake, data_refs, stats)``: the features to stream, their lineage and
    identity, and the features manifest's stats (tokenization, the curation report)."""
    if table is not None:  # the caller's Arrow table (tests, benchmark): stream it from a local Parquet file
        import pyarrow.parquet as pq

        path = tmp / "features.parquet"
        pq.write_table(table, path, row_group_size=max(1, table.num_rows))
        refs = inputs or [{"path": "table", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
        return FeatureSource([str(path)]), inputs, [], lake, refs, {}
    from lakeforge.lake import Lake

    lake = lake or Lake(Settings.load())
    manifest, ref = lake.read_input("features", pipeline.name, partition)
    source = FeatureSource([lake.arrow_path(f.path) for f in manifest.files], lake.fs)
    return source, [ref], list(manifest.inputs), lake, [ref], dict(manifest.stats or {})


def _open_store(config: TrainConfig, pipeline: PipelineConfig, partition: Partition, lake):
    """The run's checkpoint store, or None (no lake and no checkpoint_dir)."""
    key = config.run_key or ckpt.run_key(config.airflow_dag_id, config.airflow_run_id)
    if key is None:  # outside Airflow without an explicit key: a fresh run every time
        import uuid

        key = f"manual/{uuid.uuid4().hex[:12]}"
    if config.checkpoint_dir:
        from pyarrow import fs as pafs

        base = str(Path(config.checkpoint_dir).resolve() / key)
        return ckpt.CheckpointStore(pafs.LocalFileSystem(), base, base), key
    if lake is None:
        return None, key
    return ckpt.store_for(lake, pipeline.name, partition, key), key


def run(config: TrainConfig, table=None, *, inputs: list[dict[str, str]] | None = None, lake=None) -> TrainResult:
    """Train (or resume), evaluate, log and register one model; return the same result on every rank.

    Args:
        config: the run's configuration.
        table: features as an Arrow table (``id, text|input_ids, label, split``); None streams the
            published features partition ``config.partition`` of ``config.pipeline`` from the lake.
        inputs: lineage refs (``{path, sha256}``) of a ``table`` given by the caller.
        lake: the lake to read from and checkpoint into (default ``Lake(Settings.load())``).
    """
    pipeline = PipelineConfig.load(config.pipeline)
    procs = dist.setup(config.cpu_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="lakeforge-train-") as tmp:
            return _run(config, pipeline, procs, table, inputs, lake, Path(tmp))
    finally:
        dist.teardown(procs)


def _run(config: TrainConfig, pipeline: PipelineConfig, procs: dist.Processes, table, inputs, lake,
         tmp: Path) -> TrainResult:
    from transformers import AutoTokenizer

    spec = pipeline.model
    profile = config.effective_profile(spec)
    partition = Partition.parse(config.partition, pipeline.partition)
    device, master = procs.device, procs.master
    num_labels = len(spec.labels)
    bf16 = (profile.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()) or \
           (profile.cpu_bf16 and device.type == "cpu" and dist.cpu_has_native_bf16())
    log_interval = config.log_interval or (10 if device.type == "cuda" else 1)

    # -- data: the features manifest's files, streamed ---------------------------------------------------
    source, inputs, upstream, lake, data_refs, stats = _open_data(config, pipeline, partition, table, inputs, lake, tmp)
    source.prefer_input_ids, token_source = choose_token_source(source.has_input_ids, stats.get("tokens"),
                                                                profile.max_length, profile.truncation_side)
    store, key = _open_store(config, pipeline, partition, lake)
    if store is not None and config.resume:
        done = store.read_json(ckpt.DONE)
        if done:  # this task already finished (e.g. killed after registering): same result, no training
            log.info("training %s already finished (%s): returning its result", key, store.uri)
            return TrainResult(**done)
    workers = profile.num_workers
    train_units = source.plan("train", procs.world * max(1, workers))
    val_units = source.plan("validation", procs.world)
    test_units = source.plan("test", procs.world)
    n_rows = {s: sum(u.rows for u in units) for s, units in
              (("train", train_units), ("validation", val_units), ("test", test_units))}
    if n_rows["train"] == 0:
        raise DataQualityError(f"no train rows in features of {pipeline.name} {partition.path}")

    # -- model --------------------------------------------------------------------------------------------
    base = resolve_base(spec.base)
    tokenizer = AutoTokenizer.from_pretrained(base, truncation_side=profile.truncation_side)
    torch.manual_seed(profile.seed)  # same head init on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(base, spec.labels, spec.pooling).to(device)
    optimizer = configure_optimizer(model, profile, fused=device.type == "cuda")
    warmup = math.ceil(profile.warmup_ratio * profile.max_steps) if profile.warmup_ratio > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup, profile.max_steps,
                                                                         profile.lr_schedule))

    # -- resume: the last committed checkpoint of this run key ----------------------------------------------
    print_fp = fingerprint(profile, spec, data_refs)
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
        if master:
            store.clear_checkpoints()  # a fresh start must not find a stale LATEST later
    step, position, best, best_dirty = 0, 0, None, False
    loop_state: dict[str, Any] = {"history": [], "evals": [], "best_val_loss": math.inf, "best_step": 0,
                                  "bad_evals": 0, "train_seconds": 0.0, "loop_seconds": 0.0, "tokens": 0,
                                  "samples": 0, "padded_tokens": 0}
    resumed_from = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = resumed_from = int(state["step"])
        loop_state.update(json.loads(state["loop"]))
        if state.get("has_best"):
            best = store.read_state(ckpt.BEST)
        try:
            mine = store.read_state(f"{latest['dir']}/rank-{procs.rank}.pt")
        except FileNotFoundError:
            mine = None
        if mine is not None and int(mine["world"]) == procs.world:
            ckpt.set_rng_state(mine["rng"])
            position = int(mine["batches"])
        else:  # other world size: same weights and optimizer, but the data order cannot continue exactly
            log.warning("resuming %s at step %d with %d ranks (checkpoint had another count): inexact data order",
                        key, step, procs.world)
            position = step * profile.grad_accum
        log.info("resuming %s from step %d (%s)", key, step, store.uri)

    raw_model = model
    if procs.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if profile.compile:
        model = torch.compile(model, dynamic=True)

    # -- MLflow (rank 0): one run per training run key, continued by retries ----------------------------------
    tags = {"lakeforge.code_version": code_version(), "lakeforge.partition": partition.path,
            "lakeforge.pipeline": pipeline.name, "lakeforge.run_key": key, "mlflow.source.git.commit": code_version()}
    if inputs is not None:
        tags["lakeforge.inputs"] = json.dumps(inputs)
    if upstream:
        tags["lakeforge.upstream_inputs"] = json.dumps(upstream)
    if config.airflow_dag_id:
        tags["airflow.dag_id"] = config.airflow_dag_id
    if config.airflow_run_id:
        tags["airflow.run_id"] = config.airflow_run_id
    run_ctx: Any = contextlib.nullcontext()
    mlflow_run_id = (state or {}).get("mlflow_run_id") or run_info.get("mlflow_run_id")
    if master:
        mlflow.set_tracking_uri(config.tracking_uri)
        if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
            mlflow.set_system_metrics_sampling_interval(5)  # MLflow's 10 s misses most of a short CPU run
        experiment = mlflow.set_experiment(config.experiment)
        if mlflow_run_id:
            try:
                mlflow.MlflowClient().get_run(mlflow_run_id)
            except mlflow.exceptions.MlflowException:
                log.warning("MLflow run %s of %s is gone: starting a new one", mlflow_run_id, key)
                mlflow_run_id = None
        run_ctx = mlflow.start_run(run_id=mlflow_run_id, experiment_id=None if mlflow_run_id else experiment.experiment_id,
                                   run_name=None if mlflow_run_id else config.run_name,
                                   tags=None if mlflow_run_id else tags, log_system_metrics=True)
    with run_ctx as active:
        if master:
            mlflow_run_id = active.info.run_id
            attempts = int(run_info.get("attempts", 0)) + 1
            if store is not None:
                store.write_json(ckpt.RUN, {"mlflow_run_id": mlflow_run_id, "attempts": attempts, "run_key": key})
            mlflow.set_tags({**tags, "lakeforge.attempts": str(attempts), "lakeforge.resumed_from_step": str(resumed_from)})
            if config.airflow_try_number:
                mlflow.set_tag("airflow.try_number", str(config.airflow_try_number))
            # every try logs them: MLflow accepts the same values again (a first try may have died before
            # logging them) and refuses changed ones, which only an inexact resume has (other world size)
            try:
                mlflow.log_params(_params(config, pipeline, profile, {
                    "world_size": procs.world, "device": device.type, "bf16_autocast": bf16,
                    "torch_threads": torch.get_num_threads(), "base_dir": str(base),
                    "n_train": n_rows["train"], "n_validation": n_rows["validation"], "n_test": n_rows["test"],
                    "token_source": "input_ids" if source.use_input_ids else "text", "token_source_why": token_source,
                    "run_key": key,
                    "num_parameters": sum(p.numel() for p in raw_model.parameters()),
                    "checkpoints": store.uri if store is not None else "none",
                }))
            except mlflow.exceptions.MlflowException as exc:
                log.warning("continuing MLflow run %s with changed params: %s", mlflow_run_id, str(exc)[:300])
            log.info("training %s on %s: %d train rows, steps %d..%d x %d x %d ranks, %s%s", spec.base, partition.path,
                     n_rows["train"], step, profile.max_steps, profile.batch_size, procs.world, device,
                     " bf16" if bf16 else "")

        def eval_stream(units, split):
            return LengthBucketedStream(source, units, tokenizer=tokenizer, max_length=profile.max_length,
                                        truncation_side=profile.truncation_side, batch_size=profile.eval_batch_size,
                                        bucket_batches=profile.bucket_batches, pad_to_multiple_of=profile.pad_to_multiple_of,
                                        rank=procs.rank, world=procs.world, split=split, shuffle=False, epochs=1,
                                        num_labels=num_labels)

        # -- the loop -------------------------------------------------------------------------------------
        train_stream = LengthBucketedStream(
            source, train_units, tokenizer=tokenizer, max_length=profile.max_length,
            truncation_side=profile.truncation_side, batch_size=profile.batch_size,
            bucket_batches=profile.bucket_batches, pad_to_multiple_of=profile.pad_to_multiple_of, seed=profile.seed,
            rank=procs.rank, world=procs.world, split="train", start_batch=position, num_labels=num_labels)
        batches = iter(loader(train_stream, workers, pin_memory=device.type == "cuda"))
        model.train()
        progress = _progress(profile.max_steps, step, disable=not master)
        line_every = max(1, profile.max_steps // 20)
        stopped_early = False
        last_val: tuple[int, dict] | None = None  # (step, result) of the latest validation
        window = {"t": time.perf_counter(), "tokens": 0.0, "padded": 0.0, "samples": 0.0, "data_s": 0.0, "steps": 0}
        loss_acc = torch.zeros((), device=device)
        t_loop = time.perf_counter()
        while step < profile.max_steps:
            t_step = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]  # the encoder's lr this step
            for micro in range(profile.grad_accum):
                t_data = time.perf_counter()
                batch = next(batches)
                window["data_s"] += time.perf_counter() - t_data
                position += 1
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                window["tokens"] += float(batch["attention_mask"].sum())
                window["padded"] += batch["attention_mask"].numel()
                window["samples"] += batch["labels"].numel()
                # only the last micro batch all-reduces gradients
                sync = contextlib.nullcontext() if not procs.ddp or micro == profile.grad_accum - 1 else model.no_sync()
                with sync:
                    with dist.autocast(device, bf16):
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
                    (loss / profile.grad_accum).backward()
                loss_acc += loss.detach() / profile.grad_accum
            if profile.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), profile.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window["steps"] += 1
            loop_state["train_seconds"] += time.perf_counter() - t_step

            if step % log_interval == 0 or step == profile.max_steps:
                # one small all-reduce per logged step: loss, tokens, samples over all ranks
                loss_sum, tokens, samples, padded = dist.all_sum(
                    procs, [float(loss_acc), window["tokens"], window["samples"], window["padded"]])
                n_steps = max(1, window["steps"])
                elapsed = max(1e-9, time.perf_counter() - window["t"])
                row = {"step": step, "loss": loss_sum / procs.world / n_steps, "lr": lr,
                       "tokens_per_s": tokens / elapsed, "samples_per_s": samples / elapsed,
                       "memory_mb": memory_mb(device), "data_wait_s": window["data_s"] / n_steps}
                loop_state["tokens"] += tokens
                loop_state["samples"] += samples
                loop_state["padded_tokens"] += padded
                loop_state["history"].append(row)
                if master:
                    mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step, synchronous=False)
                    progress.update(step - progress.n)
                    progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                    if progress.disable and (step % line_every == 0 or step == profile.max_steps):
                        log.info("step %d/%d loss %.4f lr %.2e %.0f tokens/s %.1f samples/s", step, profile.max_steps,
                                 row["loss"], lr, row["tokens_per_s"], row["samples_per_s"])
                loss_acc.zero_()
                window = {"t": time.perf_counter(), "tokens": 0.0, "padded": 0.0, "samples": 0.0, "data_s": 0.0, "steps": 0}

            if profile.eval_interval and (step % profile.eval_interval == 0 or step == profile.max_steps) \
                    and n_rows["validation"]:
                t_eval = time.perf_counter()
                val = evaluate(raw_model, eval_stream(val_units, "validation"), procs, bf16, num_labels)
                last_val = (step, val)
                loop_state["evals"].append({"step": step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]})
                if val["loss"] < loop_state["best_val_loss"] - profile.early_stopping_min_delta:
                    loop_state.update(best_val_loss=val["loss"], best_step=step, bad_evals=0)
                    if profile.early_stopping_patience:
                        best = {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                        best_dirty = True
                else:
                    loop_state["bad_evals"] += 1
                if master:
                    mlflow.log_metrics({"val_loss": val["loss"], "val_accuracy": val["accuracy"]}, step=step,
                                       synchronous=False)
                    log.info("step %d: val_loss %.4f val_accuracy %.4f (best %.4f at step %d) in %.1fs", step,
                             val["loss"], val["accuracy"], loop_state["best_val_loss"], loop_state["best_step"],
                             time.perf_counter() - t_eval)
                window["t"] += time.perf_counter() - t_eval  # evaluation is not training throughput
                if profile.early_stopping_patience and loop_state["bad_evals"] >= profile.early_stopping_patience:
                    log.info("early stop at step %d: val_loss has not improved for %d validations", step,
                             loop_state["bad_evals"])
                    stopped_early = True
                    break

            if store is not None and profile.checkpoint_interval and step % profile.checkpoint_interval == 0 \
                    and step < profile.max_steps:
                t_ck = time.perf_counter()
                loop_state["loop_seconds"] += t_ck - t_loop  # saved with the checkpoint: a resumed run adds on
                t_loop = t_ck
                save_checkpoint(store, procs, step, position, raw_model, optimizer, scheduler, loop_state,
                                print_fp, mlflow_run_id, config, best if best_dirty else None, best is not None)
                best_dirty = False
                window["t"] += time.perf_counter() - t_ck
        loop_state["loop_seconds"] += time.perf_counter() - t_loop
        progress.close()
        del batches  # stop DataLoader workers before the final phase
        if store is not None:
            store.wait()  # a failed checkpoint upload fails the run here, not silently

        # -- final evaluation (the best weights when early stopping kept them) -------------------------------
        if best is not None and profile.early_stopping_patience and loop_state["best_step"] != step:
            log.info("restoring the weights of step %d (best val_loss %.4f)", loop_state["best_step"],
                     loop_state["best_val_loss"])
            raw_model.load_state_dict(best)
            last_val = None
        history = loop_state["history"]
        metrics: dict[str, float] = {
            "train_loss": history[-1]["loss"] if history else float("nan"),
            "train_seconds": loop_state["train_seconds"],
            "train_samples_per_s": loop_state["samples"] / max(1e-9, loop_state["train_seconds"]),
            "train_tokens_per_s": loop_state["tokens"] / max(1e-9, loop_state["train_seconds"]),
            # the whole loop's wall time: data waits, validation and checkpoints included
            "loop_seconds": loop_state["loop_seconds"],
            "loop_samples_per_s": loop_state["samples"] / max(1e-9, loop_state["loop_seconds"]),
            "loop_tokens_per_s": loop_state["tokens"] / max(1e-9, loop_state["loop_seconds"]),
            "samples_trained": float(loop_state["samples"]),
            "padding_share": 1.0 - loop_state["tokens"] / max(1.0, loop_state["padded_tokens"]),
            "steps_trained": float(step), "stopped_early": float(stopped_early),
            "best_step": float(loop_state["best_step"]),
        }
        confusion: dict[str, list] = {}
        reused_val = False
        for split, units in (("validation", val_units), ("test", test_units)):
            if not n_rows[split]:
                log.warning("no %s rows in %s %s: not measured", split, pipeline.name, partition.path)
                continue
            if split == "validation" and last_val is not None and last_val[0] == step:
                res = last_val[1]  # these weights were just validated (and logged at this step)
                reused_val = True
            else:
                res = evaluate(raw_model, eval_stream(units, split), procs, bf16, num_labels)
            prefix = "val" if split == "validation" else "test"
            metrics[f"{prefix}_accuracy"], metrics[f"{prefix}_loss"] = res["accuracy"], res["loss"]
            confusion[split] = res["confusion"]

        result = TrainResult(run_id=mlflow_run_id or "", model_uri="", version="", metrics=metrics,
                             resumed_from_step=resumed_from)
        if master:
            mlflow.log_metrics({k: v for k, v in metrics.items() if not (reused_val and k.startswith("val_"))}, step=step)
            _log_artifacts(loop_state, confusion, spec.labels, lake, upstream, stats.get("curate_report"))
            candidates = []
            if config.register_model:
                version = _register_finetuned(raw_model, tokenizer, spec, profile, tags, mlflow_run_id)
                result.version = version
                result.model_uri = f"models:/{spec.registered_name}/{version}"
            if config.baseline if config.baseline is not None else spec.baseline:
                baseline = _train_baseline(source, spec, profile, tags, mlflow_run_id, config.register_model)
                if baseline.get("test_accuracy") is not None and "test_accuracy" in metrics:
                    mlflow.log_metrics({"baseline_test_accuracy": baseline["test_accuracy"],
                                        "beats_baseline": float(metrics["test_accuracy"] > baseline["test_accuracy"])})
                    metrics["baseline_test_accuracy"] = baseline["test_accuracy"]
                if baseline.get("version"):
                    candidates.append(baseline)
            if result.version:
                candidates.append({"kind": "finetuned", "version": result.version, "run_id": mlflow_run_id,
                                   "test_accuracy": metrics.get("test_accuracy")})
            result.candidates = candidates
            mlflow.flush_async_logging()
            if store is not None:
                store.write_json(ckpt.DONE, result.as_dict())  # before deleting: a crash now is a retry that returns
                if not config.keep_checkpoints:
                    store.clear_checkpoints()
            log.info("run %s: %s; candidates %s", mlflow_run_id,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), [c["version"] for c in candidates])
    return dist.broadcast(procs, result)


def save_checkpoint(store: ckpt.CheckpointStore, procs: dist.Processes, step: int, position: int,
                    model: torch.nn.Module, optimizer, scheduler, loop_state: dict, print_fp: str,
                    mlflow_run_id: str | None, config: TrainConfig, best: dict | None, has_best: bool) -> None:
    """Every rank writes its RNG + data position; then rank 0 snapshots the rest and commits (async)."""
    store.save_rank(step, procs.rank, {"rng": ckpt.rng_state(), "batches": position, "world": procs.world})
    dist.barrier(procs)  # rank files of this step exist before LATEST can point at it
    if procs.master:
        state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "loop": json.dumps(loop_state), "fingerprint": print_fp,
                 "mlflow_run_id": mlflow_run_id or "", "has_best": has_best, "world": procs.world,
                 "config": config.model_dump_json()}
        store.commit_async(step, state, best=best)


def _params(config: TrainConfig, pipeline: PipelineConfig, profile: TrainProfile, extra: dict) -> dict[str, str]:
    from lakeforge.train.tracking import flat_params

    run = config.model_dump(exclude={"overrides", "airflow_try_number"})  # the try is a tag: it changes per try
    run["overrides"] = json.dumps(config.overrides, sort_keys=True)
    return flat_params({"": run, "profile": profile.model_dump(),
                        "model": pipeline.model.model_dump(exclude={"cpu", "gpu"})}, extra)


def _log_artifacts(loop_state: dict, confusion: dict, labels, lake, upstream, report: dict | None) -> None:
    from lakeforge.train import tracking

    try:
        tracking.log_curves(loop_state["history"], loop_state["evals"])
        for split, matrix in confusion.items():
            tracking.log_confusion(matrix, labels, split)
    except Exception as exc:  # plots are evidence, not results: a plotting failure must not fail training
        log.warning("could not plot the training curves / confusion matrices: %s", exc)
    if lake is not None and (report or upstream):
        tracking.log_quality_report(lake, upstream, report)


def _register_finetuned(model, tokenizer, spec, profile: TrainProfile, tags: dict, run_id: str) -> str:
    from lakeforge.train.tracking import log_finetuned

    return log_finetuned(model.cpu(), tokenizer, name=spec.registered_name, labels=spec.labels,
                         max_length=profile.max_length, tags=tags, run_id=run_id)


def _train_baseline(source: FeatureSource, spec, profile: TrainProfile, tags: dict, parent_run_id: str,
                    register: bool) -> dict[str, Any]:
    """TF-IDF + logistic regression on the same split, in a child run; ``{kind, version, run_id, test_accuracy}``."""
    from lakeforge.train import baseline, tracking

    splits = {s: source.read_split(s, ("text", "label")) for s in ("train", "validation", "test")}
    fitted = baseline.fit_baseline(*((splits[s]["text"], [int(y) for y in splits[s]["label"]])
                                     for s in ("train", "validation", "test")),
                                   num_labels=len(spec.labels), seed=profile.seed)
    client = mlflow.MlflowClient()
    child = [r for r in client.search_runs([mlflow.active_run().info.experiment_id],
                                           f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`lakeforge.candidate` = 'baseline'")]
    with mlflow.start_run(run_id=child[0].info.run_id if child else None,
                          run_name=None if child else "tfidf-logreg-baseline", nested=True,
                          tags={**tags, "lakeforge.candidate": "baseline"}) as run:
        if not child:
            mlflow.log_params({f"baseline.{k}": v for k, v in fitted.params.items()})
        mlflow.log_metrics(fitted.metrics)
        if fitted.confusion:
            tracking.log_confusion(fitted.confusion, spec.labels, "test")
        version = baseline.log_baseline(fitted, name=spec.registered_name, labels=spec.labels,
                                        tags={**tags, "lakeforge.parent_run_id": parent_run_id},
                                        run_id=run.info.run_id) if register else ""
    log.info("baseline (TF-IDF + logistic regression, C=%s): %s", fitted.params["C"],
             ", ".join(f"{k}={v:.4f}" for k, v in fitted.metrics.items()))
    return {"kind": "baseline", "version": version, "run_id": run.info.run_id,
            "test_accuracy": fitted.metrics.get("test_accuracy")}


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    # a bar on a terminal; in Airflow's log (no tty) the loop writes a log line per 5 % instead
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty())
