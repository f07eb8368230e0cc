"""An app's process that enqueues is not a worker: roastq configures nothing in it.

The app below is what a new user writes: it has its own logging format, its own Prometheus
metrics (``prometheus_client`` imported first, not in multiprocess mode), its own Sentry client,
and it enqueues in its own transaction; it also imports the actors to call ``.send()``. It then
checks that roastq touched none of it. A worker in this process runs the job afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from helpers import one, wait_for_status

APP = textwrap.dedent("""
    import json, logging, os, sys, threading

    import prometheus_client
    from prometheus_client import Counter, values
    import sentry_sdk

    APP_REQUESTS = Counter("app_requests_total", "The app's own metric.")
    logging.basicConfig(level=logging.INFO, format="APP|%(levelname)s|%(message)s", stream=sys.stdout)
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", release="app@1.0", default_integrations=False)

    root = logging.getLogger()
    handlers_before = list(root.handlers)
    level_before = root.level
    value_class_before = values.ValueClass
    threads_before = {t.name for t in threading.enumerate()}
    client_before = sentry_sdk.get_client()
    cwd_before = sorted(os.listdir("."))

    import psycopg2
    from roastq.api import enqueue_evaluation

    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    with conn, conn.cursor() as cur:  # the app's own transaction
        cur.execute("SELECT 1")
        job_id = enqueue_evaluation(sys.argv[1], sys.argv[2], conn=conn)

    from actors import evaluate_document  # to call .send(), as an app may
    evaluate_document.send(job_id)  # a second delivery of the same job: it still runs once

    APP_REQUESTS.inc()
    logging.getLogger("app").info("enqueued %s", job_id)
    print(json.dumps({
        "job_id": job_id,
        "handlers_same": list(root.handlers) == handlers_before and root.level == level_before,
        "formats": [h.formatter._fmt if h.formatter else None for h in root.handlers],
        "multiproc_env": os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        "value_class_same": values.ValueClass is value_class_before,
        "app_metric": prometheus_client.REGISTRY.get_sample_value("app_requests_total"),
        "roastq_metrics": [m.name for m in prometheus_client.REGISTRY.collect() if m.name.startswith("roastq")],
        "sentry_same": sentry_sdk.get_client() is client_before
                       and sentry_sdk.get_client().options["release"] == "app@1.0",
        "new_threads": sorted({t.name for t in threading.enumerate()} - threads_before),
        "cwd_same": sorted(os.listdir(".")) == cwd_before,
    }))
""")


def test_an_app_that_enqueues_keeps_its_logging_metrics_sentry_and_files(db, seeded, worker, tmp_path):
    document = next(iter(seeded.documents.values()))
    agent = next(iter(seeded.agents.values()))
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "LOG_FORMAT", "ROASTQ_HOME")}
    env["SENTRY_DSN"] = "http://roastq@127.0.0.1:9/2"  # roastq's DSN is set: it must still not init Sentry
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    (tmp_path / "app.py").write_text(APP)
    done = subprocess.run(
        [sys.executable, "app.py", document, agent], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert lines[-2] == f"APP|INFO|enqueued {report['job_id']}"  # its own format, still
    assert report["handlers_same"] and report["formats"] == ["APP|%(levelname)s|%(message)s"]
    assert report["multiproc_env"] is None and report["value_class_same"]
    assert report["app_metric"] == 1.0 and report["roastq_metrics"] == []
    assert report["sentry_same"]
    assert report["new_threads"] == []
    assert report["cwd_same"] and sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]
    assert done.stderr == ""  # roastq wrote nothing to the app's stderr either

    job_id = report["job_id"]
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"  # queued, then run by a worker
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1


def test_importing_the_api_and_the_actors_configures_nothing(tmp_path):
    """Without a database: importing roastq's sending side creates no folder, no environment
    variable, no handler, no thread, and loads neither prometheus_client nor the anthropic SDK
    (2 s and 50 MiB that a process that only sends never uses)."""
    code = textwrap.dedent("""
        import logging, os, sys, threading
        before = (list(logging.getLogger().handlers), {t.name for t in threading.enumerate()})
        import roastq.api, actors  # noqa
        import sentry_sdk
        after = (list(logging.getLogger().handlers), {t.name for t in threading.enumerate()})
        assert before == after, (before, after)
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        assert not sentry_sdk.get_client().is_active()
        assert "prometheus_client" not in sys.modules, "importing the actors imported prometheus_client"
        assert "anthropic" not in sys.modules, "importing the actors imported the anthropic SDK"
        print(sorted(os.listdir(".")))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "ROASTQ_HOME", "DATABASE_URL")}
    env["SENTRY_DSN"] = "http://roastq@127.0.0.1:9/2"
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
