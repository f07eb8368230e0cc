"""The evaluation pipeline: RoastMyPost's three steps, and the one transaction that saves them.

1. comprehensive analysis: one forced tool call returning summary, analysis, grade (when the agent
   gives grades) and highlight suggestions against a line-numbered rendering of the document;
2. highlight extraction: local fuzzy matching of each suggested quote to character offsets;
3. self-critique: one more tool call, when the agent has self-critique instructions.

Each answer is checked in two tiers (``roastq.evaluation.answers``): what the evaluation cannot be
saved without fails the call (and is sent back to the model once, in the same attempt); everything
else is repaired, and the repairs are saved with the evaluation version, logged and counted.

Each step's output is memoised per job (``roastq.llm.memo``): a retry resumes at the step that failed.
The LLM steps go through the cost layer (``roastq.llm.client``): response cache seeded by the agent
version, budget, shared rate limits; their ``tasks`` rows come from the job's step ledger.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import psycopg2.extras

from roastq import db, events, jobs
from roastq.db import Q
from roastq.evaluation.answers import (  # noqa: F401
    MAX_HIGHLIGHTS,
    SELF_CRITIQUE_TOOL,
    Repair,
    analysis_tool,
    check_analysis,
    check_self_critique,
)
from roastq.evaluation.highlights import HighlightMatch, locate_highlight, number_lines
from roastq.exceptions import InputError, JobCancelled
from roastq.jobctx import current_job, start_error
from roastq.llm import ledger
from roastq.llm.memo import StepMemo

if TYPE_CHECKING:  # the client (and the anthropic SDK under it) is imported at the first LLM step
    from roastq.llm.client import Claude, ToolCall

logger = logging.getLogger("roastq.evaluation.pipeline")

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
    repairs: list[Repair] = field(default_factory=list)
    highlight_duration_s: float = 0.0

    @property
    def price_usd(self) -> Decimal:
        """Billed by this attempt's calls (the ledger in ``save`` also counts earlier attempts)."""
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


def _memoised(memo: StepMemo, step: str, call: Callable[[], ToolCall]) -> ToolCall:
    """The step's output from an earlier attempt of this job, or a new call, stored at once."""
    from roastq.llm.client import ToolCall

    done = memo.get(step)
    if done is not None:
        return ToolCall(
            step=step,
            model=done.model,
            input=done.output,
            usage=done.usage,
            price_usd=done.price_usd,
            duration_s=done.duration_s,
            request_id=done.request_id,
            cached=done.cached,
            saved_usd=done.saved_usd,
            memoised=True,
        )
    result = call()
    job = current_job.get()
    memo.store(
        step,
        result.input,
        model=result.model,
        duration_s=result.duration_s,
        request_id=result.request_id,
        attempt=job.attempt if job is not None else None,
    )
    return result


def _repaired(call: ToolCall, check: Callable) -> tuple[dict, list[Repair]]:
    """The step's answer as saved, and its repairs: logged and counted once, when the answer is
    new to this job (a resumed step's repairs were counted by the attempt that got it)."""
    clean, repairs = check(call.input)
    if repairs and not call.memoised:
        kinds = Counter(r.kind for r in repairs)
        logger.info(
            "%s answer repaired (%s): %s",
            call.step,
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
            "; ".join(f"{r.path}: {r.kind} {r.detail}" for r in repairs[:10]),
        )
        for r in repairs:
            events.emit("llm_repair", step=r.step, kind=r.kind)
    return clean, repairs


def _highlights(memo: StepMemo, inputs: JobInputs, analysis: dict) -> tuple[list, float]:
    """Step 2, memoised like the others (it is local and cheap, but a retry must not redo it
    differently if the matcher changed between attempts)."""
    done = memo.get("highlight_extraction")
    if done is not None:
        pairs = [(p["suggestion"], HighlightMatch(**p["match"])) for p in done.output["highlights"]]
        return pairs, done.duration_s
    started = time.monotonic()
    text = document_text(inputs)
    pairs = [
        (h, locate_highlight(text, h["quoted_text"], h.get("start_line"), h.get("end_line")))
        for h in analysis["highlights"]
    ]
    duration = time.monotonic() - started
    memo.store(
        "highlight_extraction",
        {"highlights": [{"suggestion": h, "match": asdict(m)} for h, m in pairs]},
        model=None,
        duration_s=duration,
    )
    return pairs, duration


def run(inputs: JobInputs, claude: Claude, *, cancelled: Callable[[], bool] = lambda: False) -> EvaluationResult:
    """Run the three steps, resuming after the ones an earlier attempt finished. ``cancelled`` is
    checked at each step boundary."""
    memo = StepMemo(inputs.job_id)
    seed = f"agent-version:{inputs.agent_version_id}"  # a new agent version never sees old answers
    system = [
        {"type": "text", "text": ANALYSIS_FRAME},
        {"type": "text", "text": f"Agent: {inputs.agent_name}\n\n{inputs.primary_instructions}"},
    ]

    def check(payload: dict) -> tuple[dict, list[Repair]]:
        return check_analysis(payload, provides_grades=inputs.provides_grades)

    analysis = _memoised(
        memo,
        "analysis",
        lambda: claude.call_tool(
            step="analysis",
            system=system,
            prompt=analysis_prompt(inputs),
            tool=analysis_tool(inputs.provides_grades),
            cache_seed=seed,
            check=check,
        ),
    )
    answer, repairs = _repaired(analysis, check)
    if cancelled():
        raise JobCancelled("cancelled after the analysis step")

    highlights, highlight_duration = _highlights(memo, inputs, answer)
    valid = sum(1 for _, m in highlights if m.is_valid)
    logger.info("highlights located: %d of %d valid", valid, len(highlights))

    result = EvaluationResult(
        summary=answer["summary"],
        analysis=answer["analysis"],
        grade=answer.get("grade") if inputs.provides_grades else None,
        highlights=highlights,
        self_critique=None,
        calls=[analysis],
        repairs=repairs,
        highlight_duration_s=highlight_duration,
    )
    if inputs.self_critique_instructions:
        if cancelled():
            raise JobCancelled("cancelled before the self-critique step")
        critique = _memoised(
            memo,
            "self_critique",
            lambda: claude.call_tool(
                step="self_critique",
                system=[{"type": "text", "text": inputs.self_critique_instructions}],
                prompt=(
                    f"<evaluation>\nSummary: {result.summary}\n\n{result.analysis}\n</evaluation>\n\n"
                    "Critique this evaluation and call submit_self_critique."
                ),
                tool=SELF_CRITIQUE_TOOL,
                cache_seed=seed,
                check=check_self_critique,
            ),
        )
        critique_answer, critique_repairs = _repaired(critique, check_self_critique)
        result.self_critique = critique_answer["self_critique"]
        result.repairs += critique_repairs
        result.calls.append(critique)
    if cancelled():
        raise JobCancelled("cancelled before saving the result")
    return result


def save(inputs: JobInputs, result: EvaluationResult) -> str | None:
    """Write the evaluation version, highlights, comments, tasks and the COMPLETED job in one
    transaction. Returns the evaluation version id, or None when the job was already finished
    (a duplicate delivery): the first result stands and this one is discarded.

    Writes whose answer is not read are deferred (``db.lean_transaction``): they go out with the
    next statement or with the COMMIT, so the transaction costs a round trip for each answer it
    reads (the version number, the version's and each highlight's id, the ledger) and
    one for the rest and the COMMIT. The job row's lock goes out with the first of them, which
    reads the job's status after it: a finished job's result is discarded there, and under that
    lock no other transaction can finish it before ``complete`` (which refuses a finished job
    anyway: ``jobs.already_finished``)."""
    with db.lean_transaction() as cur:
        jobs.lock(cur, inputs.job_id, answer=False)  # its status comes with the version number
        cur.defer(Q.lock_evaluation, {"evaluation_id": inputs.evaluation_id})
        cur.execute(Q.next_evaluation_version, {"evaluation_id": inputs.evaluation_id, "job_id": inputs.job_id})
        row = cur.fetchone()
        if row is None or row["job_status"] is None or jobs.is_finished(row["job_status"]):
            logger.warning("job already %s: result discarded", row and row["job_status"])
            return None
        version = row["version"]
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
                "repairs": psycopg2.extras.Json([r.as_dict() for r in result.repairs]),
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
            cur.defer(
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
        tasks = _tasks(inputs.job_id, result, cur)
        for t in tasks:
            cur.defer(Q.insert_task, {"job_id": inputs.job_id, "evaluation_version_id": ev_id, **t})
        jobs.complete(
            cur, inputs.job_id, evaluation_version_id=ev_id, price_usd=sum((t["price_usd"] for t in tasks), Decimal(0))
        )
        job = current_job.get()
        if job is not None:
            # The attempt ends, and the message is acknowledged, with the result: the three never
            # disagree, and the broker's ack needs no round trip of its own.
            jobs.finish_attempt(cur, inputs.job_id, job.attempt, job.message_id)
    if job is not None:
        job.finished_with_result = True
    return str(ev_id)


def _tasks(job_id: str, result: EvaluationResult, cur) -> list[dict]:
    """One row per step, in pipeline order. An LLM step's tokens and price are everything the
    ledger says it was billed over all attempts (a memoised step was paid once, earlier; a billed
    answer that failed validation counts too); a cache hit bills nothing and records its saving."""
    steps = ledger.step_ledger(job_id, cur)
    rows = []
    for call in result.calls:
        billed = steps.get(call.step)
        if billed is None:  # not run in a job (no ledger row): this attempt's call is all there is
            u = call.usage
            billed = dict(
                model=call.model,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cache_read_tokens=u.cache_read_tokens,
                cache_write_tokens=u.cache_write_tokens,
                price_usd=call.price_usd,
                cached=call.cached,
                saved_usd=call.saved_usd,
            )
        rows.append(
            dict(
                name=call.step,
                model=billed["model"] or call.model,
                duration_s=call.duration_s,
                **{
                    k: billed[k]
                    for k in (
                        "input_tokens",
                        "output_tokens",
                        "cache_read_tokens",
                        "cache_write_tokens",
                        "price_usd",
                        "cached",
                        "saved_usd",
                    )
                },
            )
        )
    rows.insert(
        1,
        dict(
            name="highlight_extraction",
            model=None,
            duration_s=result.highlight_duration_s,
            input_tokens=0,
            output_tokens=0,
            cache_read_tokens=0,
            cache_write_tokens=0,
            price_usd=Decimal(0),
            cached=False,
            saved_usd=Decimal(0),
        ),
    )
    return rows


def cancel_requested(job_id: str) -> bool:
    with db.transaction() as cur:
        return jobs.cancel_requested(cur, job_id)


def evaluate(job_id: str, claude: Claude | None = None) -> str | None:
    """The actor's body: run the job the middleware started, and save its result."""
    job = current_job.get()
    if job is None or job.job_id != job_id:
        raise start_error.get() or RuntimeError("the job middleware did not start this job")
    inputs = load_inputs(job_id)
    if claude is None:
        from roastq.llm.client import default_claude

        claude = default_claude()
    result = run(inputs, claude, cancelled=lambda: cancel_requested(job_id))
    return save(inputs, result)
