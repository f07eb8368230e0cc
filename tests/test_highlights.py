"""Locating LLM-quoted highlights in a document: each strategy, the edge cases, and a sweep
over the bundled sample documents."""

from __future__ import annotations

import re

import pytest

from roastq.evaluation.highlights import HighlightMatch, locate_highlight, number_lines
from roastq.evaluation.samples import load_documents

DOC = (
    "The quick brown fox jumps over the lazy dog.\n"
    "A second line talks about calibration and forecasts.\n"
    "\n"
    "The quick brown fox appears again on line four.\n"
    "Final line: naïve café résumé — 東京 emoji 🙂 done."
)


def line_of(content: str, offset: int) -> int:
    """1-based line number containing ``offset``."""
    return content.count("\n", 0, offset) + 1


def assert_consistent(content: str, m: HighlightMatch) -> None:
    """Invariants every valid match must satisfy."""
    assert m.is_valid and m.error is None
    assert 0 <= m.start_offset < m.end_offset <= len(content)
    assert content[m.start_offset : m.end_offset] == m.quoted_text
    assert m.prefix == content[max(0, m.start_offset - 30) : m.start_offset]


# -- number_lines -------------------------------------------------------------------------------


def test_number_lines_format():
    assert number_lines("alpha\nbeta\n\ngamma") == "Line 1: alpha\nLine 2: beta\nLine 3: \nLine 4: gamma"


def test_number_lines_one_entry_per_line():
    assert number_lines("only") == "Line 1: only"
    assert number_lines("") == "Line 1: "
    assert number_lines("a\n") == "Line 1: a\nLine 2: "
    rendered = number_lines(DOC)
    assert len(rendered.split("\n")) == DOC.count("\n") + 1
    assert rendered.split("\n")[4] == "Line 5: " + DOC.split("\n")[4]


# -- strategies ---------------------------------------------------------------------------------


def test_exact():
    m = locate_highlight(DOC, "jumps over the lazy dog")
    assert m.strategy == "exact"
    assert m.start_offset == DOC.index("jumps over")
    assert m.end_offset == m.start_offset + len("jumps over the lazy dog")
    assert_consistent(DOC, m)


def test_case_insensitive_returns_document_text():
    m = locate_highlight(DOC, "A SECOND LINE talks about Calibration")
    assert m.strategy == "case_insensitive"
    assert m.quoted_text == "A second line talks about calibration"
    assert_consistent(DOC, m)


def test_whitespace_normalised_maps_back_to_original_offsets():
    content = "Alpha  beta\n\n   gamma\tdelta epsilon."
    m = locate_highlight(content, "beta gamma   delta")
    assert m.strategy == "whitespace"
    assert m.start_offset == content.index("beta")
    assert m.end_offset == content.index("delta") + len("delta")
    assert m.quoted_text == "beta\n\n   gamma\tdelta"
    assert_consistent(content, m)


def test_whitespace_and_case_together():
    m = locate_highlight(DOC, "  the LAZY   dog. ")
    assert m.strategy == "whitespace"
    assert m.quoted_text == "the lazy dog."
    assert_consistent(DOC, m)


def test_fuzzy_with_typo():
    m = locate_highlight(DOC, "talks about calibraton and forecasts")
    assert m.strategy == "fuzzy"
    assert m.quoted_text == "talks about calibration and forecasts"
    assert_consistent(DOC, m)


def test_fuzzy_with_substitution_keeps_aligned_region():
    m = locate_highlight(DOC, "second line talks abaut calibration")
    assert m.strategy == "fuzzy"
    assert m.quoted_text == "second line talks about calibration"
    assert_consistent(DOC, m)


def test_fuzzy_prefers_referenced_lines():
    m = locate_highlight(DOC, "The quick brown fax", 4, 4)
    assert m.strategy == "fuzzy"
    assert line_of(DOC, m.start_offset) == 4
    assert m.quoted_text == "The quick brown fox"


def test_fuzzy_respects_min_score():
    quote = "talks about calibraton and forecasts"
    assert locate_highlight(DOC, quote, min_score=99.5).strategy == "none"
    assert locate_highlight(DOC, quote, min_score=90).strategy == "fuzzy"


# -- line references ----------------------------------------------------------------------------


def test_referenced_lines_preferred_when_quote_occurs_twice():
    first = DOC.index("The quick brown fox")
    second = DOC.index("The quick brown fox", first + 1)
    assert locate_highlight(DOC, "The quick brown fox").start_offset == first
    assert locate_highlight(DOC, "The quick brown fox", 4, 4).start_offset == second
    assert locate_highlight(DOC, "The quick brown fox", 1, 1).start_offset == first
    # start_line only, and reversed references, still mean line 4.
    assert locate_highlight(DOC, "The quick brown fox", 4).start_offset == second
    assert locate_highlight(DOC, "the QUICK brown fox", 5, 4).start_offset == second


def test_quote_outside_referenced_lines_still_found():
    m = locate_highlight(DOC, "lazy dog", 4, 5)
    assert m.strategy == "exact"
    assert m.start_offset == DOC.index("lazy dog")


@pytest.mark.parametrize("lines", [(0, 1), (6, 6), (2, 99), (-3, -1), (True, True), ("1", "2")])
def test_out_of_range_lines_are_ignored(lines):
    m = locate_highlight(DOC, "The quick brown fox", *lines)
    assert m.strategy == "exact"
    assert m.start_offset == 0


def test_multi_line_quote():
    quote = "lazy dog.\nA second line"
    m = locate_highlight(DOC, quote, 1, 2)
    assert m.strategy == "exact"
    assert m.start_offset == DOC.index(quote)
    # Models usually flatten the newline into a space.
    m2 = locate_highlight(DOC, "the lazy dog. A second line talks", 1, 2)
    assert m2.strategy == "whitespace"
    assert m2.quoted_text == "the lazy dog.\nA second line talks"
    assert_consistent(DOC, m2)


def test_multi_line_quote_cited_by_first_line_only():
    m = locate_highlight(DOC, "lazy dog. A second lime talks about", 1, 1)
    assert m.strategy == "fuzzy"
    assert m.quoted_text == "lazy dog.\nA second line talks about"


# -- invalid input ------------------------------------------------------------------------------


def test_not_found():
    m = locate_highlight(DOC, "an entirely different sentence about zebras and teapots")
    assert m == HighlightMatch(
        start_offset=None,
        end_offset=None,
        quoted_text="an entirely different sentence about zebras and teapots",
        prefix="",
        is_valid=False,
        error="quote not found in document",
        strategy="none",
    )


@pytest.mark.parametrize("quote", ["", "   ", "\n\t"])
def test_empty_quote(quote):
    m = locate_highlight(DOC, quote, 1, 1)
    assert not m.is_valid
    assert m.error == "empty quote"
    assert m.strategy == "none"
    assert m.start_offset is None and m.end_offset is None and m.prefix == ""


def test_quote_longer_than_document():
    m = locate_highlight("short doc", "short doc with a great deal more text than it has")
    assert not m.is_valid
    assert m.error == "quote longer than document"


def test_empty_document():
    m = locate_highlight("", "anything")
    assert not m.is_valid and m.start_offset is None


def test_whole_document_quote():
    m = locate_highlight(DOC, DOC)
    assert (m.start_offset, m.end_offset, m.strategy) == (0, len(DOC), "exact")


# -- unicode and prefix -------------------------------------------------------------------------


def test_unicode_offsets_are_str_indices():
    m = locate_highlight(DOC, "café résumé — 東京 emoji 🙂")
    assert m.strategy == "exact"
    assert m.start_offset == DOC.index("café")
    assert m.end_offset == DOC.index("🙂") + 1
    assert_consistent(DOC, m)


def test_unicode_case_insensitive():
    m = locate_highlight(DOC, "NAÏVE CAFÉ RÉSUMÉ")
    assert m.strategy == "case_insensitive"
    assert m.quoted_text == "naïve café résumé"


def test_case_folding_that_changes_length_keeps_offsets():
    # "İ".lower() is two characters; offsets after it must not shift.
    content = "İstanbul, İzmir and Ankara are cities."
    m = locate_highlight(content, "ankara ARE cities")
    assert m.strategy == "case_insensitive"
    assert m.quoted_text == "Ankara are cities"
    m = locate_highlight(content, "and Ankra are cities")
    assert m.strategy == "fuzzy"
    assert m.quoted_text == "and Ankara are cities"


def test_prefix():
    m = locate_highlight(DOC, "over the lazy dog")
    assert m.prefix == "The quick brown fox jumps "
    m = locate_highlight(DOC, "The quick brown fox appears")
    assert m.prefix == DOC[m.start_offset - 30 : m.start_offset]
    assert len(m.prefix) == 30
    assert locate_highlight(DOC, "The quick").prefix == ""


# -- sweep over the sample documents ------------------------------------------------------------


@pytest.mark.parametrize("doc", load_documents(), ids=lambda d: d.slug)
def test_every_word_span_of_sample_documents_is_found_exactly(doc):
    content = doc.content
    words = list(re.finditer(r"\S+", content))
    checked = 0
    for n in range(6, 13):
        for i in range(len(words) - n + 1):
            start, end = words[i].start(), words[i + n - 1].end()
            span = content[start:end]
            first, last = line_of(content, start), line_of(content, end - 1)
            unique = content.find(span) == start and content.find(span, start + 1) == -1

            m = locate_highlight(content, span, first, last)
            assert m.strategy == "exact", span
            assert m.quoted_text == span
            assert m.prefix == content[max(0, m.start_offset - 30) : m.start_offset]
            if unique:
                assert (m.start_offset, m.end_offset) == (start, end), span
            else:
                # A repeated span must come from the cited lines.
                assert first <= line_of(content, m.start_offset) <= last

            # Without line references: the first occurrence.
            assert locate_highlight(content, span).start_offset == content.find(span)
            checked += 1
    assert checked > 5000


def test_mutated_quotes_keep_invariants():
    """Seeded random quotes with typos, case and whitespace changes: never raises, and every
    valid match satisfies the offset invariants."""
    import random

    rng = random.Random(7)
    docs = [d.content for d in load_documents()]
    strategies = set()
    for _ in range(500):
        content = rng.choice(docs)
        i = rng.randrange(len(content))
        quote = list(content[i : i + rng.randint(1, 300)])
        for _ in range(rng.randint(0, 3)):
            if not quote:
                break
            k = rng.randrange(len(quote))
            op = rng.choice("sdiuw")
            if op == "s":
                quote[k] = rng.choice("xyzé ")
            elif op == "d":
                del quote[k]
            elif op == "i":
                quote.insert(k, rng.choice("abc \n"))
            elif op == "u":
                quote = [ch.upper() for ch in quote]
            else:
                quote.insert(k, "   ")
        lines = (rng.choice([None, rng.randint(-2, 200)]), rng.choice([None, rng.randint(-2, 200)]))
        m = locate_highlight(content, "".join(quote), *lines)
        strategies.add(m.strategy)
        if m.is_valid:
            assert_consistent(content, m)
        else:
            assert m.start_offset is None and m.end_offset is None and m.error
    assert {"exact", "case_insensitive", "whitespace", "fuzzy"} <= strategies


# -- quotes as models write them (issue 12) ------------------------------------------------------

PROSE = (
    "Forecasting is a skill, and it's one you can train.\n"
    'The author says "calibration" matters more than raw accuracy - a claim worth testing.\n'
    "\n"
    "Second paragraph: the study followed 40 forecasters for two years and scored every prediction.\n"
    "Their Brier scores improved by a third, which the author calls remarkable.\n"
    + "".join(f"Filler line {n}.\n" for n in range(1, 9))
    + "Their Brier scores improved by a third, which the author calls remarkable.\n"
)


def located(quote, start_line=None, end_line=None):
    m = locate_highlight(PROSE, quote, start_line, end_line)
    assert_consistent(PROSE, m)
    return m


def test_curly_apostrophe_against_straight():
    m = located("Forecasting is a skill, and it\u2019s one you can train.")
    assert m.quoted_text == "Forecasting is a skill, and it's one you can train." and m.strategy == "typography"


def test_curly_double_quotes_and_a_dash_against_straight():
    m = located("says \u201ccalibration\u201d matters more than raw accuracy \u2014 a claim")
    assert m.quoted_text == 'says "calibration" matters more than raw accuracy - a claim'


def test_quotation_marks_around_the_whole_quote():
    m = located("\u201cTheir Brier scores improved by a third\u201d")
    assert m.quoted_text == "Their Brier scores improved by a third" and m.strategy == "typography"


def test_ellipsis_for_omitted_words():
    for mark in ("...", "\u2026", "[...]"):
        m = located(f"the study followed 40 forecasters {mark} scored every prediction")
        assert m.quoted_text == "the study followed 40 forecasters for two years and scored every prediction"
        assert m.strategy == "ellipsis"


def test_collapsed_line_breaks():
    m = located(
        "Second paragraph: the study followed 40 forecasters for two years and scored every "
        "prediction. Their Brier scores improved by a third"
    )
    assert "\n" in m.quoted_text and m.quoted_text.endswith("improved by a third")


def test_quote_spanning_two_paragraphs():
    m = located(
        'train. The author says "calibration" matters more than raw accuracy - a claim worth testing. '
        "Second paragraph: the study"
    )
    assert m.quoted_text.count("\n") == 3 and m.quoted_text.startswith("train.")


def test_a_changed_word():
    m = located("the study followed 40 forecasters for three years and scored every prediction")
    assert m.quoted_text.startswith("the study followed 40 forecasters for two years") and m.strategy == "fuzzy"


@pytest.mark.parametrize("off", [-4, -3, -1, 1])
def test_line_numbers_a_few_lines_off_still_pick_the_nearer_occurrence(off):
    quote = "Their Brier scores improved by a third"
    second = PROSE.rindex(quote)
    m = located(quote, 14 + off, 14 + off)  # the second occurrence is on line 14
    assert m.start_offset == second
    m = located(quote, 5 + off, 5 + off)  # the first on line 5
    assert m.start_offset == PROSE.index(quote)


def test_a_quote_found_nowhere_is_an_invalid_highlight():
    m = locate_highlight(PROSE, "As the author writes, the sample size is the key mechanism.", 2, 2)
    assert not m.is_valid and m.error == "quote not found in document"
