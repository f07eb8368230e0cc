"""The evaluation pipeline: RoastMyPost's three steps, and the one transaction that saves them.

1. comprehensive analysis: one forced tool call returning summary, analysis, grade (when the agent
   gives grades) and highlight suggestions against a line-numbered rendering of the document;
2. highlight extraction: local fuzzy matching of each suggested quote to character offsets;
3. self-critique: one more tool call, when the agent has self-critique instructions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from . import db
from .db import Q
from .exceptions import InputError, JobCancelled
from .highlights import HighlightMatch, locate_highlight, number_lines
from .jobctx import current_job, start_error
from .llm import Claude, ToolCall, default_claude

logger = logging.getLogger("roastq.pipeline")

MAX_HIGHLIGHTS = 8

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
        "level": {"type": "string", "enum": ["error", "warning", "info", "success"]},
    },
    "required": ["header", "description", "quoted_text", "start_line", "end_line", "importance", "level"],
}


def analysis_tool(provides_grades: bool) -> dict:
    properties = {
        "summary": {"type": "string", "minLength": 1, "description": "Two or three sentences."},
        "analysis": {"type": "string", "minLength": 1, "description": "The full analysis, markdown."},
        "highlights": {"type": "array", "items": HIGHLIGHT_SCHEMA, "minItems": 1, "maxItems": MAX_HIGHLIGHTS},
    }
    required = ["summary", "analysis", "highlights"]
    if provides_grades:
        properties["grade"] = {"type": "integer", "minimum": 0, "maximum": 100}
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
        "properties": {
            "self_critique": {"type": "string", "minLength": 1},
            "score": {"type": "integer", "minimum": 1, "maximum": 100},
        },
        "required": ["self_critique", "score"],
    },
}

ANALYSIS_FRAME = (
    "You are an expert evaluator of written documents. Follow the agent instructions below. "
    "Quote the document exactly in each highlight's quoted_text and give the line numbers it "
    "spans, from the line-numbered document you are given."
)


@dataclass
class JobInputs:
    job_id: str
    evaluation_id: str
    document_version_id: str
    agent_version_id: str
    agent_id: str
    agent_name: str
    title: str
    authors: list[str]
    content: str
    markdown_prepend: str | None
    primary_instructions: str
    self_critique_instructions: str | None
    provides_grades: bool


@dataclass
class EvaluationResult:
    summary: str
    analysis: str
    grade: int | None
    highlights: list[tuple[dict, HighlightMatch]]
    self_critique: str | None
    calls: list[ToolCall] = field(default_factory=list)
    highlight_duration_s: float = 0.0

    @property
    def price_usd(self) -> Decimal:
        return sum((c.price_usd for c in self.calls), Decimal(0))


def load_inputs(job_id: str, conn=None) -> JobInputs:
    """The pinned document and agent versions, or InputError if they cannot be evaluated."""
    with db.transaction(conn) as cur:
        cur.execute(Q.job_inputs, {"job_id": job_id})
        row = cur.fetchone()
    if row is None:
        raise InputError(f"job {job_id} not found")
    if not (row["content"] or "").strip():
        raise InputError("the document has no content")
    if not (row["primary_instructions"] or "").strip():
        raise InputError("the agent has no instructions")
    fields = JobInputs.__dataclass_fields__
    return JobInputs(**{k: (str(v) if k.endswith("_id") else v) for k, v in row.items() if k in fields})


def document_text(inputs: JobInputs) -> str:
    """The text highlights are located in: RoastMyPost prepends markdown_prepend to the content."""
    return (inputs.markdown_prepend or "") + inputs.content


def analysis_prompt(inputs: JobInputs) -> str:
    authors = ", ".join(inputs.authors) or "unknown"
    return (
        f"Title: {inputs.title}\nAuthors: {authors}\n\n"
        f"<document>\n{number_lines(document_text(inputs))}\n</document>\n\n"
        "Evaluate this document and call submit_analysis."
    )


def run(inputs: JobInputs, claude: Claude, *, cancelled: Callable[[], bool] = lambda: False) -> EvaluationResult:
    """Run the three steps. ``cancelled`` is checked at each step boundary."""
    system = [
        {"type": "text", "text": ANALYSIS_FRAME},
        {"type": "text", "text": f"Agent: {inputs.agent_name}\n\n{inputs.primary_instructions}"},
    ]
    analysis = claude.call_tool(
        step="analysis", system=system, prompt=analysis_prompt(inputs), tool=analysis_tool(inputs.provides_grades)
    )
    if cancelled():
        raise JobCancelled("cancelled after the analysis step")

    started = time.monotonic()
    text = document_text(inputs)
    highlights = [
        (h, locate_highlight(text, h["quoted_text"], h.get("start_line"), h.get("end_line")))
        for h in analysis.input["highlights"]
    ]
    highlight_duration = time.monotonic() - started
    valid = sum(1 for _, m in highlights if m.is_valid)
    logger.info("highlights located: %d of %d valid", valid, len(highlights))

    result = EvaluationResult(
        summary=analysis.input["summary"],
        analysis=analysis.input["analysis"],
        grade=analysis.input.get("grade") if inputs.provides_grades else None,
        highlights=highlights,
        self_critique=None,
        calls=[analysis],
        highlight_duration_s=highlight_duration,
    )
    if inputs.self_critique_instructions:
        if cancelled():
            raise JobCancelled("cancelled before the self-critique step")
        critique = claude.call_tool(
            step="self_critique",
            system=[{"type": "text", "text": inputs.self_critique_instructions}],
            prompt=(
                f"<evaluation>\nSummary: {result.summary}\n\n{result.analysis}\n</evaluation>\n\n"
                "Critique this evaluation and call submit_self_critique."
            ),
            tool=SELF_CRITIQUE_TOOL,
        )
        result.self_critique = critique.input["self_critique"]
        result.calls.append(critique)
    if cancelled():
        raise JobCancelled("cancelled before saving the result")
    return result


def save(inputs: JobInputs, result: EvaluationResult) -> str | None:
    """Write the evaluation version, highlights, comments, tasks and the COMPLETED job in one
    transaction. Returns the evaluation version id, or None when the job was already finished
    (a duplicate delivery): the first result stands and this one is discarded."""
    with db.transaction() as cur:
        cur.execute(Q.lock_job, {"job_id": inputs.job_id})
        job = cur.fetchone()
        if job is None or job["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            logger.warning("job already %s: result discarded", job and job["status"])
            return None
        cur.execute(Q.lock_evaluation, {"evaluation_id": inputs.evaluation_id})
        cur.execute(Q.next_evaluation_version, {"evaluation_id": inputs.evaluation_id})
        version = cur.fetchone()["version"]
        cur.execute(
            Q.insert_evaluation_version,
            {
                "evaluation_id": inputs.evaluation_id,
                "version": version,
                "job_id": inputs.job_id,
                "agent_version_id": inputs.agent_version_id,
                "document_version_id": inputs.document_version_id,
                "summary": result.summary,
                "analysis": result.analysis,
                "grade": result.grade,
                "self_critique": result.self_critique,
            },
        )
        ev_id = cur.fetchone()["id"]
        for suggestion, match in result.highlights:
            cur.execute(
                Q.insert_highlight,
                {
                    "evaluation_version_id": ev_id,
                    "start_offset": match.start_offset,
                    "end_offset": match.end_offset,
                    "quoted_text": match.quoted_text,
                    "prefix": match.prefix,
                    "is_valid": match.is_valid,
                    "error": match.error,
                },
            )
            cur.execute(
                Q.insert_comment,
                {
                    "evaluation_version_id": ev_id,
                    "highlight_id": cur.fetchone()["id"],
                    "description": suggestion["description"],
                    "header": suggestion.get("header"),
                    "importance": suggestion.get("importance"),
                    "grade": suggestion.get("grade"),
                    "level": suggestion.get("level"),
                },
            )
        tasks = [
            dict(name=c.step, model=c.model, usage=c.usage, price_usd=c.price_usd, duration_s=c.duration_s)
            for c in result.calls
        ]
        tasks.insert(1, dict(name="highlight_extraction", model=None, usage=None, price_usd=Decimal(0),
                             duration_s=result.highlight_duration_s))
        for t in tasks:
            u = t.pop("usage")
            cur.execute(
                Q.insert_task,
                {
                    "job_id": inputs.job_id,
                    "evaluation_version_id": ev_id,
                    "input_tokens": u.input_tokens if u else 0,
                    "output_tokens": u.output_tokens if u else 0,
                    "cache_read_tokens": u.cache_read_tokens if u else 0,
                    "cache_write_tokens": u.cache_write_tokens if u else 0,
                    **t,
                },
            )
        cur.execute(
            Q.complete_job,
            {"job_id": inputs.job_id, "evaluation_version_id": ev_id, "price_usd": result.price_usd},
        )
        job = current_job.get()
        if job is not None:  # the attempt ends with the result, so the two never disagree
            cur.execute(Q.end_attempt, {"job_id": inputs.job_id, "attempt": job.attempt, "outcome": "completed",
                                        "error_class": None, "error": None, "delay_s": None, "delay_reason": None})
    return str(ev_id)


def cancel_requested(job_id: str) -> bool:
    with db.transaction() as cur:
        cur.execute(Q.cancel_requested, {"job_id": job_id})
        row = cur.fetchone()
    return bool(row and row["cancelled"])


def evaluate(job_id: str, claude: Claude | None = None) -> str | None:
    """The actor's body: run the job the middleware started, and save its result."""
    job = current_job.get()
    if job is None or job.job_id != job_id:
        raise start_error.get() or RuntimeError("the job middleware did not start this job")
    inputs = load_inputs(job_id)
    result = run(inputs, claude or default_claude(), cancelled=lambda: cancel_requested(job_id))
    return save(inputs, result)
