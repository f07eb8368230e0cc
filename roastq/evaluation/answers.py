"""Claude's answers as they really come: what the pipeline asks for, and what it accepts.

The tools' schemas are the full contract, bounds included (sent as they are to a non-strict tool;
``roastq/llm/strict.py`` makes the strict form). A model's tool input is not guaranteed to honour
it, so an answer is checked in two tiers:

* **hard**: what the evaluation cannot be saved without: a summary and an analysis (non-empty
  text), a grade when the agent gives grades, at least one highlight with quoted text; for the
  self-critique, its text. A hard failure raises ``BadLLMOutput`` naming what was wrong, in words
  meant for the model (the client sends them back as an ``is_error`` tool result, once).
* **soft**: everything else, repaired deterministically and recorded (``Repair``): a string over
  its limit cut at a word boundary; an integer out of range clamped; a number sent as a string
  coerced; an unknown ``level`` mapped to ``info``; unknown extra properties ignored; more
  highlights than the maximum trimmed by importance; a missing optional field filled. A highlight
  without quoted text is kept as an invalid highlight with its reason (``error``), as RoastMyPost
  stores them, not a failure of the job.

The same raw answer always gets the same repairs: the pipeline memoises the raw answer and
repairs it again when it resumes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from roastq.exceptions import BadLLMOutput

MAX_HIGHLIGHTS = 8
LEVELS = ("error", "warning", "info", "success")
DEFAULT_LEVEL = "info"
DEFAULT_IMPORTANCE = 5

HIGHLIGHT_SCHEMA = {
    "type": "object",
    "properties": {
        "header": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": {"type": "string", "minLength": 1},
        "quoted_text": {"type": "string", "minLength": 1},
        "start_line": {"type": "integer", "minimum": 1},
        "end_line": {"type": "integer", "minimum": 1},
        "importance": {"type": "integer", "minimum": 1, "maximum": 10},
        "grade": {"type": "integer", "minimum": 0, "maximum": 100},
        "level": {"type": "string", "enum": list(LEVELS)},
    },
    "required": ["header", "description", "quoted_text", "start_line", "end_line", "importance", "level"],
}
GRADE_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 100}
SCORE_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 100}


def analysis_tool(provides_grades: bool) -> dict:
    properties = {
        "summary": {"type": "string", "minLength": 1, "description": "Two or three sentences."},
        "analysis": {"type": "string", "minLength": 1, "description": "The full analysis, markdown."},
        "highlights": {"type": "array", "items": HIGHLIGHT_SCHEMA, "minItems": 1, "maxItems": MAX_HIGHLIGHTS},
    }
    required = ["summary", "analysis", "highlights"]
    if provides_grades:
        properties["grade"] = dict(GRADE_SCHEMA)
        required.append("grade")
    return {
        "name": "submit_analysis",
        "description": "Submit the comprehensive analysis of the document.",
        "input_schema": {"type": "object", "properties": properties, "required": required},
    }


SELF_CRITIQUE_TOOL = {
    "name": "submit_self_critique",
    "description": "Submit a critique of the evaluation just written.",
    "input_schema": {
        "type": "object",
        "properties": {"self_critique": {"type": "string", "minLength": 1}, "score": dict(SCORE_SCHEMA)},
        "required": ["self_critique", "score"],
    },
}

#: Every kind of repair (the metric's label values and the docs' table).
REPAIR_KINDS = (
    "string_truncated",
    "number_clamped",
    "number_coerced",
    "enum_defaulted",
    "extra_ignored",
    "items_trimmed",
    "field_defaulted",
    "highlight_dropped",
)


@dataclass(frozen=True)
class Repair:
    step: str
    kind: str  # one of REPAIR_KINDS
    path: str  # where, e.g. "highlights/3/header"
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


class _Repairs:
    def __init__(self, step: str):
        self.step, self.done = step, []

    def add(self, kind: str, path: str, detail: str) -> None:
        self.done.append(Repair(self.step, kind, path, detail))


def cut_at_word(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut at the last word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    head = text[: max(0, limit - 1)]
    if " " in head[limit // 2 :]:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:.-") + "\u2026"


def _integer(value: Any) -> int | None:
    """An integer from what models send for one: 85, 85.0, "85", " 85 "; None if it is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d+)?\s*", value):
        return round(float(value))
    return None


def _bounded_int(value: Any, schema: dict, path: str, r: _Repairs) -> int | None:
    """The integer, coerced and clamped into the schema's range (each step recorded), or None."""
    n = _integer(value)
    if n is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        r.add("number_coerced", path, f"{value!r} -> {n}")
    lo, hi = schema.get("minimum"), schema.get("maximum")
    clamped = max(lo, n) if lo is not None else n
    clamped = min(hi, clamped) if hi is not None else clamped
    if clamped != n:
        r.add("number_clamped", path, f"{n} -> {clamped}")
    return clamped


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _ignore_extra(obj: dict, schema: dict, path: str, r: _Repairs) -> None:
    for key in obj:
        if key not in schema["properties"]:
            r.add("extra_ignored", f"{path}{key}", "not in the schema")


def check_analysis(payload: Any, *, provides_grades: bool) -> tuple[dict, list[Repair]]:
    """The analysis as the pipeline saves it, and the repairs made; or BadLLMOutput (hard tier)."""
    r = _Repairs("analysis")
    problems = []
    if not isinstance(payload, dict):
        raise BadLLMOutput(
            "analysis: the tool input is not an object",
            step="analysis",
            feedback="The tool input must be a JSON object.",
        )
    summary, analysis = _text(payload.get("summary")), _text(payload.get("analysis"))
    if summary is None:
        problems.append("`summary` is missing or empty: give two or three sentences")
    if analysis is None:
        problems.append("`analysis` is missing or empty: give the full analysis")
    grade = None
    if provides_grades:
        grade = _bounded_int(payload.get("grade"), GRADE_SCHEMA, "grade", r)
        if grade is None:
            problems.append("`grade` is missing or not a number: give an integer from 0 to 100")
    raw = payload.get("highlights")
    if not isinstance(raw, list):
        problems.append("`highlights` is missing or not an array of highlight objects")
        raw = []
    elif not any(isinstance(h, dict) and _text(h.get("quoted_text")) for h in raw):
        problems.append("no highlight has a `quoted_text`: quote the document exactly in at least one highlight")
    if problems:
        raise BadLLMOutput(
            "analysis: " + "; ".join(problems),
            step="analysis",
            feedback="The submit_analysis input cannot be used: "
            + "; ".join(problems)
            + ". Call submit_analysis again with a complete input.",
        )
    _ignore_extra(payload, analysis_tool(provides_grades)["input_schema"], "", r)

    highlights = []
    for i, h in enumerate(raw):
        if not isinstance(h, dict):
            r.add("highlight_dropped", f"highlights/{i}", f"not an object: {type(h).__name__}")
            continue
        highlights.append((i, _highlight(h, f"highlights/{i}/", r)))
    if len(highlights) > MAX_HIGHLIGHTS:
        # The most important first (quoted ones before unquoted), then in the model's order.
        keep = sorted(highlights, key=lambda p: (p[1]["quoted_text"] == "", -p[1]["importance"], p[0]))
        kept = {i for i, _ in keep[:MAX_HIGHLIGHTS]}
        r.add("items_trimmed", "highlights", f"{len(highlights)} -> {MAX_HIGHLIGHTS} (by importance)")
        highlights = [p for p in highlights if p[0] in kept]
    out = {"summary": summary, "analysis": analysis, "highlights": [h for _, h in highlights]}
    if provides_grades:
        out["grade"] = grade
    return out, r.done


def _highlight(h: dict, path: str, r: _Repairs) -> dict:
    props = HIGHLIGHT_SCHEMA["properties"]
    _ignore_extra(h, HIGHLIGHT_SCHEMA, path, r)
    quote = h.get("quoted_text") if isinstance(h.get("quoted_text"), str) else ""
    header = _text(h.get("header")) if isinstance(h.get("header"), str) else None
    if header is not None and len(header) > props["header"]["maxLength"]:
        cut = cut_at_word(header, props["header"]["maxLength"])
        r.add("string_truncated", f"{path}header", f"{len(header)} -> {len(cut)} characters")
        header = cut
    elif header is None:
        r.add("field_defaulted", f"{path}header", f"{h.get('header')!r} -> none")
    description = _text(h.get("description"))
    if description is None:
        description = header or quote.strip() or "(no description)"
        r.add("field_defaulted", f"{path}description", "missing: the header or the quote stands in")
    importance = _bounded_int(h.get("importance"), props["importance"], f"{path}importance", r)
    if importance is None:
        importance = DEFAULT_IMPORTANCE
        r.add("field_defaulted", f"{path}importance", f"{h.get('importance')!r} -> {DEFAULT_IMPORTANCE}")
    level = h.get("level")
    if level not in LEVELS:
        r.add("enum_defaulted", f"{path}level", f"{level!r} -> {DEFAULT_LEVEL!r}")
        level = DEFAULT_LEVEL
    out = {"header": header, "description": description, "quoted_text": quote, "importance": importance, "level": level}
    for key in ("start_line", "end_line"):
        if key in h:  # out of range is left to the locator: it ignores unusable line references
            n = _integer(h[key])
            if n is not None and not isinstance(h[key], int):
                r.add("number_coerced", f"{path}{key}", f"{h[key]!r} -> {n}")
            out[key] = n
    if "grade" in h:
        out["grade"] = _bounded_int(h["grade"], props["grade"], f"{path}grade", r)
    return out


def check_self_critique(payload: Any) -> tuple[dict, list[Repair]]:
    r = _Repairs("self_critique")
    text = _text(payload.get("self_critique")) if isinstance(payload, dict) else None
    if text is None:
        raise BadLLMOutput(
            "self_critique: `self_critique` is missing or empty",
            step="self_critique",
            feedback="The submit_self_critique input cannot be used: `self_critique` is missing or "
            "empty. Call submit_self_critique again with the critique's text.",
        )
    _ignore_extra(payload, SELF_CRITIQUE_TOOL["input_schema"], "", r)
    score = _bounded_int(payload.get("score"), SCORE_SCHEMA, "score", r)
    if score is None:
        r.add("field_defaulted", "score", f"{payload.get('score')!r} -> none")
    return {"self_critique": text, "score": score}, r.done
