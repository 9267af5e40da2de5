"""The training loop, nanoGPT style: :func:`train` reads top to bottom, with a few named helpers.

One optimizer step: ``grad_accum`` micro batches (DDP all-reduces only on the last one), bf16
autocast (CUDA; CPUs with native bf16 when the profile says so), global-norm clipping, AdamW
(:func:`configure_optimizer`: no decay on biases/LayerNorm, the new head at ``head_lr_scale`` x lr),
linear warmup then linear or cosine decay (:class:`WarmupDecay` under ``LambdaLR``). Every
``log_interval`` steps the loss, lr, tokens/s, samples/s and memory go to MLflow (rank 0) and to a
tqdm bar (a log line per 5 % when not on a terminal); every ``eval_interval`` steps the validation
split is measured (:func:`evaluate`) with early stopping on val_loss (the best weights are kept for
the caller to restore); every ``checkpoint_interval`` steps a resumable checkpoint is saved.

Where the loop stands is a :class:`LoopState`: a checkpoint saves it and a resume restores it
(:mod:`lakeforge.train.resume`); the orchestration around the loop (data, resume, MLflow run, final
evaluation, registration) is :mod:`lakeforge.train.job`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import mlflow
import torch

from lakeforge.config import TrainProfile
from lakeforge.metrics import classification_metrics
from lakeforge.train import dist
from lakeforge.train.data import LengthBucketedStream
from lakeforge.train.model import head_parameters

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


def lr_scheduler(optimizer: torch.optim.Optimizer, profile: TrainProfile) -> torch.optim.lr_scheduler.LambdaLR:
    """:class:`WarmupDecay` over the profile's steps (warmup: ``warmup_ratio`` of them, rounded up)."""
    warmup = math.ceil(profile.warmup_ratio * profile.max_steps) if profile.warmup_ratio > 0 else 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup, profile.max_steps, profile.lr_schedule))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, stream: LengthBucketedStream, procs: dist.Processes, bf16: bool,
             num_labels: int) -> dict[str, Any]:
    """Loss, accuracy, macro-F1 and confusion matrix (rows: truth, columns: predicted, ``num_labels``
    square in label-id order) of one split, summed over the ranks' shards; the per-class figures are
    :func:`lakeforge.metrics.classification_metrics` of that matrix."""
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
    confusion = matrix.long().tolist()
    scores = classification_metrics(confusion, [str(i) for i in range(num_labels)])
    return {"loss": total[0] / max(1, rows), "accuracy": float(matrix.diag().sum()) / max(1, rows), "rows": rows,
            "macro_f1": scores.macro_f1, "confusion": confusion}


def memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or this process's resident memory on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def wrap(model: torch.nn.Module, procs: dist.Processes, profile: TrainProfile) -> torch.nn.Module:
    """The module the loop calls: ``model`` under DDP (several ranks) and ``torch.compile`` (if asked)."""
    if procs.ddp:
        device = procs.device
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if profile.compile:
        model = torch.compile(model, dynamic=True)
    return model


def new_record() -> dict[str, Any]:
    """The loop's running totals and curves, saved in checkpoints as JSON (``state["loop"]``)."""
    return {"history": [], "evals": [], "best_val_loss": math.inf, "best_step": 0, "bad_evals": 0,
            "train_seconds": 0.0, "loop_seconds": 0.0, "tokens": 0, "samples": 0, "padded_tokens": 0}


@dataclass
class LoopState:
    """Where the loop stands: what a checkpoint saves (:mod:`lakeforge.train.resume`) and the loop updates."""

    step: int = 0  # optimizer steps done
    position: int = 0  # batches this rank drew from the train stream (the exact-resume skip)
    record: dict[str, Any] = field(default_factory=new_record)  # history, evals, early stopping, throughput
    best: dict[str, torch.Tensor] | None = None  # weights of the best val_loss (CPU), kept for early stopping
    best_dirty: bool = False  # best changed since the last checkpoint (it is saved again)
    resumed_from: int = 0  # the checkpoint step this run continued from (0: from scratch)
    stopped_early: bool = False
    last_val: tuple[int, dict] | None = None  # (step, result) of the latest validation


@dataclass
class Window:
    """Throughput since the last logged step (all floats: summed like the ranks' all-reduce)."""

    t: float = field(default_factory=time.perf_counter)
    tokens: float = 0.0
    padded: float = 0.0
    samples: float = 0.0
    data_s: float = 0.0
    steps: int = 0


def train(model: torch.nn.Module, raw_model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
          batches: Iterator[dict[str, torch.Tensor]], state: LoopState, *, procs: dist.Processes,
          profile: TrainProfile, bf16: bool, log_interval: int, validate: Callable[[], dict] | None = None,
          checkpoint: Callable[[LoopState], None] | None = None) -> LoopState:
    """Optimizer steps from ``state.step`` to ``profile.max_steps`` (or an early stop); returns ``state``.

    Args:
        model: what the forward pass calls (``raw_model`` under DDP / compile, see :func:`wrap`).
        raw_model: the bare module: clipped, validated, and copied as the best weights.
        batches: the train stream's batches, already skipped to ``state.position``.
        validate: measures the validation split (:func:`evaluate`); None: no validation rows.
        checkpoint: saves ``state`` and the weights; None: no checkpoint store.
    """
    model.train()
    progress = _progress(profile.max_steps, state.step, disable=not procs.master)
    window = Window()
    loss_acc = torch.zeros((), device=procs.device)
    t_loop = time.perf_counter()
    while state.step < profile.max_steps:
        t_step = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]  # the encoder's lr this step
        for micro in range(profile.grad_accum):
            batch = _next_batch(batches, state, window, procs.device)
            loss_acc += _forward_backward(model, batch, procs, bf16, profile.grad_accum,
                                          last=micro == profile.grad_accum - 1)
        if profile.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), profile.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window.steps += 1
        state.record["train_seconds"] += time.perf_counter() - t_step

        if state.step % log_interval == 0 or state.step == profile.max_steps:
            _log_step(state, window, loss_acc, lr, procs, profile, progress)
            loss_acc.zero_()
            window = Window()

        if validate is not None and profile.eval_interval and \
                (state.step % profile.eval_interval == 0 or state.step == profile.max_steps):
            if _validate(state, window, validate, raw_model, profile, procs.master):
                state.stopped_early = True
                break

        if checkpoint is not None and profile.checkpoint_interval and state.step % profile.checkpoint_interval == 0 \
                and state.step < profile.max_steps:
            t_ck = time.perf_counter()
            state.record["loop_seconds"] += t_ck - t_loop  # saved with the checkpoint: a resumed run adds on
            t_loop = t_ck
            checkpoint(state)
            state.best_dirty = False
            window.t += time.perf_counter() - t_ck
    state.record["loop_seconds"] += time.perf_counter() - t_loop
    progress.close()
    return state


def _next_batch(batches: Iterator[dict[str, torch.Tensor]], state: LoopState, window: Window,
                device: torch.device) -> dict[str, torch.Tensor]:
    """The next train batch on ``device``; counts the data wait, the position and the window's tokens."""
    t_data = time.perf_counter()
    batch = next(batches)
    window.data_s += time.perf_counter() - t_data
    state.position += 1
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    window.tokens += float(batch["attention_mask"].sum())
    window.padded += batch["attention_mask"].numel()
    window.samples += batch["labels"].numel()
    return batch


def _forward_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor], procs: dist.Processes, bf16: bool,
                      grad_accum: int, last: bool) -> torch.Tensor:
    """Loss and gradients of one micro batch (scaled by ``1/grad_accum``); returns the scaled loss."""
    # only the last micro batch all-reduces gradients
    sync = contextlib.nullcontext() if not procs.ddp or last else model.no_sync()
    with sync:
        with dist.autocast(procs.device, bf16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        (loss / grad_accum).backward()
    return loss.detach() / grad_accum


def _log_step(state: LoopState, window: Window, loss_acc: torch.Tensor, lr: float, procs: dist.Processes,
              profile: TrainProfile, progress) -> None:
    """The window's loss and throughput over all ranks: into the history, MLflow and the progress bar."""
    # one small all-reduce per logged step: loss, tokens, samples over all ranks
    loss_sum, tokens, samples, padded = dist.all_sum(
        procs, [float(loss_acc), window.tokens, window.samples, window.padded])
    n_steps = max(1, window.steps)
    elapsed = max(1e-9, time.perf_counter() - window.t)
    row = {"step": state.step, "loss": loss_sum / procs.world / n_steps, "lr": lr,
           "tokens_per_s": tokens / elapsed, "samples_per_s": samples / elapsed,
           "memory_mb": memory_mb(procs.device), "data_wait_s": window.data_s / n_steps}
    record = state.record
    record["tokens"] += tokens
    record["samples"] += samples
    record["padded_tokens"] += padded
    record["history"].append(row)
    if procs.master:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=state.step, synchronous=False)
        progress.update(state.step - progress.n)
        progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
        if progress.disable and (state.step % max(1, profile.max_steps // 20) == 0 or state.step == profile.max_steps):
            log.info("step %d/%d loss %.4f lr %.2e %.0f tokens/s %.1f samples/s", state.step, profile.max_steps,
                     row["loss"], lr, row["tokens_per_s"], row["samples_per_s"])


def _validate(state: LoopState, window: Window, validate: Callable[[], dict], raw_model: torch.nn.Module,
              profile: TrainProfile, master: bool) -> bool:
    """Measure the validation split, keep the best weights, log; True when early stopping says stop."""
    t_eval = time.perf_counter()
    val = validate()
    state.last_val = (state.step, val)
    record = state.record
    record["evals"].append({"step": state.step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]})
    if val["loss"] < record["best_val_loss"] - profile.early_stopping_min_delta:
        record.update(best_val_loss=val["loss"], best_step=state.step, bad_evals=0)
        if profile.early_stopping_patience:
            state.best = {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
            state.best_dirty = True
    else:
        record["bad_evals"] += 1
    if master:
        mlflow.log_metrics({"val_loss": val["loss"], "val_accuracy": val["accuracy"]}, step=state.step,
                           synchronous=False)
        log.info("step %d: val_loss %.4f val_accuracy %.4f (best %.4f at step %d) in %.1fs", state.step,
                 val["loss"], val["accuracy"], record["best_val_loss"], record["best_step"],
                 time.perf_counter() - t_eval)
    window.t += time.perf_counter() - t_eval  # evaluation is not training throughput
    if profile.early_stopping_patience and record["bad_evals"] >= profile.early_stopping_patience:
        log.info("early stop at step %d: val_loss has not improved for %d validations", state.step,
                 record["bad_evals"])
        return True
    return False


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    # a bar on a terminal; in Airflow's log (no tty) the loop writes a log line per 5 % instead
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty())
