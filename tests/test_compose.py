"""docker-compose.yml: valid against the compose specification's schema, every mounted file exists,
and the services agree with each other (ports, the exporter Prometheus scrapes, the image's files)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_file_validates_against_the_compose_spec_schema():
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is a test dependency (pip install -e '.[test]')"
    run = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_stack_has_every_service():
    assert set(services()) >= {"postgres", "migrate", "worker", "scheduler", "simulator", "prometheus", "grafana"}
    assert services()["migrate"]["restart"] == "no"  # one-shot
    for name in ("worker", "scheduler", "simulator"):
        assert services()[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_mounted_file_and_build_context_exists():
    checked = 0
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounts {source}, which does not exist"
                checked += 1
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).exists(), f"{name}: no {dockerfile} in {context}"
    assert checked >= 4
    # What the Dockerfile copies exists too.
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_prometheus_scrapes_the_worker_exporter_and_loads_the_mounted_rules():
    worker = services()["worker"]
    env = worker["environment"]
    assert env["METRICS_HOST"] == "0.0.0.0"
    config = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"worker:{env['METRICS_PORT']}"]
    mounts = services()["prometheus"]["volumes"]
    for rule_file in config["rule_files"]:
        assert f"./prometheus/{rule_file}:/etc/prometheus/{rule_file}:ro" in mounts
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert any(re.fullmatch(r"9191:9191", p) for p in worker["ports"])


def test_the_console_service_requires_a_token_and_publishes_its_port():
    console = services()["console"]
    assert console["command"][:2] == ["roastq", "console"] and "0.0.0.0" in console["command"]
    assert console["environment"]["CONSOLE_TOKEN"].startswith("${CONSOLE_TOKEN:?")  # compose refuses without it
    assert "9292:9292" in console["ports"]
    assert console["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
