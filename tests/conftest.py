"""Fixtures: a real Postgres database, the Claude simulator over HTTP, and real Dramatiq workers.

The database is, in order of preference: TEST_DATABASE_URL; a fresh database on the local server
at 127.0.0.1:5432 (as on CI); or an embedded pgserver in a temporary folder.
"""

from __future__ import annotations

import os
import uuid

import psycopg2
import pytest

SERVER_URL = os.environ.get("TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres")

# Metrics: before anything imports prometheus_client (test modules import actors when collected),
# a multiprocess directory of this run's own; worker pools started by tests export on a free port.
# Under pytest-xdist (`make test` runs the suite in parallel) each worker process is a run of its
# own: the directory it inherits from the controller would mix its metrics with the others'.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("PYTEST_XDIST_WORKER"):
    import atexit
    import shutil
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="roastq-test-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)
os.environ["METRICS_PORT"] = "0"

# The broker: Postgres, or RabbitMQ in the RabbitMQ pass (ROASTQ_TEST_BROKER=rabbitmq, see
# tests/rabbitmq_pass.py): set before any test module imports actors.
import rabbitmq_pass  # noqa: E402

RABBITMQ_PASS = rabbitmq_pass.wanted()
RABBITMQ_UNAVAILABLE = rabbitmq_pass.setup()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "postgres_broker: inspects the Postgres broker's own tables (dramatiq.queue): not run in the RabbitMQ pass",
    )
    config.addinivalue_line("markers", "rabbitmq: needs the RabbitMQ broker: run only in the RabbitMQ pass")
    config.addinivalue_line("markers", "unit: needs no Postgres, simulator or worker (`make test-unit`)")


#: The unit tier (`make test-unit`): whole modules that need no Postgres, simulator or worker;
#: single tests elsewhere carry ``@pytest.mark.unit`` themselves.
UNIT_MODULES = {"test_error_policy.py", "test_highlights.py", "test_samples.py", "test_layers.py"}


def pytest_collection_modifyitems(config, items):
    """Each pass runs the tests that apply to its broker; the others are deselected."""
    for item in items:
        if item.path.name in UNIT_MODULES:
            item.add_marker(pytest.mark.unit)
    keep, drop = [], []
    for item in items:
        marker = "postgres_broker" if RABBITMQ_PASS else "rabbitmq"
        (drop if item.get_closest_marker(marker) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if RABBITMQ_PASS and RABBITMQ_UNAVAILABLE:
        print(f"\n[roastq tests] RabbitMQ pass skipped: {RABBITMQ_UNAVAILABLE}")
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"RabbitMQ pass: {RABBITMQ_UNAVAILABLE}"))


def _make_database(tmp_path_factory) -> tuple[str, callable]:
    if os.environ.get("TEST_DATABASE_URL"):
        return os.environ["TEST_DATABASE_URL"], lambda: None
    name = f"roastq_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg2.connect(SERVER_URL, connect_timeout=3)
    except psycopg2.OperationalError:
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
        print(f"\n[roastq tests] no Postgres at {SERVER_URL}: using an embedded pgserver")
        return server.get_uri(), server.cleanup
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = SERVER_URL.rsplit("/", 1)[0]

    def drop():
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    return f"{base}/{name}", drop


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    url, drop = _make_database(tmp_path_factory)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("LOG_FORMAT", "pretty")
    os.environ.setdefault("RECOVERY_INTERVAL_S", "2")
    # The response cache is off unless a test turns it on (tests/test_cache*.py): most tests run
    # one document and agent many times over, and are about what reaches the API.
    os.environ.setdefault("LLM_CACHE_ENABLED", "0")
    # The batch lane likewise (tests/test_batch_lane*.py turn it on): batch-queue jobs would
    # otherwise wait for Message Batches.
    os.environ.setdefault("LLM_BATCH_LANE", "off")
    from roastq import db
    from roastq.settings import reload_settings

    reload_settings()
    db.reset()
    db.migrate()
    yield url
    db.reset()
    drop()


@pytest.fixture(scope="session")
def simulator(database_url):
    from roastq.llm import client as llm
    from roastq.settings import reload_settings
    from roastq.simulator.server import SimConfig, Simulator

    sim = Simulator(SimConfig(latency_ms=5, jitter_ms=2, seed=1)).start()
    os.environ["ANTHROPIC_BASE_URL"] = sim.url
    os.environ.pop("ANTHROPIC_API_KEY", None)
    reload_settings()
    llm._default = None
    yield sim
    sim.stop()


TABLES = (
    "worker_heartbeats, comments, highlights, tasks, job_attempts, evaluation_versions, jobs, evaluations, "
    "agent_versions, agents, document_versions, documents, dramatiq.queue, "
    "schedule_ticks, system_state, cost_daily, legacy_jobs, legacy_ids, "
    "llm_cache, job_steps, llm_spend_daily, llm_rate_limits, outbox, llm_batch_requests, llm_batches, job_logs"
)


@pytest.fixture
def db(database_url):
    """A clean database (all tables emptied) and a connection to it."""

    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {TABLES} CASCADE")
    if RABBITMQ_PASS:
        import actors

        rabbitmq_pass.purge(actors.broker)
    yield conn
    conn.close()


@pytest.fixture
def sim(simulator):
    from roastq.simulator.server import ALL_RANDOM_FAULTS

    simulator.reset()
    simulator.configure(
        latency_ms=5,
        jitter_ms=2,
        fault_rate=0.0,
        faults=ALL_RANDOM_FAULTS,
        hang_s=30.0,
        retry_after_s=1.0,
        rpm_limit=None,
        sloppiness=0.0,
    )
    yield simulator
    simulator.reset()


@pytest.fixture(params=[0.0, 0.3], ids=["tidy", "sloppy"])
def sloppiness(request, sim):
    """Run a test twice: with answers that honour their schemas, and with the simulator's
    sloppiness at 0.3 (model-like violations in about a third of the answers, sloppy.py)."""
    sim.configure(sloppiness=request.param)
    return request.param


@pytest.fixture
def seeded(db):
    from roastq.evaluation.seed import seed

    return seed()


@pytest.fixture
def broker(database_url):
    import actors

    return actors.broker


@pytest.fixture
def worker(broker, sim):
    """A real Dramatiq worker, in this process, consuming from Postgres."""
    from helpers import running_worker

    with running_worker(broker, threads=4) as w:
        yield w


@pytest.fixture
def llm_settings(simulator):
    """Change the process's Claude client settings for one test: ``llm_settings(llm_cache_enabled=True)``.
    In-process workers use that client, so the change reaches their jobs too."""
    from roastq.llm import client as llm

    claude = llm.default_claude()
    saved = claude.settings

    def apply(**changes):
        claude.settings = saved.replace(**changes)
        return claude

    yield apply
    claude.settings = saved


@pytest.fixture
def fast_backoff(request, monkeypatch, broker):
    """Backoff scaled down so that retries happen in milliseconds (the policy itself is unchanged):
    in this process's stack, and (BACKOFF_SCALE) for worker processes a test starts.
    A test module may set ``BACKOFF_SCALE = "0.002"`` to change the factor."""
    from helpers import stack_options

    from roastq import settings

    scale = getattr(request.module, "BACKOFF_SCALE", "0.01")
    monkeypatch.setenv("BACKOFF_SCALE", scale)
    settings.reload_settings()
    with stack_options(broker, backoff_scale=float(scale)):
        yield
    monkeypatch.delenv("BACKOFF_SCALE")
    settings.reload_settings()


@pytest.fixture
def wire(database_url):
    """roastq's connections (and the test's, through ``wire.url``) go through a proxy that counts
    the queries sent to Postgres."""
    import os

    from wire import Wire

    from roastq import db
    from roastq.settings import reload_settings

    proxy = Wire(database_url)
    os.environ["DATABASE_URL"] = proxy.url
    reload_settings()
    db.reset()
    try:
        yield proxy
    finally:
        os.environ["DATABASE_URL"] = database_url
        reload_settings()
        db.reset()
        proxy.close()
