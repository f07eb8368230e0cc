"""Test hosts on one machine: network namespaces joined by veth pairs to a bridge in the root
namespace, and a Postgres server of their own listening on the bridge's address.

    10.231.N.1  bridge in the root namespace: Postgres, the Claude simulator, the test itself
    10.231.N.11, .12, ...  one namespace ("host") each, its veth's root end on the bridge

Only these addresses are used: traffic stays between the test's namespaces and the root end of
its veths. ``cut(host)`` takes the host's link down, as a pulled cable or a dead switch port
would: its packets go nowhere and nothing tells either side. Everything is removed on exit,
also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why this machine cannot make test hosts (a reason outside the project), or None."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"rqprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


class HostNet:
    """A bridge, and hosts made on demand with ``add_host``. Use as a context manager."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.subnet = 20 + os.getpid() % 200
        self.gateway = f"10.231.{self.subnet}.1"
        self.bridge = f"rqbr{tag}"
        self.tag = tag
        self.hosts: dict[str, str] = {}  # namespace -> address
        self._links: dict[str, str] = {}  # namespace -> root end of its veth
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> HostNet:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_host(self) -> str:
        i = len(self.hosts) + 1
        ns, root_end = f"rq{self.tag}h{i}", f"rqv{self.tag}h{i}"
        address = f"10.231.{self.subnet}.{10 + i}"
        _ip("netns", "add", ns)
        self.hosts[ns] = address
        _ip("link", "add", root_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._links[ns] = root_end
        _ip("link", "set", root_end, "master", self.bridge)
        _ip("link", "set", root_end, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def cut(self, ns: str) -> None:
        """The host loses the network: its link goes down, without a word to anyone."""
        _ip("link", "set", self._links[ns], "down")

    def restore(self, ns: str) -> None:
        _ip("link", "set", self._links[ns], "up")

    def spawn(self, ns: str, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        """A process on host ``ns``, in its own process group, output to ``log``."""
        out = open(log, "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], env=env, stdout=out, stderr=out, start_new_session=True, cwd=ROOT
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        for ns in list(self.hosts):
            _ip("netns", "delete", ns, check=False)  # takes its veth pair with it
        for link in self._links.values():
            _ip("link", "delete", link, check=False)
        _ip("link", "delete", self.bridge, check=False)
        self.hosts.clear()


class DedicatedPostgres:
    """A Postgres server for the test hosts, listening on the bridge's address only.

    pgserver's bundled binaries (a dependency), run as a system user of their own as pgserver
    itself does when started by root (Postgres refuses to run as root)."""

    def __init__(self, listen: str, port: int = 55432):
        from pgserver._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.listen, self.port = listen, port
        self.dir = Path(tempfile.mkdtemp(prefix="roastq-netns-pg-"))
        self.user = None

    def __enter__(self) -> DedicatedPostgres:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def _start(self) -> None:
        data = self.dir / "data"
        if os.geteuid() == 0:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists("pgserver")
            self.user = entry.pw_name
            self.dir.chmod(0o755)
            shutil.chown(self.dir, entry.pw_uid, entry.pw_gid)
            ensure_prefix_permissions(self.bin / "postgres")  # the user must reach the binaries
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.listen.rsplit('.', 1)[0]}.0/24 trust\n")
        options = (
            f"-c listen_addresses={self.listen} -p {self.port} -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o", options, "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.listen}:{self.port}/{database}"

    def close(self) -> None:
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def roastq(env: dict, *args: str) -> str:
    """Run the roastq CLI (in the root namespace) against the test hosts' database."""
    done = subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if done.returncode != 0:
        raise AssertionError(f"roastq {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def wait(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
