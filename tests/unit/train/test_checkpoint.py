"""The checkpoint store: commit protocol, weights-only loading, RNG round trips (run keys: test_summary.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from pyarrow import fs as pafs

from lakeforge.train import checkpoint as ckpt


@pytest.fixture
def store(tmp_path):
    return ckpt.CheckpointStore(pafs.LocalFileSystem(), str(tmp_path / "run"))


def test_latest_moves_only_after_the_checkpoint_is_written(store):
    store.commit_async(2, {"step": 2, "w": torch.ones(3)})
    store.wait()
    assert store.latest() == {"step": 2, "dir": "step-000002"}
    # a crash while writing step 4: its files exist, LATEST still names step 2, which is complete
    store.write_bytes("step-000004/state.pt", b"half a checkp")
    assert store.latest()["step"] == 2 and torch.equal(store.read_state("step-000002/state.pt")["w"], torch.ones(3))
    store.commit_async(6, {"step": 6}, keep=1)
    store.wait()
    assert store.latest()["step"] == 6 and store.step_dirs() == ["step-000006"]  # older dirs go after the commit


def test_only_weights_load_never_arbitrary_pickles(store):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    store.write_bytes("x.pt", ckpt.to_bytes({"obj": Evil()}))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        store.read_state("x.pt")


def test_rng_state_round_trips_every_generator():
    state = ckpt.from_bytes(ckpt.to_bytes(ckpt.rng_state()))  # through weights_only loading
    expected = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_a_failed_upload_fails_the_next_wait(tmp_path):
    store = ckpt.CheckpointStore(pafs.LocalFileSystem(), str(tmp_path / "file-not-dir"))
    (tmp_path / "file-not-dir").write_text("in the way")
    store.commit_async(2, {"step": 2})
    with pytest.raises(RuntimeError, match="writing a checkpoint"):
        store.wait()


def test_clear_leaves_run_and_done(store):
    store.write_json(ckpt.RUN, {"mlflow_run_id": "abc"})
    store.commit_async(2, {"step": 2}, best={"w": torch.zeros(1)})
    store.wait()
    store.write_json(ckpt.DONE, {"version": "3"})
    store.clear_checkpoints()
    assert store.latest() is None and store.step_dirs() == [] and store.read_bytes(ckpt.BEST) is None
    assert store.read_json(ckpt.RUN) == {"mlflow_run_id": "abc"} and store.read_json(ckpt.DONE) == {"version": "3"}


def test_delete_all_forgets_the_run(store):
    store.write_json(ckpt.RUN, {"mlflow_run_id": "abc"})
    store.write_json(ckpt.DONE, {"version": "3"})
    store.delete_all()
    assert store.read_json(ckpt.RUN) is None and store.read_json(ckpt.DONE) is None
