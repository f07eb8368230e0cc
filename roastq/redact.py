"""Scrubbing of secrets from text that leaves the process (job errors, logs, Sentry)."""

from __future__ import annotations

import re

_PATTERNS = [
    # Anthropic and other API keys.
    (re.compile(r"sk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    # Authorization headers and bearer tokens.
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/]+=*"), r"\1***"),
    (re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"), r"\1***"),
    # Passwords in URLs: postgresql://user:secret@host, https://key@sentry.example/1.
    (re.compile(r"([a-z][a-z0-9+.\-]*://)([^/\s:@]+):([^/\s@]+)@", re.I), r"\1\2:***@"),
    (re.compile(r"(https?://)([0-9a-f]{16,})@", re.I), r"\1***@"),
    # password=... in libpq connection strings.
    (re.compile(r"(?i)(password\s*=\s*)\S+"), r"\1***"),
]

#: What every pattern above needs somewhere in the text: one search tells most log lines (which
#: hold no secret) apart, instead of six substitutions a line.
_MAYBE = re.compile(r"(?i)sk-|bearer|x-api-key|://|password")

MAX_ERROR_CHARS = 1000


def redact(text: str) -> str:
    if not _MAYBE.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def clean_error(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``Type: message`` with secrets removed, at most ``limit`` characters."""
    text = redact(f"{type(exc).__name__}: {exc}")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
