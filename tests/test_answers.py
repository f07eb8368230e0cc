"""The two tiers of answer validation (roastq/evaluation/answers.py): what fails an answer, and each
repair of what does not. Pure functions: no database, no simulator."""

from __future__ import annotations

import copy

import pytest

from roastq.evaluation.answers import MAX_HIGHLIGHTS, check_analysis, check_self_critique, cut_at_word
from roastq.exceptions import BadLLMOutput


def highlight(**over):
    h = {
        "header": "Unsupported claim",
        "description": "The claim needs a source.",
        "quoted_text": "the claim",
        "start_line": 3,
        "end_line": 3,
        "importance": 6,
        "level": "warning",
    }
    h.update(over)
    return {k: v for k, v in h.items() if v is not ...}


def answer(**over):
    a = {"summary": "A fine essay.", "analysis": "It argues well.", "grade": 72, "highlights": [highlight()]}
    a.update(over)
    return {k: v for k, v in a.items() if v is not ...}


def kinds(repairs):
    return sorted(r.kind for r in repairs)


def test_a_clean_answer_needs_no_repair():
    clean, repairs = check_analysis(answer(), provides_grades=True)
    assert repairs == [] and clean["grade"] == 72 and clean["highlights"][0]["header"] == "Unsupported claim"


@pytest.mark.parametrize(
    "change,missing",
    [
        ({"summary": ...}, "summary"),
        ({"summary": "  "}, "summary"),
        ({"analysis": 12}, "analysis"),
        ({"grade": ...}, "grade"),
        ({"grade": "high"}, "grade"),
        ({"highlights": ...}, "highlights"),
        ({"highlights": [highlight(quoted_text=...)]}, "quoted_text"),
        ({"highlights": "none"}, "highlights"),
    ],
)
def test_hard_tier_names_what_is_missing(change, missing):
    with pytest.raises(BadLLMOutput) as e:
        check_analysis(answer(**change), provides_grades=True)
    assert missing in str(e.value) and missing in e.value.feedback and "submit_analysis" in e.value.feedback


def test_no_grade_needed_when_the_agent_gives_none():
    clean, repairs = check_analysis(answer(grade=...), provides_grades=False)
    assert "grade" not in clean and repairs == []


def test_over_long_header_cut_at_a_word_boundary():
    long = "An unsupported causal claim " * 12  # 336 characters
    clean, repairs = check_analysis(answer(highlights=[highlight(header=long)]), provides_grades=True)
    header = clean["highlights"][0]["header"]
    assert len(header) <= 200 and header.endswith("\u2026") and long.startswith(header[:-1])
    assert header[:-1].endswith(("claim", "causal", "unsupported", "An"))  # whole words only
    assert kinds(repairs) == ["string_truncated"] and repairs[0].path == "highlights/0/header"


def test_numbers_coerced_and_clamped():
    h = highlight(importance="14", grade=-3, start_line="7")
    clean, repairs = check_analysis(answer(grade="85", highlights=[h]), provides_grades=True)
    got = clean["highlights"][0]
    assert (clean["grade"], got["importance"], got["grade"], got["start_line"]) == (85, 10, 0, 7)
    assert kinds(repairs) == ["number_clamped", "number_clamped", "number_coerced", "number_coerced", "number_coerced"]
    clean, repairs = check_analysis(answer(grade=130.0), provides_grades=True)
    assert clean["grade"] == 100 and kinds(repairs) == ["number_clamped", "number_coerced"]


def test_unknown_level_becomes_info_and_extra_properties_are_ignored():
    clean, repairs = check_analysis(
        answer(confidence="high", highlights=[highlight(level="critical", notes="x")]), provides_grades=True
    )
    assert clean["highlights"][0]["level"] == "info" and "notes" not in clean["highlights"][0]
    assert "confidence" not in clean
    assert kinds(repairs) == ["enum_defaulted", "extra_ignored", "extra_ignored"]


def test_too_many_highlights_trimmed_by_importance_keeping_their_order():
    hs = [highlight(quoted_text=f"quote {i}", importance=i % 10 + 1) for i in range(MAX_HIGHLIGHTS + 4)]
    clean, repairs = check_analysis(answer(highlights=copy.deepcopy(hs)), provides_grades=True)
    kept = [h["quoted_text"] for h in clean["highlights"]]
    assert len(kept) == MAX_HIGHLIGHTS and kinds(repairs) == ["items_trimmed"]
    assert kept == [h["quoted_text"] for h in hs if h["quoted_text"] in kept]  # the model's order
    assert min(h["importance"] for h in clean["highlights"]) >= 3  # the least important went


def test_missing_optional_fields_are_filled_and_a_highlight_without_a_quote_is_kept():
    hs = [highlight(header=..., importance=..., level=..., description=...), highlight(quoted_text=...)]
    clean, repairs = check_analysis(answer(highlights=hs), provides_grades=True)
    first, second = clean["highlights"]
    assert (first["header"], first["importance"], first["level"]) == (None, 5, "info")
    assert first["description"] == "the claim"  # the quote stands in
    assert second["quoted_text"] == ""  # kept: located later as an invalid highlight, with its reason
    assert kinds(repairs) == ["enum_defaulted", "field_defaulted", "field_defaulted", "field_defaulted"]


def test_a_highlight_that_is_not_an_object_is_dropped():
    clean, repairs = check_analysis(answer(highlights=[highlight(), "see line 4"]), provides_grades=True)
    assert len(clean["highlights"]) == 1 and kinds(repairs) == ["highlight_dropped"]


def test_self_critique_tiers():
    with pytest.raises(BadLLMOutput, match="self_critique"):
        check_self_critique({"score": 50})
    clean, repairs = check_self_critique({"self_critique": "Too harsh.", "score": "250", "tone": "kind"})
    assert clean == {"self_critique": "Too harsh.", "score": 100}
    assert kinds(repairs) == ["extra_ignored", "number_clamped", "number_coerced"]


def test_the_same_answer_gets_the_same_repairs():
    raw = answer(grade="101", highlights=[highlight(header="x " * 150, level="nit")] * 10)
    assert check_analysis(copy.deepcopy(raw), provides_grades=True) == check_analysis(raw, provides_grades=True)


def test_cut_at_word():
    assert cut_at_word("short", 10) == "short"
    assert cut_at_word("one two three four", 12) == "one two\u2026"
    assert len(cut_at_word("x" * 300, 200)) == 200  # no boundary: cut anyway
