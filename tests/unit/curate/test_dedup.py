"""Exact and near-duplicate removal: banding parameters, MinHash against exact Jaccard, connected
components, and recall/precision on planted near-duplicates against a brute-force oracle."""

from __future__ import annotations

import random
import re
from itertools import combinations

import numpy as np
import pyarrow as pa
import pytest

from lakeforge.curate import NearDeduplicator
from lakeforge.stage.chain import run_steps
from lakeforge.curate.dedup import connected_components
from lakeforge.curate.minhash import (MinHashParams, band_ids, lsh_params, minhash_signatures, pair_jaccard,
                                      shingle_keys)
from lakeforge.stage.text import python_jaccard, split_words, word_hashes
from lakeforge.errors import ConfigError


def test_lsh_params_reach_the_threshold():
    bands, rows = lsh_params(0.75, 128)
    assert bands * rows <= 128 and bands * rows >= 112
    assert 1 - (1 - 0.75 ** rows) ** bands >= 0.99
    step = NearDeduplicator(threshold=0.75)
    assert (step.minhash.bands, step.minhash.rows) == (bands, rows) == (25, 5)
    assert step.candidate_probability(0.3) < 0.06  # few false candidates to verify


@pytest.mark.parametrize("params", [{"threshold": 0}, {"bands": 40, "rows": 4, "num_perm": 128}, {"ngram": 0}])
def test_bad_near_dedup_params(params):
    with pytest.raises(ConfigError):
        NearDeduplicator(**params)


def reviews(n, seed=3):
    from lakeforge.produce import load_reviews

    rng = random.Random(seed)
    sentences = [s for r in load_reviews()[:3000] for s in re.split(r"(?<=[.!?])\s+", r["text"]) if len(s) > 20]
    return [" ".join(rng.choice(sentences) for _ in range(rng.randint(3, 8))) for _ in range(n)], sentences


def edit(text, rate, rng, vocab):
    out = []
    for w in text.split():
        r = rng.random()
        if r < rate / 2:
            out.append(rng.choice(vocab))
        elif r >= rate:
            out.append(w)
    return " ".join(out)


def test_minhash_estimates_exact_jaccard():
    base, sentences = reviews(60)
    rng = random.Random(1)
    vocab = " ".join(sentences[:200]).split()
    pairs = [(t, edit(t, rng.choice([0.02, 0.1, 0.3]), rng, vocab)) for t in base]
    params = MinHashParams(num_perm=128, bands=25, rows=5)
    sigs = []
    for side in zip(*pairs):
        words = split_words(pa.array(list(side)))
        keys, doc = shingle_keys(words, word_hashes(words), 5)
        sigs.append(minhash_signatures(keys, doc, len(side), params)[0])
    estimate = (sigs[0] == sigs[1]).mean(axis=1)
    exact = np.array([python_jaccard(a, b) for a, b in pairs])
    assert np.abs(estimate - exact).mean() < 0.04
    assert np.allclose(pair_jaccard(pa.array([a for a, _ in pairs]), pa.array([b for _, b in pairs]), 5), exact)
    # equal texts, equal bands; band ids are stable across calls (fixed seed, no hash() salt)
    assert (band_ids(sigs[0], params) == band_ids(sigs[0].copy(), params)).all()


@pytest.mark.parametrize("counts, num_perm", [([3, 9000, 0, 5, 1], 32), ([40] * 500, 32), ([0, 0], 32),
                                               ([3, 9000, 1], 1)],
                         ids=["one-long", "many", "none", "longer-than-the-buffer"])
def test_minhash_blocks_equal_the_per_document_minimum(counts, num_perm):
    """Blocks of documents (one longer than a block or than the whole buffer, documents without
    shingles) give each document's minimum of every hash function, as computed plainly."""
    rng = np.random.default_rng(5)
    params = MinHashParams(num_perm=num_perm, bands=1, rows=1)
    doc = np.repeat(np.arange(len(counts)), counts)
    keys = rng.integers(0, 2**63, size=len(doc), dtype=np.int64).astype(np.uint64)
    sig, has = minhash_signatures(keys, doc, len(counts), params)
    a, b = params.coefficients()
    assert has.tolist() == [c > 0 for c in counts]
    with np.errstate(over="ignore"):
        for i, c in enumerate(counts):
            mine = keys[doc == i]
            expected = (((mine[:, None] * a + b) >> np.uint64(32)).min(axis=0) if c else
                        np.full(params.num_perm, np.iinfo(np.uint32).max))
            assert (sig[i] == expected).all(), i


def test_connected_components_label_with_smallest_id(spark):
    chain = [(f"c{i:02d}", f"c{i + 1:02d}") for i in range(20)]
    edges = spark.createDataFrame([("b", "a"), ("c", "b"), ("e", "d"), *chain], "a string, b string")
    labels, iterations = connected_components(edges)
    got = {r["node"]: r["label"] for r in labels.collect()}
    assert {got[k] for k in "abc"} == {"a"} and {got[k] for k in "de"} == {"d"}
    assert {got[f"c{i:02d}"] for i in range(21)} == {"c00"}
    assert iterations <= 7  # pointer jumping: ~log2(20) rounds, not 20


def planted(n_base, n_variants, seed):
    """Base documents plus near-duplicates (edit rates 1%-25%, some chained): (ids, texts)."""
    base, sentences = reviews(n_base, seed)
    rng = random.Random(seed)
    vocab = " ".join(sentences[:300]).split()
    texts = list(base)
    for _ in range(n_variants):
        src = rng.choice(texts)  # a variant of a variant now and then: chains
        texts.append(edit(src, rng.choice([0.01, 0.03, 0.06, 0.1, 0.15, 0.25]), rng, vocab))
    ids = [f"d{i:05d}" for i in range(len(texts))]
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [ids[i] for i in order], [texts[i] for i in order]


def oracle_pairs(ids, texts, threshold):
    """Brute force: exact Jaccard of every pair; groups = connected components of pairs >= threshold."""
    parent = list(range(len(ids)))

    def find(u):
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for i, j in combinations(range(len(ids)), 2):
        if python_jaccard(texts[i], texts[j]) >= threshold:
            parent[find(i)] = find(j)
    return _pairs({ids[i]: find(i) for i in range(len(ids))})


def _pairs(group_of):
    by = {}
    for node, g in group_of.items():
        by.setdefault(g, []).append(node)
    return {p for members in by.values() for p in combinations(sorted(members), 2)}


def near_dedup_pairs(arrow_frame, ids, texts, step):
    result = run_steps(arrow_frame("id string, text string", list(zip(ids, texts))), [step])
    try:
        dropped = result.dropped.select("id", "duplicate_of", "reason").collect() if result.dropped else []
        kept = [r["id"] for r in result.kept.select("id").collect()]
    finally:
        result.release()
    group = {i: i for i in ids}
    for r in dropped:
        assert r["reason"] == "near_duplicate"
        group[r["id"]] = r["duplicate_of"]
    assert len(kept) + len(dropped) == len(ids)
    assert all(group[group[i]] == group[i] for i in ids)  # duplicate_of is always a kept representative
    return _pairs(group), kept


def check_recall_precision(arrow_frame, n_base, n_variants, seed):
    ids, texts = planted(n_base, n_variants, seed)
    step = NearDeduplicator(threshold=0.75)
    truth = oracle_pairs(ids, texts, step.threshold)
    found, kept = near_dedup_pairs(arrow_frame, ids, texts, step)
    recall = len(truth & found) / len(truth)
    precision = len(truth & found) / len(found)
    assert len(truth) > n_variants / 3  # the planted data has real work in it
    assert recall >= 0.95, (recall, precision, len(truth), len(found))
    assert precision >= 0.98, (recall, precision, len(truth), len(found))
    return recall, precision


def test_near_dedup_recall_and_precision_against_brute_force(arrow_frame):
    check_recall_precision(arrow_frame, n_base=180, n_variants=120, seed=11)


@pytest.mark.slow
def test_near_dedup_recall_and_precision_larger(arrow_frame):
    check_recall_precision(arrow_frame, n_base=900, n_variants=600, seed=12)


def test_representative_is_the_smallest_id_and_clusters_are_reported(arrow_frame):
    text = "a fine film with a great cast and a story that stays with you long after the credits roll"
    rows = [("b", text), ("a", text + " indeed"), ("c", "something else entirely, nothing like the others at all")]
    step = NearDeduplicator(threshold=0.7)
    result = run_steps(arrow_frame("id string, text string", rows), [step])
    try:
        kept = {r["id"]: r["cluster_id"] for r in result.kept.collect()}
        (dup,) = result.dropped.collect()
    finally:
        result.release()
    assert set(kept) == {"a", "c"} and (dup["id"], dup["duplicate_of"], dup["reason"]) == ("b", "a", "near_duplicate")
    assert dup["similarity"] >= 0.7 and dup["cluster_id"] == kept["a"]
    assert result.context.stats["near_dedup"]["clusters"] == {2: 1}


def test_annotate_mode_keeps_rows_and_shares_cluster_ids(arrow_frame):
    text = "a fine film with a great cast and a story that stays with you long after the credits roll"
    rows = [("b", text), ("a", text + " indeed"), ("c", "something else entirely, nothing like the others at all")]
    result = run_steps(arrow_frame("id string, text string", rows), [NearDeduplicator(threshold=0.7, drop=False)])
    try:
        kept = {r["id"]: r["cluster_id"] for r in result.kept.collect()}
    finally:
        result.release()
    assert set(kept) == {"a", "b", "c"} and kept["a"] == kept["b"] != kept["c"]
