"""Arrow text batches and the vectorized text primitives the batch steps share.

Python-heavy steps (HTML parsing, Unicode normalization, quality statistics, MinHash) run over
Arrow record batches inside one ``mapInArrow`` pass (see :mod:`lakeforge.curate.steps`). A
:class:`TextBatch` is what those steps see: the batch's ``text`` column, which rows are still alive
(not yet dropped by an earlier step), and a cache of derived arrays — the word tokens, their
hashes, the lines — so a chain of filters tokenizes each batch once, not once per filter.

Words, everywhere in curate: whitespace-separated tokens with their leading and trailing
punctuation and symbols removed, lowercased; tokens that were only punctuation are not words.
``"Great -- REALLY great!"`` has the words ``great, really, great``. The quality filters and the
MinHash shingles use the same words, and :func:`python_words` is the plain-Python reference the
tests compare them with.

Everything here works on whole batches with pyarrow compute kernels (RE2 regexes, Unicode
normalization in C++) and numpy; the only per-item Python loop hashes each batch's *distinct*
words once (:func:`word_hashes`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: RE2: leading/trailing punctuation (P*) and symbols (S*) of a whitespace token.
EDGE_PUNCT = r"^[\p{P}\p{S}]+|[\p{P}\p{S}]+$"

# splitmix64 finalizer constants: a bijective 64-bit mixer with good avalanche (Steele et al.)
_SM1 = np.uint64(0xBF58476D1CE4E5B9)
_SM2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over a uint64 array (wrapping arithmetic, a new array)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _SM1
        x = x ^ (x >> np.uint64(27))
        x = x * _SM2
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Words:
    """The words of a batch, flattened: word ``j`` belongs to document ``doc[j]``.

    ``offsets[i]:offsets[i+1]`` are document ``i``'s words (documents keep their order, so the
    flat array is grouped by document).
    """

    flat: pa.Array  # lowercased words (string)
    doc: np.ndarray  # int64 document index of each word
    offsets: np.ndarray  # int64, len = documents + 1
    chars: np.ndarray  # int64 characters of each word
    has_letter: np.ndarray  # bool: the word contains a letter

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def split_words(text: pa.Array) -> Words:
    """The words of each text (see the module docstring); a null text has no words."""
    n = len(text)
    tokens = pc.utf8_split_whitespace(pc.fill_null(text, ""))
    parents = pc.list_parent_indices(tokens).to_numpy()
    flat = pc.replace_substring_regex(pc.list_flatten(tokens), EDGE_PUNCT, "")
    chars = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = chars > 0
    flat = pc.utf8_lower(flat.filter(pa.array(keep)))
    doc = parents[keep].astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc, minlength=n), out=offsets[1:])
    has_letter = pc.match_substring_regex(flat, r"\pL").to_numpy(zero_copy_only=False)
    return Words(flat=flat, doc=doc, offsets=offsets, chars=chars[keep], has_letter=has_letter)


def word_codes(words: Words) -> np.ndarray:
    """int64 codes of the words, equal codes for equal words within this batch (not across batches)."""
    return pc.dictionary_encode(words.flat).indices.to_numpy().astype(np.int64)


def stable_hash64(values: list[str]) -> np.ndarray:
    """A 64-bit hash of each string that is the same in every process (unlike ``hash()``)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little") for v in values),
        dtype=np.uint64, count=len(values))


def word_hashes(words: Words) -> np.ndarray:
    """uint64 hash of each word, stable across batches, processes and runs.

    Each distinct word of the batch is hashed once in Python (blake2b; pyarrow has no scalar hash
    kernel), then gathered back.
    """
    encoded = pc.dictionary_encode(words.flat)
    distinct = stable_hash64(encoded.dictionary.to_pylist())
    return distinct[encoded.indices.to_numpy()]


def ngram_positions(offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat start positions of every word n-gram that fits in its document, and its document.

    Returns ``(starts, doc)``, grouped by document in order.
    """
    counts = np.maximum(np.diff(offsets) - (n - 1), 0)
    total = int(counts.sum())
    doc = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    if total == 0:
        return np.zeros(0, dtype=np.int64), doc
    # position within its document: a running index restarted at each document
    first = np.cumsum(counts) - counts
    within = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    return offsets[:-1][doc] + within, doc


def ngram_keys(values: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """uint64 key of the n-gram of ``values`` (uint64 per word) starting at each of ``starts``.

    A polynomial over the words' values, then mixed: equal n-grams get equal keys, different
    ones collide with probability ~2^-64.
    """
    with np.errstate(over="ignore"):
        key = values[starts].astype(np.uint64, copy=True)
        for k in range(1, n):
            key = key * _GOLDEN + values[starts + k].astype(np.uint64)
        return mix64(key + np.uint64(n))


def segment_reduce(op: np.ufunc, values: np.ndarray, doc: np.ndarray, docs: int, empty: Any) -> np.ndarray:
    """``op`` (np.minimum, np.maximum, np.add) over the values of each document; ``empty`` for
    documents without values. ``doc`` must be sorted (grouped by document)."""
    out = np.full(docs, empty, dtype=np.result_type(values.dtype, np.asarray(empty).dtype))
    if len(values) == 0:
        return out
    present, starts = np.unique(doc, return_index=True)
    out[present] = op.reduceat(values, starts, axis=0)
    return out


class TextBatch:
    """One Arrow record batch as the batch steps see it (see the module docstring).

    Steps read and replace :attr:`text`, mark rows dropped with :meth:`drop`, add per-row counters
    with :meth:`count` and extra columns with :meth:`set_column`. A dropped row keeps the text it
    had when it was dropped (the tracer shows what the filter saw); later cleaners still run over
    it (vectorized, that is cheaper than compacting the batch) but their result is not kept for it.
    """

    def __init__(self, batch: pa.RecordBatch, text_column: str = "text"):
        self.batch = batch
        self.text_column = text_column
        self._text: pa.Array = batch.column(text_column)
        self.reasons = np.full(batch.num_rows, None, dtype=object)  # None while alive
        self._dropped_text: list[tuple[np.ndarray, pa.Array]] = []
        self.metrics: dict[str, np.ndarray] = {}
        self.columns: dict[str, pa.Array] = {}
        self._cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.batch.num_rows

    # -- text ---------------------------------------------------------------------------------------
    @property
    def text(self) -> pa.Array:
        return self._text

    @text.setter
    def text(self, value: pa.Array) -> None:
        if len(value) != len(self):
            raise ValueError(f"a cleaner returned {len(value)} texts for {len(self)} rows")
        self._text = value.cast(pa.large_string()) if pa.types.is_large_string(self._text.type) else value
        self._cache.clear()

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per text version: derived arrays shared by the steps of a pass."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def words(self) -> Words:
        return self.cached("words", lambda: split_words(self._text))

    def word_hashes(self) -> np.ndarray:
        return self.cached("word_hashes", lambda: word_hashes(self.words()))

    def word_codes(self) -> np.ndarray:
        return self.cached("word_codes", lambda: word_codes(self.words()))

    # -- rows -------------------------------------------------------------------------------------
    @property
    def alive(self) -> np.ndarray:
        """bool per row: not dropped by an earlier step."""
        return np.equal(self.reasons, None)

    def drop(self, reasons: np.ndarray) -> None:
        """Drop alive rows whose entry in ``reasons`` (object array: str or None) is set."""
        newly = self.alive & ~np.equal(reasons, None)
        if not newly.any():
            return
        self.reasons[newly] = reasons[newly]
        self._dropped_text.append((newly, self._text.filter(pa.array(newly))))

    def count(self, metric: str, values: np.ndarray) -> None:
        """Add a per-row counter (summed into the report) for the alive rows."""
        values = np.where(self.alive, values, 0).astype(np.int64)
        self.metrics[metric] = self.metrics.get(metric, 0) + values

    def set_column(self, name: str, values: pa.Array) -> None:
        """Add an output column (the step declares it in ``output_fields``)."""
        self.columns[name] = values

    def final_text(self) -> pa.Array:
        """The text column to emit: the current text, or for dropped rows the text they had when dropped."""
        text = self._text
        for mask, values in self._dropped_text:
            text = pc.replace_with_mask(text, pa.array(mask), values.cast(text.type))
        return text


# --------------------------------------------------------------------------------------------
# Plain-Python references (used by tests and the pandas baseline, never by the Spark job)
# --------------------------------------------------------------------------------------------

def _is_punct_or_symbol(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def python_words(text: str | None) -> list[str]:
    """Reference of :func:`split_words` in plain Python, for one text."""
    out = []
    for token in (text or "").split():
        start, end = 0, len(token)
        while start < end and _is_punct_or_symbol(token[start]):
            start += 1
        while end > start and _is_punct_or_symbol(token[end - 1]):
            end -= 1
        if end > start:
            out.append(token[start:end].lower())
    return out


def python_shingles(text: str | None, n: int = 5) -> set[tuple[str, ...]]:
    """Word n-gram shingles of one text in plain Python; a text of fewer than ``n`` words is one
    shingle of all its words (none if it has no words)."""
    words = python_words(text)
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def python_jaccard(a: str | None, b: str | None, n: int = 5) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts (the oracle of the dedup tests)."""
    sa, sb = python_shingles(a, n), python_shingles(b, n)
    if not sa and not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


WHITESPACE_RUN = re.compile(r"\s+")
