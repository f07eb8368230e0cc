"""Sloppiness: tool answers that break their schema the way real models do (``SimConfig.sloppiness``).

A real model's forced tool input is not guaranteed to honour the schema's bounds. With strict tool
use (``"strict": true``) the API's grammar guarantees the *shape* (types, required properties,
enums, no extra properties), but the grammar takes no numeric, string-length or array-size
bounds: the SDK moves them into the description (``anthropic.transform_schema``), where the model
reads them and, sometimes, ignores them. Without strict tool use the shape is not guaranteed either.

With probability ``sloppiness`` an answer carries one to three of these violations (drawn from
``KINDS`` with their weights; ``LOOSE`` and ``STRUCTURAL`` kinds only for non-strict tools):

* soft: an over-long string, an out-of-range number, too many array items, a missing optional
  property, a quote altered as models alter them (curly quotes, an ellipsis, two lines joined,
  a changed word), line numbers a few lines off, a quote found nowhere in the document;
* loose (non-strict): a number sent as a string, an unknown enum value, an extra property;
* structural (non-strict): a required property missing, a property of the wrong type;
* ``verbose``: an answer about twice as long as the document, which ``max_tokens`` may cut;
* ``refusal``: ``stop_reason: "refusal"`` and no tool call.

Violations are drawn from their own random stream (seed, request): the answer underneath is the
one sloppiness 0 gives for the same request, and the same request always misbehaves the same way.
A request that differs (a corrective retry, a larger ``max_tokens``) draws again.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

#: kind -> weight. Soft kinds are common; shape-breaking ones rare, as with a good model.
SOFT: dict[str, float] = {
    "overlong_string": 10,
    "out_of_range": 8,
    "too_many_items": 5,
    "missing_optional": 8,
    "altered_quote": 10,
    "lines_off": 8,
    "absent_quote": 4,
}
LOOSE: dict[str, float] = {"string_number": 6, "unknown_enum": 6, "extra_property": 6}
STRUCTURAL: dict[str, float] = {"missing_required": 1, "wrong_type": 1}
RARE: dict[str, float] = {"verbose": 1, "refusal": 0.15}
KINDS: tuple[str, ...] = (*SOFT, *LOOSE, *STRUCTURAL, *RARE)
#: Kinds the strict grammar makes impossible.
SHAPE_KINDS = frozenset((*LOOSE, *STRUCTURAL))
REFUSAL_TEXT = "I can't help with evaluating this document."

_BOUND_KEYS = (
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "default",
)
_DESCRIBED = re.compile(r"\{([^{}]*)\}\s*$")
_LINE_KEYS = ("start_line", "end_line", "line", "line_number")


def described_bounds(schema: dict) -> dict:
    """Bounds that ``anthropic.transform_schema`` moved into the description (``{maxLength: 200}``):
    what a model reading the description learns of them."""
    m = _DESCRIBED.search(schema.get("description") or "")
    out: dict[str, Any] = {}
    for part in m.group(1).split(", ") if m else ():
        key, _, raw = part.partition(": ")
        if key in _BOUND_KEYS:
            try:
                out[key] = int(raw)
            except ValueError:
                try:
                    out[key] = float(raw)
                except ValueError:
                    out[key] = raw
    return out


def draw(rng: random.Random, *, strict: bool) -> list[str]:
    """One to three kinds, weighted, without repeats."""
    pool = {k: w for k, w in {**SOFT, **LOOSE, **STRUCTURAL, **RARE}.items() if not (strict and k in SHAPE_KINDS)}
    out: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        kinds = [k for k in pool if k not in out]
        out.append(rng.choices(kinds, weights=[pool[k] for k in kinds])[0])
    return out


class Slop:
    """Applies violations to one generated tool input, in place."""

    def __init__(
        self,
        rng: random.Random,
        schema: dict,
        value: dict,
        *,
        resolve: Callable[[Any], dict],
        generate: Callable[[dict, str], Any],
        lines: list[tuple[int, str]],
        document_chars: int,
    ):
        self.rng, self.schema, self.value = rng, schema, value
        self.resolve, self.generate, self.lines, self.document_chars = resolve, generate, lines, document_chars

    def apply(self, kinds: list[str]) -> list[str]:
        """The kinds that could be applied to this value (a schema without strings has no long string)."""
        return [k for k in kinds if k == "refusal" or getattr(self, k)()]

    # -- where things are -------------------------------------------------------------------------
    def slots(self) -> list[tuple[Any, Any, dict, bool]]:
        """(container, key, schema, required) of every value in the tree, depth first."""
        out: list[tuple[Any, Any, dict, bool]] = []

        def walk(schema: Any, value: Any) -> None:
            s = self.resolve(schema)
            if isinstance(value, dict):
                props, required = s.get("properties") or {}, set(s.get("required") or [])
                for k, v in list(value.items()):
                    ps = {**described_bounds(self.resolve(props.get(k, {}))), **self.resolve(props.get(k, {}))}
                    out.append((value, k, ps, k in required))
                    walk(ps, v)
            elif isinstance(value, list):
                items = self.resolve(s.get("items", {}))
                items = {**described_bounds(items), **items}
                for i, v in enumerate(value):
                    out.append((value, i, items, True))
                    walk(items, v)

        walk(self.schema, self.value)
        return out

    def pick(self, test: Callable[[Any, Any, dict, bool], bool]):
        found = [s for s in self.slots() if test(*s)]
        return self.rng.choice(found) if found else None

    def quoted(self) -> list[dict]:
        """Objects holding a quote string (highlights)."""
        return [
            c[k]
            for c, k, _, _ in self.slots()
            if isinstance(c[k], dict) and any("quote" in q.lower() and isinstance(v, str) for q, v in c[k].items())
        ]

    # -- soft ---------------------------------------------------------------------------------------
    def overlong_string(self) -> bool:
        slot = self.pick(
            lambda c, k, s, r: (
                isinstance(c[k], str) and "maxLength" in s and "enum" not in s and "quote" not in str(k).lower()
            )
        )
        if slot is None:
            return False
        c, k, s, _ = slot
        text = c[k]
        while len(text) <= s["maxLength"]:
            text += " " + self.generate({"type": "string"}, "text")
        c[k] = text + " " + self.generate({"type": "string"}, "text")
        return True

    def out_of_range(self) -> bool:
        slot = self.pick(lambda c, k, s, r: _number(c[k]) and ("maximum" in s or "minimum" in s))
        if slot is None:
            return False
        c, k, s, _ = slot
        if "maximum" in s and (self.rng.random() < 0.7 or "minimum" not in s):
            c[k] = s["maximum"] + self.rng.randint(1, 20)
        else:
            c[k] = s["minimum"] - self.rng.randint(1, 5)
        return True

    def too_many_items(self) -> bool:
        slot = self.pick(lambda c, k, s, r: isinstance(c[k], list) and "maxItems" in s)
        if slot is None:
            return False
        c, k, s, _ = slot
        items = self.resolve(s.get("items", {}))
        while len(c[k]) <= s["maxItems"] + self.rng.randint(0, 3):
            c[k].append(self.generate(items, str(k)))
        return True

    def missing_optional(self) -> bool:
        slot = self.pick(lambda c, k, s, r: isinstance(c, dict) and not r)
        if slot is None:
            return False
        del slot[0][slot[1]]
        return True

    def altered_quote(self) -> bool:
        holders = self.quoted()
        if not holders:
            return False
        h = self.rng.choice(holders)
        key = next(k for k, v in h.items() if "quote" in k.lower() and isinstance(v, str))
        how = self.rng.choice(("curly", "ellipsis", "two_lines", "changed_word"))
        q = h[key]
        if how == "two_lines" and self.lines:
            at = [i for i, (_, t) in enumerate(self.lines[:-1]) if q and q in t]
            if at:
                n, line = self.lines[at[0]]
                nxt = next((ln for ln in self.lines[at[0] + 1 :] if ln[1].strip()), None)
                if nxt is not None:  # from the quote to the end of its line, then on into the next
                    words = nxt[1].split()
                    q = (
                        line[line.index(q) :].rstrip()
                        + " "
                        + " ".join(words[: self.rng.randint(2, max(2, min(8, len(words))))])
                    )
                    for lk in ("end_line",):
                        if lk in h:
                            h[lk] = nxt[0]
                    h[key] = q
                    return True
            how = "curly"
        words = q.split(" ")
        if how == "ellipsis" and len(words) >= 7:
            i = self.rng.randint(2, len(words) - 4)
            j = self.rng.randint(i + 1, len(words) - 2)
            q = " ".join(words[:i]) + self.rng.choice((" ... ", "… ", " [...] ")) + " ".join(words[j:])
        elif how == "changed_word" and len(words) >= 8:
            i = self.rng.randrange(len(words))
            words[i] = self.rng.choice(("the", "a", "this", "that", "its")) if len(words[i]) > 3 else "very"
            q = " ".join(words)
        else:
            q = q.replace("'", "\u2019").replace('"', "\u201c", 1).replace('"', "\u201d", 1)
            if q == h[key]:  # nothing to curl: a model's typographic apostrophe in a contraction
                q = "\u201c" + q + "\u201d"
        h[key] = q
        return True

    def lines_off(self) -> bool:
        holders = [h for h in self.quoted() if any(isinstance(h.get(k), int) for k in _LINE_KEYS)]
        if not holders:
            return False
        h = self.rng.choice(holders)
        shift = self.rng.choice((-4, -3, -2, -1, 1, 2, 3, 4))
        for k in _LINE_KEYS:
            if isinstance(h.get(k), int) and not isinstance(h.get(k), bool):
                h[k] = max(1, h[k] + shift)
        return True

    def absent_quote(self) -> bool:
        holders = self.quoted()
        if not holders:
            return False
        h = self.rng.choice(holders)
        key = next(k for k, v in h.items() if "quote" in k.lower() and isinstance(v, str))
        h[key] = "As the author writes, " + self.generate({"type": "string"}, "text").lower()
        return True

    # -- loose and structural (non-strict tools only) -----------------------------------------------
    def string_number(self) -> bool:
        slot = self.pick(lambda c, k, s, r: _number(c[k]))
        if slot is None:
            return False
        slot[0][slot[1]] = str(slot[0][slot[1]])
        return True

    def unknown_enum(self) -> bool:
        slot = self.pick(lambda c, k, s, r: isinstance(c[k], str) and bool(s.get("enum")))
        if slot is None:
            return False
        slot[0][slot[1]] = self.rng.choice(("note", "suggestion", "critical", "minor", "praise"))
        return True

    def extra_property(self) -> bool:
        slot = self.pick(lambda c, k, s, r: isinstance(c[k], dict))
        target = slot[0][slot[1]] if slot else self.value
        target[self.rng.choice(("confidence", "category", "notes", "rationale"))] = self.generate(
            {"type": "string"}, "text"
        )
        return True

    def missing_required(self) -> bool:
        slot = self.pick(lambda c, k, s, r: isinstance(c, dict) and r)
        if slot is None:
            return False
        del slot[0][slot[1]]
        return True

    def wrong_type(self) -> bool:
        slot = self.pick(lambda c, k, s, r: isinstance(c, dict) and not isinstance(c[k], (dict, list)))
        if slot is None:
            return False
        c, k, _, _ = slot
        c[k] = None if isinstance(c[k], str) else [c[k]]
        return True

    # -- rare ---------------------------------------------------------------------------------------
    def verbose(self) -> bool:
        """The longest free-text string grows to about twice the document's length."""
        slot = self.pick(
            lambda c, k, s, r: (
                isinstance(c[k], str) and "maxLength" not in s and "enum" not in s and "quote" not in str(k).lower()
            )
        )
        if slot is None:
            return False
        c, k, _, _ = slot
        text, target = c[k], 2 * max(self.document_chars, 2000)
        while len(text) < target:
            text += " " + self.generate({"type": "string"}, "text")
        c[k] = text
        return True


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def truncate(value: dict, budget_chars: int) -> dict:
    """A tool input cut after about ``budget_chars`` characters of JSON, as ``max_tokens`` cuts it:
    the properties that fitted, the one being written cut short, nothing after it."""
    import json

    out: dict = {}
    used = 2
    for k, v in value.items():
        size = len(json.dumps({k: v})) - 1
        if used + size <= budget_chars:
            out[k] = v
            used += size
            continue
        room = budget_chars - used - len(k) - 6
        if isinstance(v, str) and room > 0:
            out[k] = v[:room]
        elif isinstance(v, list) and room > 0:
            part = []
            for item in v:
                room -= len(json.dumps(item)) + 2
                if room < 0:
                    break
                part.append(item)
            out[k] = part
        break
    return out
