"""DDP on CPU: two gloo ranks under torchrun train, checkpoint and resume exactly (slow: ~1 min on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DRIVER = '''
import json, os, sys
import pyarrow as pa
from mlflow.tracking import MlflowClient
from lakeforge.stage.run import StageRun
from lakeforge.train import TrainConfig, run

texts = [("a wonderful moving film", 1), ("a dull boring mess", 0), ("brilliant acting, loved it", 1),
         ("awful and far too long", 0)] * 12
table = pa.table({"id": [str(i) for i in range(len(texts))], "text": [t for t, _ in texts],
                  "label": [y for _, y in texts],
                  "split": ["train" if i % 6 < 4 else "validation" if i % 6 == 4 else "test" for i in range(len(texts))]})
tmp, key = sys.argv[1], sys.argv[2]
uri = f"sqlite:///{tmp}/mlflow.db"
config = TrainConfig(profile="cpu", max_steps=8, tracking_uri=uri,
                     experiment="ddp", checkpoint_dir=f"{tmp}/ckpt", run_key=key, baseline=False,
                     register_model=False, keep_checkpoints=True,
                     overrides={"checkpoint_interval": 3, "eval_interval": 4, "batch_size": 4, "max_length": 16,
                                "bucket_batches": 2})
r = run(StageRun.create("movie_reviews", "2026-11-23"), config, table)
if int(os.environ["RANK"]) == 0:
    print("RESULT " + json.dumps({"metrics": r.metrics, "resumed": r.resumed_from_step,
                                  "world": int(os.environ["WORLD_SIZE"])}))
'''


def torchrun(tmp: Path, key: str) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=2",
                          str(tmp / "driver.py"), str(tmp), key], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])


def test_two_ranks_resume_exactly(tmp_path):
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("ddp", artifact_location=(tmp_path / "a").as_uri())
    (tmp_path / "driver.py").write_text(DRIVER)
    full = torchrun(tmp_path, "k")
    assert full["world"] == 2 and full["resumed"] == 0
    (tmp_path / "ckpt" / "k" / "DONE.json").unlink()  # as if killed after the step-6 checkpoint
    assert json.loads((tmp_path / "ckpt" / "k" / "LATEST.json").read_text())["step"] == 6
    resumed = torchrun(tmp_path, "k")
    assert resumed["resumed"] == 6
    for key in ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy"):
        assert resumed["metrics"][key] == pytest.approx(full["metrics"][key], abs=1e-5), key
