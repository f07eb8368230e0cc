"""Strict tool use: a tool definition the API's strict grammar accepts.

With ``"strict": true`` the API samples the tool's input under a grammar compiled from its
schema, so the shape is guaranteed: types, required properties, enums, no extra properties. The
grammar takes no numeric, string-length or array-size bounds (``minimum``, ``maxLength``,
``maxItems``...; ``minItems`` only 0 or 1) and wants ``additionalProperties: false`` on every
object. The installed SDK's ``anthropic.transform_schema`` does that transformation: bounds move
into the property's description (``{maxLength: 200}``), where the model reads them. The bounds are
then checked after the answer anyway (``roastq/evaluation/answers.py``), against the full schema.
"""

from __future__ import annotations

import functools
import json

import anthropic


def strict_tool(tool: dict) -> dict:
    """``tool`` with ``strict: true`` and its schema in the strict grammar's terms."""
    return {**tool, "strict": True, "input_schema": _strict_schema(json.dumps(tool["input_schema"]))}


@functools.lru_cache(maxsize=64)
def _strict_schema(schema_json: str) -> dict:
    return anthropic.transform_schema(json.loads(schema_json))  # key order kept: the model answers in it
