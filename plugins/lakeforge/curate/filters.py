"""Row filters: empty and length bounds, and the Gopher / C4 document-quality heuristics.

The heuristics follow Gopher (Rae et al. 2021, "Scaling Language Models", appendix A) and C4
(Raffel et al. 2020) as datatrove implements them, with the thresholds as constructor parameters
(datatrove's defaults) so a pipeline YAML tunes them per dataset — movie reviews, for instance,
are often one sentence and need far lower word bounds than web pages. Each check has its own
snake_case drop reason; a document failing several gets the first in the order listed.

All statistics are computed for a whole Arrow batch at once (see :mod:`lakeforge.stage.text` for
what a *word* is) and shared between the filters of a fused pass. Where this differs from
datatrove, on purpose:

* words are whitespace tokens without their edge punctuation (no spaCy/NLTK tokenizer);
* the top n-gram check only fires on an n-gram that occurs at least twice (datatrove's can drop a
  very short text whose only n-gram is long);
* duplicated n-gram characters count each character covered by a repeated occurrence once
  (Gopher's definition), where datatrove skips ahead greedily.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakeforge.stage.steps import BatchFilter
from lakeforge.stage.text import TextBatch, Words, mix64, ngram_keys, ngram_positions, segment_reduce
from lakeforge.errors import ConfigError

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "●", "‣", "◦", "▪", "-", "*", "–")


def _first_reason(checks: Sequence[tuple[np.ndarray, str]], rows: int) -> np.ndarray:
    """Object array: per row, the reason of the first failing check (None when all pass)."""
    out = np.full(rows, None, dtype=object)
    for failed, reason in reversed(checks):  # earlier checks overwrite later ones
        out[failed] = reason
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num), dtype=np.float64), where=den > 0)


class EmptyTextFilter(BatchFilter):
    """Drop rows whose text is null or only whitespace (reason ``empty_text``)."""

    name = "drop_empty"
    reasons = ("empty_text",)

    def drop_reasons(self, batch):
        has_content = pc.fill_null(pc.match_substring_regex(batch.text, r"[^\s\p{Z}]"), False)
        return np.where(has_content.to_numpy(zero_copy_only=False), None, "empty_text").astype(object)


class LengthFilter(BatchFilter):
    """Drop texts shorter than ``min_chars`` (``too_short``) or longer than ``max_chars``
    (``too_long``), counted in characters. A null text counts as length 0."""

    name = "length_filter"
    reasons = ("too_short", "too_long")

    def __init__(self, min_chars: int = 0, max_chars: int | None = None):
        """Args:
            min_chars: shortest text kept (inclusive).
            max_chars: longest text kept (inclusive); None for no upper bound.
        """
        if min_chars < 0 or (max_chars is not None and max_chars < min_chars):
            raise ConfigError(
                f"length_filter needs 0 <= min_chars <= max_chars, got min_chars={min_chars}, max_chars={max_chars}"
            )
        self.min_chars = int(min_chars)
        self.max_chars = None if max_chars is None else int(max_chars)

    def drop_reasons(self, batch):
        length = pc.fill_null(pc.utf8_length(batch.text), 0).to_numpy(zero_copy_only=False)
        checks = [(length < self.min_chars, "too_short")]
        if self.max_chars is not None:
            checks.append((length > self.max_chars, "too_long"))
        return _first_reason(checks, len(batch))


# --------------------------------------------------------------------------------------------
# Shared batch statistics
# --------------------------------------------------------------------------------------------

def text_chars(batch: TextBatch) -> np.ndarray:
    return batch.cached("text_chars", lambda: pc.fill_null(pc.utf8_length(batch.text), 0)
                        .to_numpy(zero_copy_only=False).astype(np.int64))


def split_parts(text: pa.Array, pattern: str) -> tuple[pa.Array, np.ndarray]:
    """Non-blank pieces of each text split on the RE2 ``pattern`` (trimmed), and their row."""
    parts = pc.split_pattern_regex(pc.fill_null(text, ""), pattern)
    parents = pc.list_parent_indices(parts).to_numpy()
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    keep = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    return flat.filter(pa.array(keep)), parents[keep].astype(np.int64)


def duplicates_per_row(values: pa.Array, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """For pieces ``values`` of rows ``rows``: per row, how many pieces repeat an earlier piece of
    the same row, and how many characters those repeats hold."""
    if len(values) == 0:
        return np.zeros(n_rows, dtype=np.int64), np.zeros(n_rows, dtype=np.int64)
    codes = pc.dictionary_encode(values).indices.to_numpy().astype(np.int64)
    keys = rows * (int(codes.max()) + 1) + codes
    _, first = np.unique(keys, return_index=True)
    repeat = np.ones(len(keys), dtype=bool)
    repeat[first] = False
    chars = pc.utf8_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
    return (np.bincount(rows[repeat], minlength=n_rows),
            np.bincount(rows[repeat], weights=chars[repeat], minlength=n_rows).astype(np.int64))


def _doc_ngram_keys(words: Words, codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start position, document, key) of every word n-gram; keys are unique per (document, n-gram)."""
    starts, doc = ngram_positions(words.offsets, n)
    keys = ngram_keys(codes.astype(np.uint64), starts, n)
    with np.errstate(over="ignore"):
        keys = mix64(keys ^ (doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
    return starts, doc, keys


def _repeats(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key: how often it occurs, and whether an equal key occurs before it.

    ``pandas.factorize`` (a hash table; 2.5x faster here than a stable argsort) numbers the
    distinct keys in order of first occurrence, so a key is new exactly where its code exceeds
    every code before it.
    """
    import pandas as pd

    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    codes, distinct = pd.factorize(keys)
    occurrences = np.bincount(codes, minlength=len(distinct))[codes]
    repeat = np.ones(len(codes), dtype=bool)
    repeat[0] = False
    repeat[1:] = codes[1:] <= np.maximum.accumulate(codes)[:-1]
    return occurrences, repeat


def top_ngram_chars(words: Words, codes: np.ndarray, n: int, n_rows: int) -> np.ndarray:
    """Per row: characters held by its most frequent word n-gram (count x length with the n-1
    spaces), 0 when no n-gram occurs twice."""
    starts, doc, keys = _doc_ngram_keys(words, codes, n)
    if len(keys) == 0:
        return np.zeros(n_rows, dtype=np.int64)
    occurrences, _ = _repeats(keys)
    cum = np.concatenate([[0], np.cumsum(words.chars)])
    length = cum[starts + n] - cum[starts] + (n - 1)
    held = np.where(occurrences >= 2, occurrences * length, 0)
    return segment_reduce(np.maximum, held, doc, n_rows, 0)


def duplicated_ngram_chars(words: Words, codes: np.ndarray, n: int, n_rows: int,
                           rows: np.ndarray | None = None) -> np.ndarray:
    """Per row: characters of the words covered by a repeated occurrence of a word n-gram (an
    n-gram seen earlier in the same row), each character counted once. ``rows`` (bool) limits
    the work to those rows (the others get 0)."""
    starts, doc, keys = _doc_ngram_keys(words, codes, n)
    if rows is not None:
        keep = rows[doc]
        starts, doc, keys = starts[keep], doc[keep], keys[keep]
    if len(keys) == 0:
        return np.zeros(n_rows, dtype=np.int64)
    _, repeat = _repeats(keys)
    # mark words [start, start + n) of every repeated occurrence: +1/-1 at the ends, running sum
    diff = np.zeros(len(words.chars) + 1, dtype=np.int64)
    np.add.at(diff, starts[repeat], 1)
    np.add.at(diff, starts[repeat] + n, -1)
    covered = np.cumsum(diff[:-1]) > 0
    return np.bincount(words.doc, weights=np.where(covered, words.chars, 0), minlength=n_rows).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Gopher
# --------------------------------------------------------------------------------------------

class GopherQualityFilter(BatchFilter):
    """Gopher's quality rules: word-count bounds, mean word length, symbol-to-word ratio, bullet and
    ellipsis lines, share of words without letters, stop-word presence.

    Reasons, in the order checked: ``too_few_words``, ``too_many_words``, ``short_mean_word_length``,
    ``long_mean_word_length``, ``high_symbol_ratio``, ``high_bullet_lines_ratio``,
    ``high_ellipsis_lines_ratio``, ``high_non_alpha_words_ratio``, ``too_few_stop_words``.
    """

    name = "gopher_quality"
    reasons = ("too_few_words", "too_many_words", "short_mean_word_length", "long_mean_word_length",
               "high_symbol_ratio", "high_bullet_lines_ratio", "high_ellipsis_lines_ratio",
               "high_non_alpha_words_ratio", "too_few_stop_words")

    def __init__(self, min_doc_words: int | None = 50, max_doc_words: int | None = 100_000,
                 min_avg_word_length: float | None = 3, max_avg_word_length: float | None = 10,
                 max_symbol_word_ratio: float | None = 0.1, max_bullet_lines_ratio: float | None = 0.9,
                 max_ellipsis_lines_ratio: float | None = 0.3, max_non_alpha_words_ratio: float | None = 0.2,
                 min_stop_words: int | None = 2, stop_words: Sequence[str] = GOPHER_STOP_WORDS):
        """Args (None switches a check off):
            min_doc_words / max_doc_words: bounds on the number of words.
            min_avg_word_length / max_avg_word_length: bounds on the mean word length (characters).
            max_symbol_word_ratio: most ``#`` and ``...``/``…`` per word.
            max_bullet_lines_ratio: largest share of lines starting with a bullet.
            max_ellipsis_lines_ratio: largest share of lines ending with an ellipsis.
            max_non_alpha_words_ratio: largest share of words without a letter (Gopher: 80% of words
                must have one; datatrove's ``max_non_alpha_words_ratio=0.8`` means that minimum).
            min_stop_words: fewest words from ``stop_words``.
            stop_words: the stop-word list (lowercase).
        """
        for key, value in dict(max_symbol_word_ratio=max_symbol_word_ratio, max_bullet_lines_ratio=max_bullet_lines_ratio,
                               max_ellipsis_lines_ratio=max_ellipsis_lines_ratio,
                               max_non_alpha_words_ratio=max_non_alpha_words_ratio).items():
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"gopher_quality {key} must be within [0, 1], got {value}")
        if min_doc_words is not None and max_doc_words is not None and max_doc_words < min_doc_words:
            raise ConfigError(f"gopher_quality needs min_doc_words <= max_doc_words, got {min_doc_words} > {max_doc_words}")
        self.min_doc_words = min_doc_words
        self.max_doc_words = max_doc_words
        self.min_avg_word_length = min_avg_word_length
        self.max_avg_word_length = max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.max_non_alpha_words_ratio = max_non_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = tuple(w.lower() for w in stop_words)

    def drop_reasons(self, batch):
        rows = len(batch)
        words = batch.words()
        n_words = words.counts
        mean_len = _ratio(np.bincount(words.doc, weights=words.chars, minlength=rows), n_words)
        text = pc.fill_null(batch.text, "")
        symbols = (pc.count_substring(text, "#").to_numpy(zero_copy_only=False)
                   + pc.count_substring(text, "...").to_numpy(zero_copy_only=False)
                   + pc.count_substring(text, "…").to_numpy(zero_copy_only=False))
        lines, line_row = batch.cached("lines", lambda: split_parts(batch.text, r"\n"))
        n_lines = np.bincount(line_row, minlength=rows)
        starts_bullet = pc.starts_with(lines, BULLETS[0]).to_numpy(zero_copy_only=False)
        for bullet in BULLETS[1:]:
            starts_bullet = starts_bullet | pc.starts_with(lines, bullet).to_numpy(zero_copy_only=False)
        ends_ellipsis = (pc.ends_with(lines, "...").to_numpy(zero_copy_only=False)
                         | pc.ends_with(lines, "…").to_numpy(zero_copy_only=False))
        non_alpha = np.bincount(words.doc, weights=~words.has_letter, minlength=rows)
        stop = pc.is_in(words.flat, pa.array(self.stop_words)).to_numpy(zero_copy_only=False)
        n_stop = np.bincount(words.doc, weights=stop, minlength=rows)

        checks = []
        if self.min_doc_words is not None:
            checks.append((n_words < self.min_doc_words, "too_few_words"))
        if self.max_doc_words is not None:
            checks.append((n_words > self.max_doc_words, "too_many_words"))
        if self.min_avg_word_length is not None:
            checks.append((mean_len < self.min_avg_word_length, "short_mean_word_length"))
        if self.max_avg_word_length is not None:
            checks.append((mean_len > self.max_avg_word_length, "long_mean_word_length"))
        if self.max_symbol_word_ratio is not None:
            checks.append((_ratio(symbols, n_words) > self.max_symbol_word_ratio, "high_symbol_ratio"))
        if self.max_bullet_lines_ratio is not None:
            bullets = np.bincount(line_row, weights=starts_bullet, minlength=rows)
            checks.append((_ratio(bullets, n_lines) > self.max_bullet_lines_ratio, "high_bullet_lines_ratio"))
        if self.max_ellipsis_lines_ratio is not None:
            ellipsis = np.bincount(line_row, weights=ends_ellipsis, minlength=rows)
            checks.append((_ratio(ellipsis, n_lines) > self.max_ellipsis_lines_ratio, "high_ellipsis_lines_ratio"))
        if self.max_non_alpha_words_ratio is not None:
            checks.append((_ratio(non_alpha, n_words) > self.max_non_alpha_words_ratio, "high_non_alpha_words_ratio"))
        if self.min_stop_words is not None:
            checks.append((n_stop < self.min_stop_words, "too_few_stop_words"))
        return _first_reason(checks, rows)


def _thresholds(value: Mapping[int, float] | Sequence[Sequence[float]] | None, what: str) -> tuple[tuple[int, float], ...]:
    """``{n: fraction}`` or ``[[n, fraction], ...]`` from YAML, validated and sorted by n."""
    if value is None:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    out = []
    for pair in pairs:
        n, frac = pair
        if int(n) < 1 or not 0 <= float(frac) <= 1:
            raise ConfigError(f"gopher_repetition {what}: need n >= 1 and a fraction in [0, 1], got {n}: {frac}")
        out.append((int(n), float(frac)))
    return tuple(sorted(out))


class GopherRepetitionFilter(BatchFilter):
    """Gopher's repetition rules: duplicated lines and paragraphs (share of them, share of
    characters in them), the most frequent word 2/3/4-gram's share of the characters, and the
    share of characters in repeated word 5..10-grams.

    Reasons, in the order checked: ``duplicated_paragraphs``, ``duplicated_paragraph_chars``,
    ``duplicated_lines``, ``duplicated_line_chars``, ``top_<n>gram``, ``duplicated_<n>grams``.
    """

    name = "gopher_repetition"

    def __init__(self, dup_line_frac: float | None = 0.3, dup_para_frac: float | None = 0.3,
                 dup_line_char_frac: float | None = 0.2, dup_para_char_frac: float | None = 0.2,
                 top_n_grams: Mapping[int, float] | Sequence[Sequence[float]] | None = ((2, 0.2), (3, 0.18), (4, 0.16)),
                 dup_n_grams: Mapping[int, float] | Sequence[Sequence[float]] | None = (
                     (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))):
        """Args (None switches a check off):
            dup_line_frac / dup_para_frac: largest share of lines / paragraphs that repeat an earlier one.
            dup_line_char_frac / dup_para_char_frac: largest share of characters in repeated lines / paragraphs.
            top_n_grams: ``{n: fraction}``: largest share of characters in the most frequent word n-gram.
            dup_n_grams: ``{n: fraction}``: largest share of characters in repeated word n-grams.
        """
        for key, value in dict(dup_line_frac=dup_line_frac, dup_para_frac=dup_para_frac,
                               dup_line_char_frac=dup_line_char_frac, dup_para_char_frac=dup_para_char_frac).items():
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"gopher_repetition {key} must be within [0, 1], got {value}")
        self.dup_line_frac = dup_line_frac
        self.dup_para_frac = dup_para_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.top_n_grams = _thresholds(top_n_grams, "top_n_grams")
        self.dup_n_grams = _thresholds(dup_n_grams, "dup_n_grams")
        self.reasons = ("duplicated_paragraphs", "duplicated_paragraph_chars", "duplicated_lines",
                        "duplicated_line_chars", *(f"top_{n}gram" for n, _ in self.top_n_grams),
                        *(f"duplicated_{n}grams" for n, _ in self.dup_n_grams))

    def params(self):
        return {**super().params(), "top_n_grams": dict(self.top_n_grams), "dup_n_grams": dict(self.dup_n_grams)}

    def drop_reasons(self, batch):
        rows = len(batch)
        chars = text_chars(batch)
        checks = []
        paras, para_row = batch.cached("paragraphs", lambda: split_parts(batch.text, r"\n\s*\n"))
        lines, line_row = batch.cached("lines", lambda: split_parts(batch.text, r"\n"))
        for pieces, piece_row, frac, char_frac, what in (
                (paras, para_row, self.dup_para_frac, self.dup_para_char_frac, "paragraph"),
                (lines, line_row, self.dup_line_frac, self.dup_line_char_frac, "line")):
            if frac is None and char_frac is None:
                continue
            dup, dup_chars = duplicates_per_row(pieces, piece_row, rows)
            if frac is not None:
                checks.append((_ratio(dup, np.bincount(piece_row, minlength=rows)) > frac, f"duplicated_{what}s"))
            if char_frac is not None:
                checks.append((_ratio(dup_chars, chars) > char_frac, f"duplicated_{what}_chars"))
        if self.top_n_grams or self.dup_n_grams:
            words, codes = batch.words(), batch.word_codes()
            for n, frac in self.top_n_grams:
                checks.append((_ratio(top_ngram_chars(words, codes, n, rows), chars) > frac, f"top_{n}gram"))
            # a row without a repeated m-gram has no repeated n-gram for n > m: only rows with
            # repeats at the previous size are looked at for the next one
            candidates = None
            for n, frac in self.dup_n_grams:
                dup_chars = duplicated_ngram_chars(words, codes, n, rows, candidates)
                checks.append((_ratio(dup_chars, chars) > frac, f"duplicated_{n}grams"))
                candidates = dup_chars > 0
        return _first_reason(checks, rows)


# --------------------------------------------------------------------------------------------
# C4
# --------------------------------------------------------------------------------------------

#: Phrases of cookie/terms boilerplate (C4 removes lines holding them; here they mark the document).
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")


class C4QualityFilter(BatchFilter):
    """C4's document rules: placeholder text, code, boilerplate, too few sentences.

    C4 also deletes individual lines (no terminal punctuation, under 3 words); that rewrites
    reviews whose paragraphs were split by ``<br>``, so this step only decides per document.
    Reasons, in the order checked: ``lorem_ipsum``, ``curly_bracket``, ``javascript_notice``,
    ``policy_boilerplate``, ``too_few_sentences``.
    """

    name = "c4_quality"
    reasons = ("lorem_ipsum", "curly_bracket", "javascript_notice", "policy_boilerplate", "too_few_sentences")

    def __init__(self, min_sentences: int | None = 3, drop_lorem_ipsum: bool = True, drop_curly_bracket: bool = True,
                 drop_javascript_notice: bool = True, drop_policy_boilerplate: bool = True):
        """Args:
            min_sentences: fewest sentences (runs of ``.``, ``!`` or ``?`` ending a word); None: no check.
            drop_lorem_ipsum: drop texts containing "lorem ipsum".
            drop_curly_bracket: drop texts containing ``{`` (code, templates).
            drop_javascript_notice: drop texts asking to enable JavaScript.
            drop_policy_boilerplate: drop texts with cookie / terms-of-use phrases.
        """
        if min_sentences is not None and min_sentences < 0:
            raise ConfigError(f"c4_quality min_sentences must be >= 0, got {min_sentences}")
        self.min_sentences = min_sentences
        self.drop_lorem_ipsum = drop_lorem_ipsum
        self.drop_curly_bracket = drop_curly_bracket
        self.drop_javascript_notice = drop_javascript_notice
        self.drop_policy_boilerplate = drop_policy_boilerplate

    def drop_reasons(self, batch):
        text = pc.fill_null(batch.text, "")
        lower = batch.cached("lower", lambda: pc.utf8_lower(text))

        def has(pattern: str) -> np.ndarray:
            return pc.match_substring_regex(lower, pattern).to_numpy(zero_copy_only=False)

        checks = []
        if self.drop_lorem_ipsum:
            checks.append((has(r"lorem ipsum"), "lorem_ipsum"))
        if self.drop_curly_bracket:
            checks.append((pc.match_substring(text, "{").to_numpy(zero_copy_only=False), "curly_bracket"))
        if self.drop_javascript_notice:
            checks.append((has(r"(enable|activate|turn on)\s+javascript|javascript\s+(is\s+)?(disabled|required)"),
                           "javascript_notice"))
        if self.drop_policy_boilerplate:
            checks.append((has("|".join(POLICY_PHRASES)), "policy_boilerplate"))
        if self.min_sentences is not None:
            sentences = pc.count_substring_regex(text, r"[^\s.!?][.!?]+(\s|$)").to_numpy(zero_copy_only=False)
            checks.append((sentences < self.min_sentences, "too_few_sentences"))
        return _first_reason(checks, len(batch))
