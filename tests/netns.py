"""Separate hosts on imperfect links, on one machine: network namespaces, veth pairs, iptables.

A database host (its own namespace, a throw-away PostgreSQL cluster on ``TEST_PG_FAULT_PORT``
listening on every address there) and N worker hosts, each a namespace of its own joined to the
database host by one veth pair (``10.77.<i>.2`` on the worker's side, ``10.77.<i>.1`` on the
database's). Nothing is added to the machine's own network namespace: no interface, no route,
no firewall rule; the test process reads the study over the cluster's Unix socket (in a
directory of its own, so the port is taken nowhere outside the namespace).

Links are cut in the database host's namespace with iptables DROP rules on that host's veth (a
partition, or a blackhole when nobody lifts it: packets vanish, nobody answers with an RST), and
slowed down by :mod:`netproxy` (the kernel has no ``netem``), which runs in the database host
and counts PostgreSQL round trips per worker host.

The ``network`` fixture removes every process, rule, namespace (and with it its veths) and the
cluster it made, whether the tests passed or not. Every name has ``nw`` and a random suffix.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import json
import os
from pathlib import Path
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

from helpers import BIN
from pgcluster import PORT, VERSION
import pytest

PROXY_PORT = 6543  # inside the database host's namespace only: clashes with nothing


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60)


@dataclasses.dataclass
class Host:
    """A worker machine: a namespace and its link to the database host."""

    index: int
    ns: str
    veth_db: str  # the link's end in the database host's namespace (where it is cut)

    @property
    def db_address(self) -> str:
        """The database host as this worker host sees it."""
        return f"10.77.{self.index}.1"


class HostWorker:
    """A real ``worker run`` process on a worker host; its lines are kept with their arrival time."""

    def __init__(self, net: Network, host: Host, url: str, npz: Path, *extra: str) -> None:
        self.host = host
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.ns,
                str(BIN / "worker"),
                "run",
                "--study",
                "s",
                "--data",
                str(npz),
                "--quiet",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TUNER_STORAGE": url},
        )  # `ip netns exec` execs the command: this pid is the worker's
        net.processes.append(self.proc)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, needle: str, after: float = 0.0) -> float | None:
        """When the first line containing ``needle`` (arriving after ``after``) came, else ``None``."""
        return next((t for t, line in list(self.lines) if t >= after and needle in line), None)

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


class Network:
    """The database host, the worker hosts, and what cuts and slows their links."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"nw{secrets.token_hex(2)}"
        self.db_ns = f"{self.tag}db"
        self.cluster = f"tuner_network_{PORT}"
        self.hosts = [Host(i, f"{self.tag}h{i}", f"{self.tag}d{i}") for i in range(1, hosts + 1)]
        self.namespaces: list[str] = []
        self.rules: list[tuple[str, ...]] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.proxy_stats: Path | None = None
        self.socket_dir = Path(f"/tmp/{self.tag}-pg")

    # -- building and removing --------------------------------------------------------------

    def build(self) -> None:
        for ns in (self.db_ns, *(h.ns for h in self.hosts)):
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for host in self.hosts:
            # Both ends are made inside their namespaces: the veth never exists in the machine's own.
            _run(
                "ip",
                "link",
                "add",
                host.ns,
                "netns",
                host.ns,
                "type",
                "veth",
                "peer",
                "name",
                host.veth_db,
                "netns",
                self.db_ns,
            )
            _run("ip", "-n", host.ns, "addr", "add", f"10.77.{host.index}.2/24", "dev", host.ns)
            _run("ip", "-n", self.db_ns, "addr", "add", f"{host.db_address}/24", "dev", host.veth_db)
            _run("ip", "-n", host.ns, "link", "set", host.ns, "up")
            _run("ip", "-n", self.db_ns, "link", "set", host.veth_db, "up")
        _run("pg_dropcluster", "--stop", VERSION, self.cluster, check=False)  # an interrupted run's
        # Its Unix socket in a directory of its own: the port is only taken inside the namespace.
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(self.socket_dir, "postgres")
        _run(
            "pg_createcluster",
            VERSION,
            self.cluster,
            "--port",
            str(PORT),
            "-o",
            f"unix_socket_directories={self.socket_dir}",
            "-o",
            "listen_addresses=*",
            "-o",
            "fsync=off",
            "-o",
            "synchronous_commit=off",
            "-o",
            "full_page_writes=off",
            "-o",
            "max_connections=100",
        )
        Path(f"/etc/postgresql/{VERSION}/{self.cluster}/pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all 10.77.0.0/16 trust\n"
        )
        _run("ip", "netns", "exec", self.db_ns, "pg_ctlcluster", VERSION, self.cluster, "start")

    def remove(self) -> None:
        """Undo everything, each step on its own so one failure does not leave the rest behind."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        self.heal()
        _run("pg_dropcluster", "--stop", VERSION, self.cluster, check=False)
        for host in self.hosts:
            _run("ip", "-n", self.db_ns, "link", "del", host.veth_db, check=False)  # takes its peer
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- the database ------------------------------------------------------------------------

    def new_database(self) -> str:
        """A fresh database; returns its name."""
        name = f"nw_{uuid.uuid4().hex[:10]}"
        _run("psql", "-h", str(self.socket_dir), "-p", str(PORT), "-U", "postgres", "-c", f'CREATE DATABASE "{name}"')
        return name

    def local_url(self, database: str) -> str:
        """The test's own view of the study: the cluster's Unix socket, outside every namespace."""
        return f"postgresql+psycopg2://postgres@/{database}?host={self.socket_dir}&port={PORT}"

    def url(self, host: Host, database: str, *, proxied: bool = False) -> str:
        """What ``host``'s workers use: the database host's address, directly or through the proxy."""
        port = PROXY_PORT if proxied else PORT
        return f"postgresql+psycopg2://postgres@{host.db_address}:{port}/{database}"

    # -- links --------------------------------------------------------------------------------

    def cut(self, *hosts: Host) -> None:
        """Drop every packet between ``hosts`` and the database host, both ways (no RST, no ICMP)."""
        for host in hosts:
            for rule in (("INPUT", "-i", host.veth_db), ("OUTPUT", "-o", host.veth_db)):
                _run("ip", "netns", "exec", self.db_ns, "iptables", "-I", rule[0], *rule[1:], "-j", "DROP")
                self.rules.append(rule)

    def heal(self) -> None:
        """Remove every rule :meth:`cut` added."""
        while self.rules:
            rule = self.rules.pop()
            _run("ip", "netns", "exec", self.db_ns, "iptables", "-D", rule[0], *rule[1:], "-j", "DROP", check=False)

    def start_proxy(self, rtt_ms: float, stats: Path) -> None:
        """Put a proxy with ``rtt_ms`` round-trip delay in front of the database (see :meth:`url`)."""
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.db_ns,
                sys.executable,
                str(Path(__file__).with_name("netproxy.py")),
                "--listen",
                f"0.0.0.0:{PROXY_PORT}",
                "--upstream",
                f"127.0.0.1:{PORT}",
                "--delay-ms",
                str(rtt_ms / 2),
                "--stats",
                str(stats),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        self.proxy_stats = stats

    def stop_proxy(self) -> dict[str, dict[str, int]]:
        """Stop the proxy; its final counts per worker host address."""
        proxies = [p for p in self.processes if "netproxy.py" in " ".join(map(str, p.args))]
        for proc in proxies:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert self.proxy_stats is not None
        return json.loads(self.proxy_stats.read_text()) if self.proxy_stats.exists() else {}

    def worker(self, host: Host, database: str, npz: Path, *extra: str, proxied: bool = False) -> HostWorker:
        return HostWorker(self, host, self.url(host, database, proxied=proxied), npz, *extra)


def usable() -> str | None:
    """Why the harness cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables", "pg_createcluster", "psql"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """Three worker hosts and a database host; everything removed afterwards, pass or fail."""
    reason = usable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the network tests: {reason}")
    if reason:
        pytest.skip(reason)
    net = Network(hosts=3)
    try:
        net.build()
        yield net
    finally:
        net.remove()


@pytest.fixture
def net(network: Network) -> Iterator[Network]:
    """The module's network, with every link whole again and no worker left after each test."""
    try:
        yield network
    finally:
        for proc in network.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        network.processes.clear()
        network.heal()
