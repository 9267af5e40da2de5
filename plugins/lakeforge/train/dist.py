"""Processes and devices of a training run: one process per device, a process group only when needed.

``torchrun --standalone --nproc-per-node=N jobs/train.py`` starts N workers with ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` set; a plain ``python jobs/train.py`` is one process with no group. More than one
process gets a group: NCCL between GPUs, gloo between CPU processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """Where this process sits in the run."""

    rank: int  # global rank
    local_rank: int  # rank on this host (= device index on GPU)
    world: int  # number of processes
    device: torch.device  # cuda:<local_rank> or cpu

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``).

    Why: a ``kill -9`` of torchrun (or of the Airflow task above it) must not leave workers that keep
    training and writing checkpoints beside the retry. Signals cannot be caught on SIGKILL, so the
    kernel's parent-death signal is the only reliable link. A no-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): workers may outlive torchrun", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def cpu_threads_default() -> int | None:
    """Torch threads per training process on CPU; None keeps torch's choice (OMP_NUM_THREADS is set).

    The cores are shared among this host's training processes, minus one left to the services that
    run beside training (Airflow, Kafka, MLflow, SeaweedFS). Why: when the threads of a step outnumber
    the free cores, OpenMP's barriers wait on preempted threads; measured on a busy 2-core machine, a
    MiniLM step (batch 16 x 128 tokens) took 1.8 s with 1 thread and 8.5-8.9 s with 2.
    """
    if "OMP_NUM_THREADS" in os.environ:  # torchrun sets it (to 1) when it starts several processes
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // local_world - 1)


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 fast enough for autocast to pay (AMX-BF16 tiles)? Else fp32.

    AVX512-BF16 alone is not enough: on a 2-core AVX512-BF16 Xeon without AMX, bf16 autocast trained
    at 0.70x of fp32 (bbc_news, full 128-token batches) and movie_reviews' loop at 4.4 samples/s
    beside HF Trainer's 6.8 in fp32 (bench/train.py, 2026-12-03)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags


def setup(cpu_threads: int | None = None) -> Processes:
    """Pick the device, set CPU threads, and start the process group when there is more than one rank.

    Under torchrun the process also asks to die with torchrun (:func:`die_with_parent`).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        threads = cpu_threads or cpu_threads_default()
        if threads:
            torch.set_num_threads(threads)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, local_rank=local_rank, world=world, device=device)


def teardown(procs: Processes) -> None:
    if procs.ddp and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(procs: Processes) -> None:
    if procs.ddp:
        torch.distributed.barrier()


def all_sum(procs: Processes, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (identity on one process)."""
    if not procs.ddp:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=procs.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast(procs: Processes, obj):
    """Rank 0's ``obj`` on every rank."""
    if not procs.ddp:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when enabled; a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
