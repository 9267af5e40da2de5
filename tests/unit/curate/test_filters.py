"""Each quality filter's drop reason on tiny inline texts (pure Python through the batch steps: no Spark)."""

from __future__ import annotations

import pytest

from lakeforge.curate import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from lakeforge.stage.text import python_words, split_words
from lakeforge.errors import ConfigError

GOOD = ("The film was a quiet delight, and the cast gives it warmth. I would watch it again with my family, "
        "and I think that most viewers will have a good time with it.")


def reason(step, text):
    return step.run_texts([text])[1][0]


@pytest.mark.parametrize("params, text, expected", [
    ({"min_doc_words": 20}, GOOD, None),
    ({}, GOOD, "too_few_words"),  # Gopher's default: 50 words
    ({"min_doc_words": 5}, "the and of it", "too_few_words"),
    ({"min_doc_words": 1, "max_doc_words": 5}, GOOD, "too_many_words"),
    ({"min_doc_words": 3}, "a be to of it is an at", "short_mean_word_length"),
    ({"min_doc_words": 3, "min_stop_words": 1}, "the incomprehensibilities and counterrevolutionaries", "long_mean_word_length"),
    ({"min_doc_words": 3}, "#great #film #the #and #with review here", "high_symbol_ratio"),
    ({"min_doc_words": 3}, "- the first point\n- and the second\n- with a third", "high_bullet_lines_ratio"),
    ({"min_doc_words": 3, "max_symbol_word_ratio": None}, "the film was good...\nand then with it...\nthe end",
     "high_ellipsis_lines_ratio"),
    ({"min_doc_words": 3}, "the 1000 2000 3000 4000 and 5000 6000 with", "high_non_alpha_words_ratio"),
    ({"min_doc_words": 3}, "Moving, beautifully acted, unforgettable cinema experience", "too_few_stop_words"),
    ({"min_doc_words": 3, "min_stop_words": None}, "Moving, beautifully acted, unforgettable cinema experience", None),
])
def test_gopher_quality_reasons(params, text, expected):
    assert reason(GopherQualityFilter(**params), text) == expected


@pytest.mark.parametrize("text, expected", [
    (GOOD, None),
    ("the same paragraph here\n\nthe same paragraph here\n\nthe same paragraph here\n\nanother one", "duplicated_paragraphs"),
    ("the same line here\nthe same line here\nthe same line here\nother", "duplicated_lines"),
    ("spam spam spam spam spam spam spam spam spam eggs", "top_2gram"),
])
def test_gopher_repetition_reasons(text, expected):
    assert reason(GopherRepetitionFilter(), text) == expected


def test_gopher_repetition_duplicated_ngrams():
    text = "It is a truly great film about a family. " * 3 + GOOD
    assert reason(GopherRepetitionFilter(), text) == "top_4gram"  # checked first
    assert reason(GopherRepetitionFilter(top_n_grams=None), text) == "duplicated_5grams"
    assert reason(GopherRepetitionFilter(top_n_grams=None, dup_n_grams={5: 0.5}), text) is None


def test_gopher_repetition_top_ngram_needs_a_repeat():
    # one long 2-gram is a large share of a tiny text, but it does not repeat: kept (datatrove drops it)
    assert reason(GopherRepetitionFilter(), "incomprehensibilities everywhere") is None


@pytest.mark.parametrize("params, text, expected", [
    ({}, GOOD + " It is fine.", None),
    ({}, "Lorem ipsum dolor sit amet. Consectetur. Adipiscing elit.", "lorem_ipsum"),
    ({}, "function f() { return 1; }. A. B.", "curly_bracket"),
    ({}, "Please enable JavaScript to view this page. Thanks. Bye.", "javascript_notice"),
    ({}, "This site uses cookies. Read our privacy policy. Thanks.", "policy_boilerplate"),
    ({}, "One sentence only.", "too_few_sentences"),
    ({"min_sentences": None}, "One sentence only.", None),
])
def test_c4_reasons(params, text, expected):
    assert reason(C4QualityFilter(**params), text) == expected


@pytest.mark.parametrize("cls, params", [
    (GopherQualityFilter, {"max_symbol_word_ratio": 2}),
    (GopherQualityFilter, {"min_doc_words": 10, "max_doc_words": 5}),
    (GopherRepetitionFilter, {"dup_n_grams": {5: 1.5}}),
    (C4QualityFilter, {"min_sentences": -1}),
])
def test_bad_thresholds(cls, params):
    with pytest.raises(ConfigError):
        cls(**params)


def test_first_failing_check_wins_and_rows_are_independent():
    step = GopherQualityFilter(min_doc_words=5)
    texts, reasons = step.run_texts(["the and", GOOD, None, "   "])
    assert reasons == ["too_few_words", None, "too_few_words", "too_few_words"]


@pytest.mark.parametrize("text", ["Great -- REALLY great!", "don't stop, \"ok\"?", "ﬁne…  x", "", None, "(a) [b] {c}",
                                  "tabs\tand\u00a0nbsp", "Ünïcödé ÉCOLE"])
def test_arrow_words_equal_the_python_reference(text):
    import pyarrow as pa

    words = split_words(pa.array([text], pa.string()))
    assert words.flat.to_pylist() == python_words(text)


def test_repeats_count_occurrences_and_mark_later_ones():
    import numpy as np

    from lakeforge.curate.filters import _repeats

    occurrences, repeat = _repeats(np.array([7, 3, 7, 7, 9, 3], dtype=np.uint64))
    assert occurrences.tolist() == [3, 2, 3, 3, 1, 2]
    assert repeat.tolist() == [False, False, True, True, False, True]
    empty = _repeats(np.array([], dtype=np.uint64))
    assert len(empty[0]) == len(empty[1]) == 0
