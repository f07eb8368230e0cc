"""Highlight extraction: turn an LLM's quoted text into character offsets in the document.

RoastMyPost's analysis step shows the model a line-numbered rendering of the document
(:func:`number_lines`) and asks for highlights as ``quoted_text`` plus ``start_line``/``end_line``.
Models misquote: they change case, reflow whitespace and line breaks, curl straight quotes (or
straighten curly ones), leave words out behind an ellipsis, change a word, join two paragraphs,
cite lines a few off. :func:`locate_highlight` finds each quote locally, with no LLM call, trying
progressively looser strategies:

1. ``exact``: a plain substring;
2. ``case_insensitive``: the same, ignoring case;
3. ``whitespace``: runs of whitespace on both sides treated as equal (line breaks, paragraphs);
4. ``typography``: the same, with curly and straight quotes, apostrophes and dashes as equal,
   and without quotation marks the model put around the whole quote;
5. ``ellipsis``: a quote with ``...``, ``…`` or ``[...]`` where words were left out: its parts in
   order, in one paragraph's reach (``MAX_ELLIPSIS_GAP`` characters apart at most);
6. ``fuzzy``: ``rapidfuzz`` partial alignment, accepted at or above ``min_score`` (a changed word).

At each strategy the occurrence overlapping the referenced lines is preferred, when the line
references are valid; else the occurrence nearest to them (line numbers a few off); else the first. Offsets are Python ``str`` indices
into ``content``, end exclusive, and ``content[start:end] == quoted_text`` for every valid match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rapidfuzz import fuzz

#: Characters of context kept before a highlight, to re-anchor it if the document is edited.
PREFIX_CHARS = 30
#: How far (in characters, either side) the fuzzy aligner may move each end of a match to
#: improve it: partial alignment fixes the region's length to the quote's, so a quote with a
#: dropped or extra character comes back clipped or padded by a character or two.
MAX_REFINE_SHIFT = 8

_WHITESPACE = re.compile(r"\s+")
#: Characters models write for one another: each member matches any other of its group.
_EQUIVALENT = ("'\u2018\u2019\u201b\u2032`", '"\u201c\u201d\u201e\u2033', "-\u2010\u2011\u2012\u2013\u2014\u2015")
_ELLIPSIS = re.compile(r"\s*(?:\.\.\.|\u2026|\[\.\.\.\]|\[\u2026\])\s*")
#: How much text an ellipsis may stand for.
MAX_ELLIPSIS_GAP = 600

Span = tuple[int, int]
#: Finds the first occurrence starting at or after ``pos``, or None.
Finder = Callable[[int], "Span | None"]


def number_lines(content: str) -> str:
    """``content`` as ``Line 1: ...`` entries, one per ``\\n``-separated line, 1-based.

    This is the exact rendering the analysis prompt uses and the Claude simulator parses.
    """
    return "\n".join(f"Line {i}: {line}" for i, line in enumerate(content.split("\n"), start=1))


@dataclass
class HighlightMatch:
    """Where a suggested quote was found in the document, or why it was not."""

    start_offset: int | None
    end_offset: int | None
    quoted_text: str
    prefix: str
    is_valid: bool
    error: str | None
    strategy: str


def locate_highlight(
    content: str,
    quoted_text: str,
    start_line: int | None = None,
    end_line: int | None = None,
    *,
    min_score: float = 85.0,
) -> HighlightMatch:
    """Find ``quoted_text`` in ``content``; prefer the referenced lines when they are valid.

    Line references that are missing, out of range or not integers are ignored (the whole document
    is searched); reversed references are swapped. Never raises for bad input: problems are
    reported as an invalid match with an ``error``.
    """
    if not quoted_text or not quoted_text.strip():
        return _invalid(quoted_text, "empty quote")
    # Even the loosest non-fuzzy match needs the quote's words and one space between each.
    if len(" ".join(quoted_text.split())) > len(content):
        return _invalid(quoted_text, "quote longer than document")

    window = _line_window(content, start_line, end_line)
    for strategy, finder in _finders(content, quoted_text):
        span = _find_preferred(finder, window)
        if span is not None:
            return _valid(content, span, strategy)

    span = _fuzzy(content, quoted_text, window, min_score)
    if span is not None:
        return _valid(content, span, "fuzzy")
    return _invalid(quoted_text, "quote not found in document")


# -- results ------------------------------------------------------------------------------------


def _valid(content: str, span: Span, strategy: str) -> HighlightMatch:
    start, end = span
    return HighlightMatch(
        start_offset=start,
        end_offset=end,
        quoted_text=content[start:end],
        prefix=content[max(0, start - PREFIX_CHARS) : start],
        is_valid=True,
        error=None,
        strategy=strategy,
    )


def _invalid(quoted_text: str, error: str) -> HighlightMatch:
    return HighlightMatch(
        start_offset=None,
        end_offset=None,
        quoted_text=quoted_text,
        prefix="",
        is_valid=False,
        error=error,
        strategy="none",
    )


# -- line references ----------------------------------------------------------------------------


def _line_starts(content: str) -> list[int]:
    """Offset of the first character of each line (line ``i`` starts at ``starts[i - 1]``)."""
    starts = [0]
    pos = content.find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = content.find("\n", pos + 1)
    return starts


def _line_window(content: str, start_line: int | None, end_line: int | None) -> Span | None:
    """The character span of the referenced lines (newline excluded), or None if unusable."""
    if start_line is None and end_line is None:
        return None
    first = start_line if start_line is not None else end_line
    last = end_line if end_line is not None else start_line
    # bool is an int subclass, and JSON from a model can carry anything.
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (first, last)):
        return None
    if first > last:
        first, last = last, first
    starts = _line_starts(content)
    if first < 1 or last > len(starts):
        return None
    end = starts[last] - 1 if last < len(starts) else len(content)
    return starts[first - 1], end


# -- exact, case-insensitive and whitespace-normalised search -----------------------------------


def _finders(content: str, quote: str) -> Iterator[tuple[str, Finder]]:
    """The non-fuzzy strategies, loosest last; lazily, so an exact hit compiles no regex."""

    def exact(pos: int) -> Span | None:
        i = content.find(quote, pos)
        return None if i == -1 else (i, i + len(quote))

    yield "exact", exact
    # A regex rather than str.lower(): lower() can change a string's length ("İ" -> "i̇"), which
    # would shift every offset after it; re.IGNORECASE folds character by character.
    yield "case_insensitive", _regex_finder(re.compile(re.escape(quote), re.IGNORECASE), content)
    # Each whitespace run in the quote matches any whitespace run in the document, so the match
    # is found (and its offsets reported) in the original text, with no index mapping needed.
    loose = r"\s+".join(re.escape(w) for w in quote.split())
    yield "whitespace", _regex_finder(re.compile(loose), content)
    yield "whitespace", _regex_finder(re.compile(loose, re.IGNORECASE), content)
    typographic = _typographic(quote)
    if typographic != loose:
        yield "typography", _regex_finder(re.compile(typographic, re.IGNORECASE), content)
    bare = quote.strip().strip(_EQUIVALENT[0] + _EQUIVALENT[1]).strip()
    if bare and bare != quote.strip():  # a quote the model put in quotation marks of its own
        yield "typography", _regex_finder(re.compile(_typographic(bare), re.IGNORECASE), content)
    parts = [p for p in _ELLIPSIS.split(quote) if p.strip()]
    if _ELLIPSIS.search(quote) and parts:
        gap = r"[\s\S]{0,%d}?" % MAX_ELLIPSIS_GAP
        yield "ellipsis", _regex_finder(re.compile(gap.join(_typographic(p) for p in parts), re.IGNORECASE), content)


def _typographic(text: str) -> str:
    """A pattern for ``text``: whitespace runs loose, quote marks and dashes of any style."""

    def char(c: str) -> str:
        group = next((g for g in _EQUIVALENT if c in g), None)
        return "[" + re.escape(group) + "]" if group else re.escape(c)

    return r"\s+".join("".join(char(c) for c in w) for w in text.split())


def _regex_finder(pattern: re.Pattern[str], content: str) -> Finder:
    def find(pos: int) -> Span | None:
        m = pattern.search(content, pos)
        return None if m is None else m.span()

    return find


def _find_preferred(find: Finder, window: Span | None) -> Span | None:
    """The first occurrence overlapping ``window``, else the one nearest to it (the first of
    equals), else the first occurrence anywhere.

    Occurrences are visited in order (overlapping ones included, by restarting one character
    after each start), up to the first one past the window's end: one pass over the document.
    """
    first = find(0)
    if first is None or window is None:
        return first
    lo, hi = window
    best, best_gap = first, _gap(first, window)
    span = first
    while span is not None and best_gap > 0:
        gap = _gap(span, window)
        if gap < best_gap:
            best, best_gap = span, gap
        if span[0] >= hi:  # every later occurrence is further away
            break
        span = find(span[0] + 1)
    return best


def _gap(span: Span, window: Span) -> int:
    """Characters between ``span`` and ``window``; 0 when they overlap."""
    if span[1] > window[0] and span[0] < window[1]:
        return 0
    return window[0] - span[1] if span[1] <= window[0] else span[0] - window[1]


# -- fuzzy search -------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Lower-case for comparison, only when that keeps every offset where it was."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text


def _fuzzy(content: str, quote: str, window: Span | None, min_score: float) -> Span | None:
    """Best fuzzy alignment near the referenced lines, else in the whole document."""
    needle = _fold(quote.strip())
    regions = []
    if window is not None:
        # Widen by the quote's length so a quote that runs past the cited lines still fits.
        regions.append((max(0, window[0] - len(needle)), min(len(content), window[1] + len(needle))))
    regions.append((0, len(content)))
    for lo, hi in regions:
        span = _align(content, needle, lo, hi, min_score)
        if span is not None:
            return span
    return None


def _align(content: str, needle: str, lo: int, hi: int, min_score: float) -> Span | None:
    """Align ``needle`` within ``content[lo:hi]``; the matched span in document offsets."""
    haystack = _fold(content[lo:hi])
    # A region shorter than the quote would "contain" it only by matching part of it.
    if len(haystack) < len(needle):
        return None
    res = fuzz.partial_ratio_alignment(needle, haystack, score_cutoff=min_score)
    if res is None or res.score < min_score or res.dest_end <= res.dest_start:
        return None
    start, end = _refine(needle, haystack, res.dest_start, res.dest_end)
    if end <= start:
        return None
    return lo + start, lo + end


def _refine(needle: str, haystack: str, start: int, end: int) -> Span:
    """Nudge each end of an alignment to the span whose full ratio with ``needle`` is best.

    Ties keep the original alignment, then the smallest shift, so the result is deterministic.
    """
    best = (fuzz.ratio(needle, haystack[start:end]), start, end)
    for ds in _shifts():
        s = start + ds
        if s < 0:
            continue
        for de in _shifts():
            e = end + de
            if e > len(haystack) or e <= s:
                continue
            score = fuzz.ratio(needle, haystack[s:e])
            if score > best[0]:
                best = (score, s, e)
    _, s, e = best
    # The aligned region never starts or ends with whitespace the quote did not ask for.
    while s < e and haystack[s].isspace():
        s += 1
    while e > s and haystack[e - 1].isspace():
        e -= 1
    return s, e


def _shifts() -> list[int]:
    """0, -1, 1, -2, 2, ...: nearest shifts first, so ties favour small moves."""
    out = [0]
    for k in range(1, MAX_REFINE_SHIFT + 1):
        out += [-k, k]
    return out
