"""The one settings object, read from the environment once.

Every tunable of roastq is a field here, named after its environment variable. Code asks
``get_settings()`` and never reads ``os.environ`` itself, so the README's configuration table and
this class are the whole story.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

#: A current model that the installed anthropic SDK does not list as deprecated (tested).
DEFAULT_ANALYSIS_MODEL = "claude-sonnet-5-5"


def _project_home() -> Path:
    # The embedded database lives under .roastq/ in the project folder (the working directory).
    return Path(os.environ.get("ROASTQ_HOME") or Path.cwd() / ".roastq")


class SettingsError(ValueError):
    """A setting has a value roastq cannot use."""


# -- parsers: (variable name, raw text) -> value; an empty variable counts as unset ---------------


def _str(name: str, raw: str) -> str:
    return raw


def _upper(name: str, raw: str) -> str:
    return raw.upper()


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _json_object(name: str, raw: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a JSON object, got {raw!r}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object, got {raw!r}")
    return value


def _choice(*allowed: str):
    def parse(name: str, raw: str) -> str:
        if raw not in allowed:
            raise SettingsError(f"{name} must be {' or '.join(repr(a) for a in allowed)}, got {raw!r}")
        return raw

    return parse


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``6h`` or ``2d`` (ValueError otherwise)."""
    text = str(raw).strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    value = float(text[:-1] if unit else text)
    if value < 0:
        raise ValueError(f"a duration cannot be negative: {raw!r}")
    return value * (unit or 1)


def _duration(name: str, raw: str) -> float:
    try:
        return parse_duration(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a duration (seconds, or 90s, 10m, 6h, 2d), got {raw!r}") from None


def _lower_choice(*allowed: str):
    inner = _choice(*allowed)
    return lambda name, raw: inner(name, raw.lower())


def _broker_url(name: str, raw: str) -> str | None:
    """Unset (or ``postgres``) keeps messages in Postgres; ``amqp://``/``amqps://`` URLs (several
    separated by ``;``) select RabbitMQ."""
    if raw.lower() in ("postgres", "postgresql"):
        return None
    if not all(u.strip().lower().startswith(("amqp://", "amqps://")) for u in raw.split(";")):
        raise SettingsError(f"{name} must be unset, 'postgres' or an amqp:// URL, got {raw.split('@')[-1]!r}")
    return raw


def _setting(env: str, parse, default=dataclasses.MISSING, *, factory=dataclasses.MISSING):
    """A field read from the environment variable ``env`` with ``parse``; its default is written
    here, once."""
    return field(default=default, default_factory=factory, metadata={"env": env, "parse": parse})


@dataclass(frozen=True)
class Settings:
    # Where things are.
    database_url: str | None = _setting("DATABASE_URL", _str, None)  # None: embedded Postgres under home/pgdata
    broker_url: str | None = _setting(
        "BROKER_URL", _broker_url, None
    )  # None: messages in Postgres (dramatiq-pg); amqp://...: RabbitMQ
    home: Path = _setting(
        "ROASTQ_HOME", _path, factory=lambda: Path.cwd() / ".roastq"
    )  # the embedded database lives here
    # Claude. No key: the bundled simulator is used (by `make demo` / `roastq up`).
    anthropic_api_key: str | None = _setting("ANTHROPIC_API_KEY", _str, None)
    anthropic_base_url: str | None = _setting("ANTHROPIC_BASE_URL", _str, None)
    analysis_model: str = _setting("ANALYSIS_MODEL", _str, DEFAULT_ANALYSIS_MODEL)
    llm_call_timeout_s: float = _setting(
        "LLM_CALL_TIMEOUT_S", _float, 120.0
    )  # per-call cap; the job's time left may be smaller
    default_time_limit_s: int = _setting(
        "DEFAULT_TIME_LIMIT_S", _int, 240
    )  # RoastMyPost's default per-agent job time limit
    strict_tools: bool = _setting(
        "STRICT_TOOLS", _bool, True
    )  # tools sent with strict: true (shape guaranteed; bounds checked after)
    llm_max_tokens: int = _setting(
        "LLM_MAX_TOKENS", _int, 4096
    )  # first max_tokens of a call; an answer cut there is asked again with more
    # The batch lane (docs/llm.md): batch-queue jobs with time to spare go through Message Batches.
    llm_batch_lane: str = _setting("LLM_BATCH_LANE", _lower_choice("off", "auto"), "auto")  # off | auto
    llm_batch_default_deadline_s: float = _setting(
        "LLM_BATCH_DEFAULT_DEADLINE", _duration, 86400.0
    )  # a batch-priority job's deadline when none is given
    llm_batch_min_slack_s: float = _setting(
        "LLM_BATCH_MIN_SLACK", _duration, 3 * 3600.0
    )  # a step goes to the lane only with more time than this left
    llm_batch_fallback_s: float = _setting(
        "LLM_BATCH_FALLBACK_S", _duration, 1800.0
    )  # under this much time left, a waiting step runs real-time
    llm_batch_max_requests: int = _setting(
        "LLM_BATCH_MAX_REQUESTS", _int, 10_000
    )  # requests a batch (the API allows 100,000 or 256 MB)
    llm_batch_max_wait_s: float = _setting(
        "LLM_BATCH_MAX_WAIT_S", _duration, 60.0
    )  # a request waits at most this for its batch to be submitted
    llm_batch_poll_s: float = _setting(
        "LLM_BATCH_POLL_S", _duration, 5.0
    )  # first poll of an open batch; doubles up to LLM_BATCH_POLL_MAX_S
    llm_batch_poll_max_s: float = _setting("LLM_BATCH_POLL_MAX_S", _duration, 300.0)
    llm_batch_tick_s: float = _setting(
        "LLM_BATCH_TICK_S", _duration, 2.0
    )  # how often each worker process offers to drive the lane; 0: only the scheduler
    llm_batch_expected_s: float = _setting(
        "LLM_BATCH_EXPECTED_S", _duration, 3600.0
    )  # a batch open longer is late (status, alert)
    # The LLM cost layer (docs/llm.md): response cache, prompt caching, budget, rate limits, prices.
    llm_cache_enabled: bool = _setting("LLM_CACHE_ENABLED", _bool, True)  # the response cache in Postgres
    llm_cache_ttl_s: float = _setting("LLM_CACHE_TTL_S", _float, 7 * 86400.0)
    llm_cache_seed: str = _setting(
        "LLM_CACHE_SEED", _str, ""
    )  # mixed into every cache key: change it to start from an empty cache
    llm_proxy_base_url: str | None = _setting(
        "LLM_PROXY_BASE_URL", _str, None
    )  # an external caching proxy instead of the Postgres cache
    llm_proxy_headers: dict = _setting(
        "LLM_PROXY_HEADERS", _json_object, factory=dict
    )  # sent with every call through the proxy
    llm_proxy_seed_header: str | None = _setting(
        "LLM_PROXY_SEED_HEADER", _str, None
    )  # header carrying the cache seed (e.g. Helicone-Cache-Seed)
    llm_proxy_bypass_headers: dict = _setting(
        "LLM_PROXY_BYPASS_HEADERS", _json_object, factory=dict
    )  # added to a call that bypasses the cache
    prompt_caching: bool = _setting(
        "PROMPT_CACHING", _bool, True
    )  # cache_control on the agent's system prompt and tools
    llm_daily_budget_usd: float = _setting("LLM_DAILY_BUDGET_USD", _float, 0.0)  # 0: no cap
    llm_budget_recheck_s: float = _setting(
        "LLM_BUDGET_RECHECK_S", _float, 600.0
    )  # a job held by the budget looks again after this
    llm_rpm_limit: float = _setting(
        "LLM_RPM_LIMIT", _float, 0.0
    )  # per model; 0: learn it from the API's rate-limit headers
    llm_input_tpm_limit: float = _setting("LLM_INPUT_TPM_LIMIT", _float, 0.0)
    llm_output_tpm_limit: float = _setting("LLM_OUTPUT_TPM_LIMIT", _float, 0.0)
    llm_rate_limits: dict = _setting(
        "LLM_RATE_LIMITS", _json_object, factory=dict
    )  # per model: {"rpm":, "input_tpm":, "output_tpm":}
    llm_rate_limits_from_headers: bool = _setting(
        "LLM_RATE_LIMITS_FROM_HEADERS", _bool, True
    )  # learn limits not configured from the headers
    llm_rate_headroom: float = _setting("LLM_RATE_HEADROOM", _float, 0.95)  # pace at this fraction of each limit
    llm_rate_max_wait_s: float = _setting(
        "LLM_RATE_MAX_WAIT_S", _float, 20.0
    )  # longest in-thread wait for the limiter; longer: the job snoozes
    llm_extra_prices: dict = _setting(
        "LLM_EXTRA_PRICES", _json_object, factory=dict
    )  # model -> {"input":, "output":} $ per MTok
    # Observability.
    sentry_dsn: str | None = _setting("SENTRY_DSN", _str, None)
    sentry_environment: str = _setting("SENTRY_ENVIRONMENT", _str, "development")
    sentry_release: str | None = _setting("SENTRY_RELEASE", _str, None)  # None: "roastq@<package version>"
    metrics_dir: Path = _setting("PROMETHEUS_MULTIPROC_DIR", _path, factory=lambda: _project_home() / "metrics")
    metrics_host: str = _setting("METRICS_HOST", _str, "127.0.0.1")
    metrics_port: int = _setting("METRICS_PORT", _int, 9191)
    log_format: str = _setting("LOG_FORMAT", _choice("json", "pretty"), "json")
    log_level: str = _setting("LOG_LEVEL", _upper, "INFO")
    # Workers.
    worker_threads: int = _setting("WORKER_THREADS", _int, 8)
    db_pool_max: int = _setting(
        "DB_POOL_MAX", _int, 40
    )  # connections a process may hold; threads beyond it wait their turn
    recovery_interval_s: float = _setting(
        "RECOVERY_INTERVAL_S", _float, 10.0
    )  # how often each consumer rescans for orphaned messages
    heartbeat_interval_s: float = _setting(
        "HEARTBEAT_INTERVAL_S", _float, 5.0
    )  # worker heartbeat period; stale after 3 periods
    worker_host: str | None = _setting(
        "WORKER_HOST", _str, None
    )  # the host part of worker ids (host:pid); None: the hostname
    db_peer_timeout_s: float = _setting(
        "DB_PEER_TIMEOUT_S", _float, 10.0
    )  # a lost host's Postgres sessions (and advisory locks) die after ~this
    # Many hosts and RabbitMQ (docs/scaling.md): the outbox relay.
    outbox_relay: bool = _setting(
        "OUTBOX_RELAY", _bool, True
    )  # with RabbitMQ: each worker process also relays the outbox
    outbox_batch: int = _setting("OUTBOX_BATCH", _int, 500)  # outbox rows published a transaction
    outbox_poll_s: float = _setting(
        "OUTBOX_POLL_S", _float, 1.0
    )  # the relay looks again after this when no NOTIFY woke it
    # Failures.
    backoff_scale: float = _setting(
        "BACKOFF_SCALE", _float, 1.0
    )  # multiplies every backoff base and cap (tests and demos shorten waits)
    # Operations (scheduler, pause, legacy import).
    retention_days: float = _setting(
        "RETENTION_DAYS", _float, 7.0
    )  # finished broker messages older than this are deleted (jobs rows are kept)
    dead_letter_retention_days: float = _setting(
        "DEAD_LETTER_RETENTION_DAYS", _float, 30.0
    )  # the same for dead letters (rejected messages)
    reconcile_grace_s: float = _setting(
        "RECONCILE_GRACE_S", _float, 300.0
    )  # a PENDING job without a live message gets a new one after this
    job_crash_limit: int = _setting(
        "JOB_CRASH_LIMIT", _int, 3
    )  # the reaper fails a job whose worker died this many times under it
    pause_snooze_s: float = _setting(
        "PAUSE_SNOOZE_S", _float, 30.0
    )  # while paused, a job's message comes back after this (plus jitter)
    legacy_database_url: str | None = _setting(
        "LEGACY_DATABASE_URL", _str, None
    )  # the legacy RoastMyPost database; None: DATABASE_URL
    # The console (`roastq console`, docs/console.md).
    console_host: str = _setting("CONSOLE_HOST", _str, "127.0.0.1")
    console_port: int = _setting("CONSOLE_PORT", _int, 9292)
    console_token: str | None = _setting(
        "CONSOLE_TOKEN", _str, None
    )  # required off the loopback address (or basic-auth credentials)
    console_basic_auth: str | None = _setting("CONSOLE_BASIC_AUTH", _str, None)  # "user:password"
    console_read_only: bool = _setting("CONSOLE_READ_ONLY", _bool, False)  # hide and refuse the actions

    @classmethod
    def from_env(cls) -> Settings:
        """Every field from its environment variable; unset or empty ones keep their default."""
        values = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f.metadata["env"])
            if raw not in (None, ""):
                values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
        return cls(**values)

    @property
    def rabbitmq(self) -> bool:
        """Messages go through RabbitMQ (BROKER_URL=amqp://...), not the Postgres broker."""
        return self.broker_url is not None

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
    return get_settings()
