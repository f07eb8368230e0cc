"""What brings a dead worker pool back (docs/operations.md, "A worker killed hard"): the systemd
units in deploy/systemd/ and the compose file's restart policy."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


def test_the_units_restart_what_dies():
    assert [u.name for u in UNITS] == ["roastq-scheduler.service", "roastq-worker.service"]
    for path in UNITS:
        assert unit(path)["Service"]["Restart"] == "always", path.name
    worker = unit(ROOT / "deploy" / "systemd" / "roastq-worker.service")
    assert worker["Service"]["KillMode"] == "mixed"  # SIGTERM to the main process only
    assert int(worker["Service"]["TimeoutStopSec"]) >= 600  # the longest agent time limit
    assert "-m actors" in worker["Service"]["ExecStart"]


def test_the_units_are_valid_for_systemd():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed here (Debian's systemd package)")
    run = subprocess.run([exe, "verify", *map(str, UNITS)], capture_output=True, text=True)
    # The install paths (/opt/roastq) do not exist on this machine: that is the only complaint allowed.
    complaints = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert complaints == []


def test_the_compose_worker_and_scheduler_come_back():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("worker", "scheduler"):
        assert services[name]["restart"] == "unless-stopped", name
