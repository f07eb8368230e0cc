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


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _json_object(name: str) -> dict:
    raw = _env(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a JSON object, got {raw!r}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object, got {raw!r}")
    return value


class SettingsError(ValueError):
    """A setting has a value roastq cannot use."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``6h`` or ``2d`` (ValueError otherwise)."""
    text = str(raw).strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    value = float(text[:-1] if unit else text)
    if value < 0:
        raise ValueError(f"a duration cannot be negative: {raw!r}")
    return value * (unit or 1)


def _duration(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return parse_duration(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a duration (seconds, or 90s, 10m, 6h, 2d), got {raw!r}") from None


def _batch_lane() -> str:
    raw = (_env("LLM_BATCH_LANE", "auto") or "auto").lower()
    if raw not in ("off", "auto"):
        raise SettingsError(f"LLM_BATCH_LANE must be 'off' or 'auto', got {raw!r}")
    return raw


def _broker_url() -> str | None:
    """BROKER_URL: unset (or ``postgres``) keeps messages in Postgres; ``amqp://``/``amqps://``
    URLs (several separated by ``;``) select RabbitMQ."""
    raw = _env("BROKER_URL")
    if raw is None or raw.lower() in ("postgres", "postgresql"):
        return None
    if not all(u.strip().lower().startswith(("amqp://", "amqps://")) for u in raw.split(";")):
        raise SettingsError(f"BROKER_URL must be unset, 'postgres' or an amqp:// URL, got {raw.split('@')[-1]!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    # Where things are.
    database_url: str | None = None  # None: embedded Postgres under home/pgdata
    broker_url: str | None = None  # None: messages in Postgres (dramatiq-pg); amqp://...: RabbitMQ
    home: Path = field(default_factory=_project_home)
    # Claude. No key: the bundled simulator is used (by `make demo` / `roastq up`).
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    analysis_model: str = DEFAULT_ANALYSIS_MODEL
    llm_call_timeout_s: float = 120.0  # per-call cap; the job's time left may be smaller
    default_time_limit_s: int = 240  # RoastMyPost's default per-agent job time limit
    # The LLM cost layer (docs/llm.md): response cache, prompt caching, budget, rate limits, prices.
    llm_cache_enabled: bool = True  # the response cache in Postgres
    llm_cache_ttl_s: float = 7 * 86400.0
    llm_cache_seed: str = ""  # mixed into every cache key: change it to start from an empty cache
    llm_proxy_base_url: str | None = None  # an external caching proxy instead of the Postgres cache
    llm_proxy_headers: dict = field(default_factory=dict)  # sent with every call through the proxy
    llm_proxy_seed_header: str | None = None  # header carrying the cache seed (e.g. Helicone-Cache-Seed)
    llm_proxy_bypass_headers: dict = field(default_factory=dict)  # added to a call that bypasses the cache
    prompt_caching: bool = True  # cache_control on the agent's system prompt and tools
    llm_daily_budget_usd: float = 0.0  # 0: no cap
    llm_budget_recheck_s: float = 600.0  # a job held by the budget looks again after this
    llm_rpm_limit: float = 0.0  # per model; 0: learn it from the API's rate-limit headers
    llm_input_tpm_limit: float = 0.0
    llm_output_tpm_limit: float = 0.0
    llm_rate_limits: dict = field(default_factory=dict)  # per model: {"rpm":, "input_tpm":, "output_tpm":}
    llm_rate_limits_from_headers: bool = True  # learn limits not configured from the headers
    llm_rate_headroom: float = 0.95  # pace at this fraction of each limit
    llm_rate_max_wait_s: float = 20.0  # longest in-thread wait for the limiter; longer: the job snoozes
    llm_extra_prices: dict = field(default_factory=dict)  # model -> {"input":, "output":} $ per MTok
    # The batch lane (docs/llm.md): batch-queue jobs with time to spare go through Message Batches.
    llm_batch_lane: str = "auto"  # off | auto
    llm_batch_default_deadline_s: float = 86400.0  # a batch-priority job's deadline when none is given
    llm_batch_min_slack_s: float = 3 * 3600.0  # a step goes to the lane only with more time than this left
    llm_batch_fallback_s: float = 1800.0  # under this much time left, a waiting step runs real-time
    llm_batch_max_requests: int = 10_000  # requests a batch (the API allows 100,000 or 256 MB)
    llm_batch_max_wait_s: float = 60.0  # a request waits at most this for its batch to be submitted
    llm_batch_poll_s: float = 5.0  # first poll of an open batch; doubles up to LLM_BATCH_POLL_MAX_S
    llm_batch_poll_max_s: float = 300.0
    llm_batch_tick_s: float = 2.0  # how often each worker process offers to drive the lane; 0: only the scheduler
    llm_batch_expected_s: float = 3600.0  # a batch open longer is late (status, alert)
    # Observability.
    sentry_dsn: str | None = None
    sentry_environment: str = "development"
    sentry_release: str | None = None  # None: "roastq@<package version>"
    metrics_dir: Path = field(default_factory=lambda: _project_home() / "metrics")  # PROMETHEUS_MULTIPROC_DIR
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9191
    log_format: str = "json"
    log_level: str = "INFO"
    # Workers.
    worker_threads: int = 8
    db_pool_max: int = 40  # connections a process may hold; threads beyond it wait their turn
    recovery_interval_s: float = 10.0  # how often each consumer rescans for orphaned messages
    heartbeat_interval_s: float = 5.0  # worker heartbeat period; stale after 3 periods
    worker_host: str | None = None  # the host part of worker ids (host:pid); None: the hostname
    db_peer_timeout_s: float = 10.0  # a lost host's Postgres sessions (and advisory locks) die after ~this
    # Many hosts and RabbitMQ (docs/scaling.md): the outbox relay.
    outbox_relay: bool = True  # with RabbitMQ: each worker process also relays the outbox
    outbox_batch: int = 500  # outbox rows published a transaction
    outbox_poll_s: float = 1.0  # the relay looks again after this when no NOTIFY woke it
    # Failures.
    backoff_scale: float = 1.0  # multiplies every backoff base and cap (tests and demos shorten waits)
    # Operations (scheduler, pause, legacy import).
    retention_days: float = 7.0  # finished broker messages older than this are deleted (jobs rows are kept)
    dead_letter_retention_days: float = 30.0  # the same for dead letters (rejected messages)
    reconcile_grace_s: float = 300.0  # a PENDING job without a live message gets a new one after this
    job_crash_limit: int = 3  # the reaper fails a job whose worker died this many times under it
    pause_snooze_s: float = 30.0  # while paused, a job's message comes back after this (plus jitter)
    legacy_database_url: str | None = None  # the legacy RoastMyPost database; None: DATABASE_URL

    @classmethod
    def from_env(cls) -> "Settings":
        log_format = _env("LOG_FORMAT", "json")
        if log_format not in ("json", "pretty"):
            raise SettingsError(f"LOG_FORMAT must be 'json' or 'pretty', got {log_format!r}")
        return cls(
            database_url=_env("DATABASE_URL"),
            broker_url=_broker_url(),
            home=_project_home(),
            anthropic_api_key=_env("ANTHROPIC_API_KEY"),
            anthropic_base_url=_env("ANTHROPIC_BASE_URL"),
            analysis_model=_env("ANALYSIS_MODEL", DEFAULT_ANALYSIS_MODEL),
            llm_call_timeout_s=_float("LLM_CALL_TIMEOUT_S", 120.0),
            default_time_limit_s=_int("DEFAULT_TIME_LIMIT_S", 240),
            llm_cache_enabled=_bool("LLM_CACHE_ENABLED", True),
            llm_cache_ttl_s=_float("LLM_CACHE_TTL_S", 7 * 86400.0),
            llm_cache_seed=_env("LLM_CACHE_SEED", ""),
            llm_proxy_base_url=_env("LLM_PROXY_BASE_URL"),
            llm_proxy_headers=_json_object("LLM_PROXY_HEADERS"),
            llm_proxy_seed_header=_env("LLM_PROXY_SEED_HEADER"),
            llm_proxy_bypass_headers=_json_object("LLM_PROXY_BYPASS_HEADERS"),
            prompt_caching=_bool("PROMPT_CACHING", True),
            llm_daily_budget_usd=_float("LLM_DAILY_BUDGET_USD", 0.0),
            llm_budget_recheck_s=_float("LLM_BUDGET_RECHECK_S", 600.0),
            llm_rpm_limit=_float("LLM_RPM_LIMIT", 0.0),
            llm_input_tpm_limit=_float("LLM_INPUT_TPM_LIMIT", 0.0),
            llm_output_tpm_limit=_float("LLM_OUTPUT_TPM_LIMIT", 0.0),
            llm_rate_limits=_json_object("LLM_RATE_LIMITS"),
            llm_rate_limits_from_headers=_bool("LLM_RATE_LIMITS_FROM_HEADERS", True),
            llm_rate_headroom=_float("LLM_RATE_HEADROOM", 0.95),
            llm_rate_max_wait_s=_float("LLM_RATE_MAX_WAIT_S", 20.0),
            llm_extra_prices=_json_object("LLM_EXTRA_PRICES"),
            llm_batch_lane=_batch_lane(),
            llm_batch_default_deadline_s=_duration("LLM_BATCH_DEFAULT_DEADLINE", 86400.0),
            llm_batch_min_slack_s=_duration("LLM_BATCH_MIN_SLACK", 3 * 3600.0),
            llm_batch_fallback_s=_duration("LLM_BATCH_FALLBACK_S", 1800.0),
            llm_batch_max_requests=_int("LLM_BATCH_MAX_REQUESTS", 10_000),
            llm_batch_max_wait_s=_duration("LLM_BATCH_MAX_WAIT_S", 60.0),
            llm_batch_poll_s=_duration("LLM_BATCH_POLL_S", 5.0),
            llm_batch_poll_max_s=_duration("LLM_BATCH_POLL_MAX_S", 300.0),
            llm_batch_tick_s=_duration("LLM_BATCH_TICK_S", 2.0),
            llm_batch_expected_s=_duration("LLM_BATCH_EXPECTED_S", 3600.0),
            sentry_dsn=_env("SENTRY_DSN"),
            sentry_environment=_env("SENTRY_ENVIRONMENT", "development"),
            sentry_release=_env("SENTRY_RELEASE"),
            metrics_dir=Path(_env("PROMETHEUS_MULTIPROC_DIR") or _project_home() / "metrics"),
            metrics_host=_env("METRICS_HOST", "127.0.0.1"),
            metrics_port=_int("METRICS_PORT", 9191),
            log_format=log_format,
            log_level=_env("LOG_LEVEL", "INFO").upper(),
            worker_threads=_int("WORKER_THREADS", 8),
            db_pool_max=_int("DB_POOL_MAX", 40),
            recovery_interval_s=_float("RECOVERY_INTERVAL_S", 10.0),
            heartbeat_interval_s=_float("HEARTBEAT_INTERVAL_S", 5.0),
            worker_host=_env("WORKER_HOST"),
            db_peer_timeout_s=_float("DB_PEER_TIMEOUT_S", 10.0),
            outbox_relay=_bool("OUTBOX_RELAY", True),
            outbox_batch=_int("OUTBOX_BATCH", 500),
            outbox_poll_s=_float("OUTBOX_POLL_S", 1.0),
            backoff_scale=_float("BACKOFF_SCALE", 1.0),
            retention_days=_float("RETENTION_DAYS", 7.0),
            dead_letter_retention_days=_float("DEAD_LETTER_RETENTION_DAYS", 30.0),
            reconcile_grace_s=_float("RECONCILE_GRACE_S", 300.0),
            job_crash_limit=_int("JOB_CRASH_LIMIT", 3),
            pause_snooze_s=_float("PAUSE_SNOOZE_S", 30.0),
            legacy_database_url=_env("LEGACY_DATABASE_URL"),
        )

    @property
    def rabbitmq(self) -> bool:
        """Messages go through RabbitMQ (BROKER_URL=amqp://...), not the Postgres broker."""
        return self.broker_url is not None

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
    return get_settings()
