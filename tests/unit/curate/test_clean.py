"""The curate cleaners and filters on tiny inline texts, alone and on Spark."""

from __future__ import annotations

import hashlib

import pytest

from lakeforge.curate import (EmptyTextFilter, ExactDeduplicator, HtmlToText, LengthFilter, Lowercaser,
                              UnicodeNormalizer, WhitespaceNormalizer)




def frame(arrow_frame, rows):
    """``rows``: list of (id, text)."""
    return arrow_frame("id string, text string", rows)


def apply_one(arrow_frame, step, text):
    """(kept text or None, drop reason or None) of one row through one step (one Spark job)."""
    from pyspark.sql import functions as F

    kept, dropped = step.apply(frame(arrow_frame, [("a", text)]))
    both = kept.withColumn("reason", F.lit(None).cast("string"))
    if dropped is not None:
        both = both.unionByName(dropped.select(*both.columns))
    (row,) = both.collect()
    return (None if row["reason"] else row["text"]), row["reason"]

@pytest.mark.parametrize(
    "text, expected",
    [
        ("Great movie.<br /><br />Loved it", "Great movie.\n\nLoved it"),
        ("<p>One</p><p>Two</p>", "One\nTwo\n"),
        ('<a href="http://x.y">link</a> and <B>bold</B>', "link and bold"),
        ("fish &amp; chips &lt;3 &quot;yes&quot; it&#39;s", 'fish & chips <3 "yes" it\'s'),
        ("escaped &lt;b&gt;tag&lt;/b&gt; stays text", "escaped <b>tag</b> stays text"),
        ("&amp;lt; is double escaped", "&lt; is double escaped"),
        ("3 < 5 and 7 > 2", "3 < 5 and 7 > 2"),
        ("a<script>alert(1)</script>b<style>p{}</style>c<!-- hidden -->d", "abcd"),
        ("line<br>break<BR/>again", "line\nbreak\nagain"),
        ("no markup at all", "no markup at all"),
        (None, None),
    ],
)
def test_strip_html(text, expected):
    assert HtmlToText().run_texts([text]) == ([expected], [None])


def test_strip_html_on_spark_keeps_other_columns(arrow_frame):
    assert apply_one(arrow_frame, HtmlToText(), "<p>a <b>b</b></p>") == ("a b\n", None)


@pytest.mark.parametrize("text, expected", [
    ("ﬁne ＡＢＣ … x\u00a0y", "fine ABC ... x y"),
    ("Cafe\u0301", "Caf\u00e9"),  # combining accent composed
    (None, None),
])
def test_normalize_unicode_nfkc(text, expected):
    assert UnicodeNormalizer().run_texts([text])[0] == [expected]


def test_lowercase():
    assert Lowercaser().run_texts(["Great FILM", None])[0] == ["great film", None]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  too   many    spaces  ", "too many spaces"),
        ("tabs\tand\u00a0nbsp\u2003em", "tabs and nbsp em"),
        ("ctrl\x00chars\x07gone\x7f", "ctrlcharsgone"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("para one  \n\n\n\n  para two", "para one\n\npara two"),
        ("windows\r\nline\rends", "windows\nline\nends"),
        ("\n\n  \t", ""),
        ("", ""),
        (None, None),
    ],
)
def test_normalize_whitespace(text, expected):
    assert WhitespaceNormalizer().run_texts([text]) == ([expected], [None])


@pytest.mark.parametrize(
    "step, text, reason",
    [
        (EmptyTextFilter(), "", "empty_text"),
        (EmptyTextFilter(), None, "empty_text"),
        (EmptyTextFilter(), " \n\t ", "empty_text"),
        (EmptyTextFilter(), "x", None),
        (LengthFilter(min_chars=5, max_chars=10), "four", "too_short"),
        (LengthFilter(min_chars=5, max_chars=10), "fives", None),
        (LengthFilter(min_chars=5, max_chars=10), "exactly 10", None),
        (LengthFilter(min_chars=5, max_chars=10), "eleven char", "too_long"),
        (LengthFilter(min_chars=5, max_chars=10), None, "too_short"),
        (LengthFilter(min_chars=1), "é" * 50, None),
        (LengthFilter(min_chars=2, max_chars=3), "ééé", None),  # characters, not bytes
    ],
)
def test_filters_drop_with_exact_reason(step, text, reason):
    texts, reasons = step.run_texts([text])
    assert reasons == [reason]
    assert texts == [text]  # a filter never rewrites


def test_filter_on_spark_splits_kept_and_dropped(arrow_frame):
    assert apply_one(arrow_frame, LengthFilter(min_chars=5), "four") == (None, "too_short")
    assert apply_one(arrow_frame, LengthFilter(min_chars=5), "fives") == ("fives", None)


def test_exact_dedup_keeps_smallest_id(arrow_frame):
    df = frame(arrow_frame, [("b", "Same Text"), ("a", "same  text"), ("c", "SAME TEXT "), ("d", "other")])
    kept, dropped = ExactDeduplicator().apply(df)
    assert sorted((r["id"], r["text"]) for r in kept.collect()) == [("a", "same  text"), ("d", "other")]
    assert sorted((r["id"], r["reason"], r["duplicate_of"]) for r in dropped.collect()) == [
        ("b", "exact_duplicate", "a"), ("c", "exact_duplicate", "a")]
    hashes = {r["id"]: r["text_hash"] for r in kept.collect()}
    assert hashes["a"] == hashlib.sha256(b"same text").hexdigest()
