"""Resumable training checkpoints in the lake: save every N steps, resume exactly after a crash.

One training run (an Airflow task, all its tries) owns one prefix,
``checkpoints/<pipeline>/dt=…/<run_key>/`` (:meth:`lakeforge.lake.Lake.checkpoint_key`), where
``run_key`` is derived from the Airflow ``dag_id``/``run_id``: a retry of the same task finds its
checkpoints, a new DAG run starts fresh. Inside::

    RUN.json                  the MLflow run of this training run (a retry continues the same MLflow run)
    step-000040/state.pt      model, optimizer, scheduler, loop state (step, early stopping, curves), config
    step-000040/rank-0.pt     per rank: RNG states (torch, CUDA, Python, NumPy) and the data position
    best.pt                   the weights with the best val_loss so far (early stopping restores them)
    LATEST.json               {"step": 40, "dir": "step-000040"}: the commit point, written last
    DONE.json                 the finished run's result: a retry after success returns it, trains nothing

Commit protocol: every file of a checkpoint is written first; ``LATEST.json`` (one PUT) then points
at it, and only then are older step dirs deleted. A crash mid-checkpoint leaves ``LATEST.json`` on the
previous complete checkpoint. Saving serializes the state in memory on the training thread (a
consistent snapshot) and uploads it on a background thread, so training continues meanwhile; the
next checkpoint, or the end of training, waits for the upload.

Everything is read back with ``torch.load(..., weights_only=True)``: tensors, numbers, strings and
containers only, never arbitrary pickles. torch and NumPy load on first use, so the JSON files
(``DONE.json`` for :mod:`lakeforge.train.summary`) can be read without them. The run key and the
JSON files' names are :mod:`lakeforge.train.summary`'s.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from lakeforge.train.summary import DONE, LATEST, RUN, run_key  # noqa: F401  (run_key: for callers of this module)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

STATE, BEST = "state.pt", "best.pt"


def to_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as weights_only-loadable values."""
    import random

    import numpy as np
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


class CheckpointStore:
    """The checkpoints of one training run under a prefix of a pyarrow filesystem (S3 or local)."""

    def __init__(self, fs, base: str, uri: str | None = None):
        """
        Args:
            fs: a pyarrow filesystem (the lake's S3FileSystem, or LocalFileSystem).
            base: the run's prefix on ``fs`` (``bucket/key`` on S3).
            uri: how to name it in logs (``s3://…``).
        """
        self.fs, self.base, self.uri = fs, base.rstrip("/"), uri or base
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _path(self, name: str) -> str:
        return f"{self.base}/{name}"

    # -- plain objects -------------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> None:
        from pyarrow import fs as pafs

        path = self._path(name)
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(name)) as f:
                return f.read()
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError) or "not found" in str(exc).lower() or "NoSuchKey" in str(exc):
                return None
            raise

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json.dumps(obj, indent=2, default=str).encode())

    def read_json(self, name: str) -> dict | None:
        data = self.read_bytes(name)
        return None if data is None else json.loads(data)

    def read_state(self, name: str) -> Any:
        data = self.read_bytes(name)
        if data is None:
            raise FileNotFoundError(f"checkpoint file {self.uri}/{name} is missing")
        return from_bytes(data)

    # -- checkpoints ------------------------------------------------------------------------------------
    def latest(self) -> dict | None:
        """``{"step", "dir"}`` of the last committed checkpoint, or None."""
        return self.read_json(LATEST)

    def step_dirs(self) -> list[str]:
        from pyarrow import fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith("step-"))

    def save_rank(self, step: int, rank: int, state: dict[str, Any]) -> None:
        """This rank's part of checkpoint ``step`` (synchronous: small)."""
        self.write_bytes(f"{step_dir(step)}/rank-{rank}.pt", to_bytes(state))

    def commit_async(self, step: int, state: dict[str, Any], best: dict[str, torch.Tensor] | None = None,
                     keep: int = 1) -> None:
        """Rank 0: snapshot ``state`` now, upload it and move ``LATEST`` in the background."""
        self.wait()
        blobs = {f"{step_dir(step)}/{STATE}": to_bytes(state)}
        if best is not None:
            blobs[BEST] = to_bytes(best)

        def upload():
            try:
                for name, data in blobs.items():
                    self.write_bytes(name, data)
                self.write_json(LATEST, {"step": step, "dir": step_dir(step)})
                for old in self.step_dirs()[:-keep] if keep else []:
                    if old != step_dir(step):
                        self.fs.delete_dir(self._path(old))
                log.info("checkpoint %s/%s committed (%.0f MB)", self.uri, step_dir(step),
                         sum(map(len, blobs.values())) / 2**20)
            except BaseException as exc:  # surfaced by the next wait(): a failed checkpoint fails the run
                self._error = exc

        self._thread = threading.Thread(target=upload, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the last upload finished; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing a checkpoint to {self.uri} failed: {err}") from err

    def clear_checkpoints(self) -> None:
        """Delete step dirs, ``best.pt`` and ``LATEST.json`` (after success, or before a fresh start)."""
        self.wait()
        for name in self.step_dirs():
            self.fs.delete_dir(self._path(name))
        for name in (LATEST, BEST):
            try:
                self.fs.delete_file(self._path(name))
            except (FileNotFoundError, OSError):
                pass

    def delete_all(self) -> None:
        """Forget this run entirely (``RUN.json`` and ``DONE.json`` too): the next run starts fresh."""
        self.wait()
        try:
            self.fs.delete_dir(self.base)
        except (FileNotFoundError, OSError):
            pass


def step_dir(step: int) -> str:
    return f"step-{step:06d}"


def store_for(lake, pipeline: str, partition, key: str) -> CheckpointStore:
    """The checkpoint store of run ``key`` in the lake (``checkpoints/<pipeline>/dt=…/<key>``)."""
    prefix = lake.checkpoint_key(pipeline, partition, key)
    return CheckpointStore(lake.fs, lake.arrow_path(prefix), lake.uri(prefix))

