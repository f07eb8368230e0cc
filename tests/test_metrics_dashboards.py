"""Grafana dashboards and provisioning, validated against Grafana's JSON schemas (strict).

No Grafana server can run here; ``tests/test_prometheus.py`` runs every panel's query on a real
Prometheus. This file checks shape: the dashboard schema, each panel kind's options schema, the
Prometheus query schema of each target, and that the files are what ``grafana/generate.py`` writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("GRAFANA_SCHEMAS", ROOT.parent / "shared" / "schemas" / "grafana"))
BOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def validator(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    doc = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    if definition:
        doc = {**doc, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(doc)


@pytest.fixture(scope="module")
def schemas():
    if not (SCHEMAS / "dashboard.jsonschema.json").exists():
        pytest.skip(f"Grafana JSON schemas not found in {SCHEMAS} (shared/ is outside the project)")
    return SCHEMAS


def errors(v: jsonschema.Draft7Validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in v.iter_errors(doc)]


def test_there_are_the_three_dashboards():
    titles = {json.loads(p.read_text())["title"] for p in BOARDS}
    assert titles == {"roastq: overview", "roastq: LLM", "roastq: workers"}


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_dashboard_validates_strictly(schemas, path):
    board = json.loads(path.read_text())
    assert errors(validator("dashboard"), board) == []
    prom = validator("prometheus")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        where = f"{path.name}: {panel['title']}"
        assert errors(validator(panel["type"], "Options"), panel["options"]) == [], where
        if panel["type"] == "timeseries":
            assert errors(validator("timeseries", "FieldConfig"), panel["fieldConfig"]["defaults"]["custom"]) == [], (
                where
            )
        assert panel["targets"], where
        for target in panel["targets"]:
            assert errors(prom, target) == [], where
            assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
        assert panel["description"].strip(), where


def test_dashboards_are_what_the_generator_writes():
    sys.path.insert(0, str(ROOT / "grafana"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    for name, board in generate.DASHBOARDS.items():
        assert (ROOT / "grafana" / "dashboards" / name).read_text() == generate.render(board), (
            f"{name} is stale: run .venv/bin/python grafana/generate.py"
        )


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards():
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [ds] = datasources["datasources"]
    assert (ds["type"], ds["uid"]) == ("prometheus", "prometheus")
    assert ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/roastq.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "prometheus" in compose["services"]
