"""Process setup for sentry-sdk: on when ``SENTRY_DSN`` is set, with release and environment.

What leaves the process is scrubbed: no frame locals (they hold documents and prompts), no
request bodies, every string passed through ``roastq.redact`` plus a literal removal of this
process's own secrets (API key, DSN, database password), long strings cut. Log records become
breadcrumbs, never events: the job middleware (``middleware.sentry``) decides what is an event,
so that a job retried three times is one event, not four. Integrations are chosen here, narrowly:
sentry-sdk's own Dramatiq integration reports every failed attempt, so it is not used.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import sentry_sdk
from sentry_sdk.integrations.argv import ArgvIntegration
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.excepthook import ExcepthookIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.modules import ModulesIntegration
from sentry_sdk.integrations.threading import ThreadingIntegration

from roastq.redact import redact
from roastq.settings import Settings, get_settings

#: Longest string an event may carry; longer ones are cut (a quoted document, say).
MAX_STRING_CHARS = 2000
#: How long a stopping worker waits for queued events to be sent.
SHUTDOWN_TIMEOUT_S = 10.0

_secrets: list[str] = []


def release_name() -> str:
    try:
        return f"roastq@{version('roastq')}"
    except PackageNotFoundError:  # pragma: no cover - always installed (editable) here
        return "roastq@unknown"


def _process_secrets(settings: Settings, dsn: str) -> list[str]:
    found = [dsn, settings.anthropic_api_key, settings.database_url]
    key = urlsplit(dsn).username
    if key:
        found.append(key)  # the DSN's public key on its own
    if settings.database_url:
        password = urlsplit(settings.database_url).password
        if password:
            found.append(password)
    # Longest first, so that a secret containing another is removed whole.
    return sorted({s for s in found if s and len(s) >= 6}, key=len, reverse=True)


def scrub_text(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    text = redact(text)
    if len(text) > MAX_STRING_CHARS:
        text = text[: MAX_STRING_CHARS - 1] + "…"
    return text


def scrub(value):
    """The value with every string scrubbed (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def before_send(event, hint):
    event.pop("request", None)
    for exc in (event.get("exception") or {}).get("values") or []:
        for frame in (exc.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    return scrub(event)


def before_breadcrumb(crumb, hint):
    crumb = dict(crumb)
    if crumb.get("category") == "httplib" or crumb.get("type") == "http":
        crumb.pop("data", None)  # URLs with query strings, bodies
    return scrub(crumb)


def setup_sentry(settings: Settings | None = None, *, dsn: str | None = None) -> bool:
    """Initialise sentry-sdk for this process if a DSN is configured; True if it is on.

    Calling it again replaces the client (tests point it at a local receiver).
    """
    settings = settings or get_settings()
    dsn = dsn or settings.sentry_dsn
    if not dsn:
        return False
    _secrets[:] = _process_secrets(settings, dsn)
    sentry_sdk.init(
        dsn=dsn,
        release=settings.sentry_release or release_name(),
        environment=settings.sentry_environment,
        # Nothing about people, no request bodies, no frame locals (they hold documents), no SQL.
        data_collection={
            "user_info": False,
            "http_bodies": [],
            "stack_frame_variables": False,
            "database_query_data": False,
            "queues": False,
        },
        include_local_variables=False,
        max_request_body_size="never",
        max_breadcrumbs=100,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=None),  # logs: breadcrumbs only
            ArgvIntegration(),
            AtexitIntegration(),
            DedupeIntegration(),
            ExcepthookIntegration(),
            ModulesIntegration(),
            ThreadingIntegration(propagate_scope=False),
        ],
    )
    return True


def flush(timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Send what is queued (a stopping worker process exits without running atexit hooks)."""
    client = sentry_sdk.get_client()
    if client.is_active():
        client.flush(timeout=timeout)


def shutdown_sentry() -> None:
    """Flush and turn Sentry off in this process."""
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=SHUTDOWN_TIMEOUT_S)
    sentry_sdk.get_global_scope().set_client(None)
    _secrets.clear()
