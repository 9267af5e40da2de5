"""MinHash signatures, LSH bands and exact Jaccard verification of text pairs: the vectorized
(numpy over Arrow batches) half of near-deduplication; :mod:`lakeforge.curate.dedup` does the Spark
half (banding joins, clusters). See the docstring there for the whole method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from lakeforge.errors import ConfigError
from lakeforge.stage.steps import BatchStep
from lakeforge.stage.text import TextBatch, Words, mix64, ngram_keys, ngram_positions, split_words, word_hashes

BANDS = "_bands"
SIMILARITY = "similarity"


def lsh_params(threshold: float, num_perm: int, min_recall: float = 0.99) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm``: the most rows per band (fewest false
    candidates) whose candidate probability at ``threshold`` is still >= ``min_recall``."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= min_recall:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class MinHashParams:
    """What fixes the band ids of a text: equal params give equal bands in every run and partition."""

    ngram: int = 5  # words per shingle
    num_perm: int = 128  # hash functions (signature length)
    bands: int = 25  # bands the signature is cut into
    rows: int = 5  # signature values per band
    seed: int = 1  # seed of the hash functions

    def __post_init__(self):
        if self.ngram < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise ConfigError(f"near_dedup needs positive ngram, num_perm, bands and rows, got {self}")
        if self.bands * self.rows > self.num_perm:
            raise ConfigError(f"near_dedup: bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``a`` (odd) and ``b`` of the ``num_perm`` hash functions."""
        rng = np.random.default_rng(self.seed)
        a = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        b = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64, endpoint=False)
        return a, b

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def shingle_keys(words: Words, hashes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 keys of every document's word n-gram shingles, and their document (grouped by
    document). A document of fewer than ``n`` words (but at least one) is one shingle of all its
    words, as in :func:`lakeforge.stage.text.python_shingles`."""
    starts, doc = ngram_positions(words.offsets, n)
    keys = [ngram_keys(hashes, starts, n)]
    docs = [doc]
    counts = words.counts
    for length in range(1, n):
        short = np.flatnonzero(counts == length)
        if len(short):
            keys.append(ngram_keys(hashes, words.offsets[short], length))
            docs.append(short.astype(np.int64))
    doc = np.concatenate(docs)
    order = np.argsort(doc, kind="stable")
    return np.concatenate(keys)[order], doc[order]


_MINHASH_BLOCK = 4096  # shingles per block of minhash_signatures


def minhash_signatures(keys: np.ndarray, doc: np.ndarray, docs: int, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """``(signatures, has_signature)``: uint32 ``(docs, num_perm)`` minima over each document's
    shingle keys (``doc`` grouped), and which documents have at least one shingle."""
    a, b = params.coefficients()
    sig = np.full((docs, params.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    present, starts = np.unique(doc, return_index=True)
    has = np.zeros(docs, dtype=bool)
    has[present] = True
    if len(keys) == 0:
        return sig, has
    # Blocks of whole documents, ~4,096 shingles x num_perm at a time, so the uint64 buffer (4-8 MB at
    # 128 hash functions) stays in cache between the multiply, add, shift and per-document minimum:
    # 1.7x faster here than all shingles at once (memory-bound). A block of one very long document
    # takes its hash functions in chunks (one at a time at worst), so the buffer holds
    # 2 x 4,096 x num_perm values, or that block's shingles when there are more.
    bounds = np.append(starts, len(keys))
    cuts = np.unique(np.append(np.searchsorted(bounds, np.arange(0, len(keys), _MINHASH_BLOCK)), len(present)))
    buf = np.empty(max(2 * _MINHASH_BLOCK * params.num_perm, int(np.diff(bounds[cuts]).max())), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            first, last = bounds[lo], bounds[hi]
            n = last - first
            chunk = max(1, min(params.num_perm, len(buf) // n))
            for p0 in range(0, params.num_perm, chunk):
                p1 = min(params.num_perm, p0 + chunk)
                out = buf[: n * (p1 - p0)].reshape(n, p1 - p0)
                np.multiply(keys[first:last, None], a[None, p0:p1], out=out)
                out += b[None, p0:p1]
                out >>= np.uint64(32)
                sig[present[lo:hi], p0:p1] = np.minimum.reduceat(out, bounds[lo:hi] - first, axis=0)
    return sig, has


def band_ids(sig: np.ndarray, params: MinHashParams) -> np.ndarray:
    """int64 ``(docs, bands)``: each band's ``rows`` signature values hashed (with the band number)."""
    with np.errstate(over="ignore"):
        out = np.empty((sig.shape[0], params.bands), dtype=np.uint64)
        for band in range(params.bands):
            h = np.full(sig.shape[0], band + 1, dtype=np.uint64)
            for j in range(band * params.rows, (band + 1) * params.rows):
                h = h * np.uint64(0x9E3779B97F4A7C15) + sig[:, j].astype(np.uint64)
            out[:, band] = mix64(h)
    return out.view(np.int64)


def text_bands(texts: pa.Array, params: MinHashParams) -> pa.Array:
    """``list<int64>`` of band ids per text (null for a text without words)."""
    words = split_words(texts)
    keys, doc = shingle_keys(words, word_hashes(words), params.ngram)
    sig, has = minhash_signatures(keys, doc, len(texts), params)
    return bands_array(band_ids(sig, params), has)


def bands_array(bands: np.ndarray, has: np.ndarray) -> pa.Array:
    counts = np.where(has, bands.shape[1], 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(bands[has].ravel(), pa.int64()),
                                    mask=pa.array(~has))


class MinHashSigner(BatchStep):
    """Adds ``_bands`` (the LSH band ids) for the rows still alive; run by :class:`NearDeduplicator`."""

    name = "minhash"
    output_fields = ((BANDS, "array<bigint>"),)
    modifies_text = False

    def __init__(self, params: MinHashParams):
        self.minhash = params

    def process(self, batch: TextBatch) -> None:
        words = batch.words()
        keys, doc = shingle_keys(words, batch.word_hashes(), self.minhash.ngram)
        alive = batch.alive
        keep = alive[doc]
        sig, has = minhash_signatures(keys[keep], doc[keep], len(batch), self.minhash)
        batch.set_column(BANDS, bands_array(band_ids(sig, self.minhash), has & alive))


# --------------------------------------------------------------------------------------------
# Verification: exact Jaccard of the shingle sets of pairs of texts
# --------------------------------------------------------------------------------------------

def _pair_keys(texts: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (pair, shingle) keys of the texts, keyed by pair index: ``(pair_of_key, key)``."""
    words = split_words(texts)
    keys, doc = shingle_keys(words, word_hashes(words), n)
    with np.errstate(over="ignore"):
        tagged = mix64(keys ^ mix64(doc.astype(np.uint64) + np.uint64(1)))
    tagged, first = np.unique(tagged, return_index=True)
    return doc[first], tagged


def pair_jaccard(a: pa.Array, b: pa.Array, n: int) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of ``a[i]`` and ``b[i]``, for every i."""
    pairs = len(a)
    pa_, ka = _pair_keys(a, n)
    pb, kb = _pair_keys(b, n)
    size_a = np.bincount(pa_, minlength=pairs)
    size_b = np.bincount(pb, minlength=pairs)
    both = np.intersect1d(ka, kb, assume_unique=True)
    inter = np.bincount(pa_[np.searchsorted(ka, both)], minlength=pairs)
    union = size_a + size_b - inter
    return np.divide(inter, union, out=np.zeros(pairs, dtype=np.float64), where=union > 0)


def verify_function(ngram: int, threshold: float) -> Callable:
    """``mapInArrow`` function over ``(a, b, a_text, b_text)`` batches, yielding ``(a, b, similarity)``
    for the pairs at or above ``threshold``."""

    def run(batches):
        for rb in batches:
            sim = pair_jaccard(rb.column("a_text"), rb.column("b_text"), ngram)
            keep = pa.array(sim >= threshold)
            yield pa.RecordBatch.from_arrays(
                [rb.column("a").filter(keep), rb.column("b").filter(keep), pa.array(sim).filter(keep)],
                names=["a", "b", SIMILARITY])

    return run
