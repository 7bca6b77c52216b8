"""haproxy/: the rendered config, checked by `haproxy -c` and run for real in front of three
`cloudpacs serve` nodes (one FerretDB, one database): load, a node killed, a rolling restart
and a reload, with ApacheBench counting what the clients saw.

The binaries come from Debian packages `make test` installs (haproxy, apache2-utils, openssl).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from tests.conftest import FerretServer, free_port
from tests.deploy.harness import RENDER, Ab, AppNode, Balancer, http_get, http_request, wait_until

CONCURRENCY = 16  # ab clients; also the most requests that can be in flight at any moment
# Test timings (render options): a dead node misses 2 checks 500 ms apart.
LEAVE_ROTATION_MAX_SECONDS = 3.0


def render(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RENDER), *args], capture_output=True, text=True, timeout=30, check=check
    )


def haproxy_check(config: Path) -> str:
    """`haproxy -c -f`; asserts it passes without warnings; its output."""
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "[WARNING]" not in output and "[ALERT]" not in output, output
    return output


def backend_counters(balancer: Balancer) -> tuple[int, int]:
    """The backend's (retries, redispatches) so far."""
    row = balancer.rows()["BACKEND"]
    return int(row["wretr"] or 0), int(row["wredis"] or 0)


@pytest.fixture(scope="module", autouse=True)
def binaries() -> None:
    missing = [b for b in ("haproxy", "ab", "openssl") if shutil.which(b) is None]
    assert not missing, f"missing {missing}: run `make system-deps` (Debian packages)"


@pytest.fixture(scope="module")
def nodes(
    ferretdb: FerretServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[AppNode]]:
    database = f"t_deploy_{uuid.uuid4().hex[:10]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLOUDPACS_")},
        "CLOUDPACS_MONGO_URI": ferretdb.uri,
        "CLOUDPACS_DATABASE": database,
        "CLOUDPACS_DRAIN_SECONDS": "3",
        "CLOUDPACS_LOG_LEVEL": "WARNING",
    }
    env.pop("NOTIFY_SOCKET", None)
    root = tmp_path_factory.mktemp("nodes")
    app_nodes = [AppNode(free_port(), root / f"node{i}", env) for i in range(3)]
    try:
        for node in app_nodes:
            node.start()
        for node in app_nodes:
            node.wait_ready()
        yield app_nodes
    finally:
        for node in app_nodes:
            if node.process is not None:
                node.stop()
        client: MongoClient[Any] = MongoClient(ferretdb.uri)
        client.drop_database(database)
        client.close()


@pytest.fixture(scope="module")
def balancer(nodes: list[AppNode], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    lb = Balancer(free_port(), free_port(), tmp_path_factory.mktemp("haproxy"))
    try:
        lb.start(lb.render([n.address for n in nodes]))
        for node in nodes:
            lb.wait_status(node.address, "UP")
        yield lb
    finally:
        lb.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1, key appended (the PEM HAProxy wants)."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    command += " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    bundle = folder / "cloudpacs.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    return bundle


# --- render-config.sh, no processes -----------------------------------------------------


def test_render_help_and_bad_input() -> None:
    assert render("--help", check=True).stdout.startswith("Usage: render-config.sh")
    for args, message in [
        ((), "no app nodes"),
        (("10.0.0.1",), "not HOST:PORT"),
        (("10.0.0.1:0",), "not HOST:PORT"),
        (("10.0.0.1:8080", "10.0.0.1:8080"), "listed twice"),
        (("--check-inter", "soon", "10.0.0.1:8080"), "--check-inter"),
        (("--cert", "/a b.pem", "10.0.0.1:8080"), "--cert"),
        (("--bogus", "10.0.0.1:8080"), "unknown option"),
        (("10.0.0.1:8080", "--bind"), "--bind needs a value"),
    ]:
        result = render("--no-check", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_render_nodes_file_output_and_dry_run(tmp_path: Path) -> None:
    nodes_file = tmp_path / "nodes"
    nodes_file.write_text("# app nodes\n10.0.1.11:8080\n\n  10.0.1.12:8080  # rack 2\n")
    output = tmp_path / "haproxy.cfg"
    render("--nodes-file", str(nodes_file), "--output", str(output), check=True)
    servers = [line.split() for line in output.read_text().splitlines() if "    server " in line]
    assert servers == [
        ["server", "10.0.1.11:8080", "10.0.1.11:8080"],
        ["server", "10.0.1.12:8080", "10.0.1.12:8080"],
    ]
    before = output.read_bytes()
    dry = render("--dry-run", "--output", str(output), "10.0.1.11:8080", check=True)
    assert output.read_bytes() == before  # nothing written
    assert "-    server 10.0.1.12:8080 10.0.1.12:8080" in dry.stdout  # the diff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "nodes"]  # no temp left


def test_production_config_is_valid_and_complete(tmp_path: Path, certificate: Path) -> None:
    """The production shape (privileges dropped, TLS, syslog, default timings)."""
    output = tmp_path / "haproxy.cfg"
    render("--cert", str(certificate), "--output", str(output), "10.0.1.11:8080", check=True)
    haproxy_check(output)
    config = output.read_text()
    lines = {
        " ".join(line.split()) for line in config.splitlines() if not line.lstrip().startswith("#")
    }
    for required in [
        "chroot /var/lib/haproxy",
        "user haproxy",
        f"bind *:443 ssl crt {certificate} alpn h2,http/1.1",
        "balance leastconn",
        "option httpchk",
        "http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host cloudpacs-check",
        "http-check expect status 200",
        "default-server check inter 1s fastinter 1s downinter 1s fall 2 rise 2 maxconn 200",
        "retries 3",
        "option redispatch 1",
        "retry-on conn-failure empty-response response-timeout",
        "http-request disable-l7-retry unless METH_GET || METH_OPTIONS",
        "option forwardfor",
        "http-reuse safe",
        "maxconn 20000",
        "maxconn 10000",
        "timeout http-request 10s",
        "timeout client 5m",
        "timeout server 10m",
        "timeout connect 3s",
        "timeout queue 30s",
        "log /dev/log local0 info",
        "option httplog",
        "http-request use-service prometheus-exporter if { path /metrics }",
        "bind 127.0.0.1:8404",
    ]:
        assert required in lines, required
    assert "option http-buffer-request" not in lines


# --- the real thing ----------------------------------------------------------------------


def test_test_config_passes_haproxy_check(balancer: Balancer) -> None:
    haproxy_check(balancer.workdir / f"haproxy-{balancer.generation}.cfg")


def test_requests_reach_every_node(balancer: Balancer, nodes: list[AppNode]) -> None:
    before = {name: int(row["stot"]) for name, row in balancer.servers().items()}
    for _ in range(30):
        assert http_get(balancer.port, "/dicomweb/studies")[0] in (200, 204)
    after = {name: int(row["stot"]) for name, row in balancer.servers().items()}
    served = {name: after[name] - before[name] for name in after}
    assert set(served) == {n.address for n in nodes}
    assert all(count >= 5 for count in served.values()), served  # leastconn rotates on ties
    assert sum(served.values()) == 30


def test_ab_through_haproxy_has_no_failures(balancer: Balancer) -> None:
    result = Ab(f"http://127.0.0.1:{balancer.port}/healthz", 2000, CONCURRENCY).finish()
    print(f"\nab -n 2000 -c {CONCURRENCY} /healthz: {result.requests_per_second:.0f} req/s")
    assert result.complete == 2000, result.output
    assert result.failures == 0, result.output


def test_prometheus_exporter_on_stats_address(balancer: Balancer, nodes: list[AppNode]) -> None:
    status, body = http_get(balancer.stats_port, "/metrics")
    assert status == 200
    samples = {
        (s.name, s.labels.get("proxy"), s.labels.get("server"), s.labels.get("state")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("haproxy_backend_active_servers", "cloudpacs", None, None)] == 3
    for node in nodes:
        assert samples[("haproxy_server_status", "cloudpacs", node.address, "UP")] == 1
    # ...and only there: the public frontend refuses /metrics
    assert http_get(balancer.port, "/metrics")[0] == 404


def test_tls_termination(nodes: list[AppNode], certificate: Path, tmp_path: Path) -> None:
    lb = Balancer(free_port(), free_port(), tmp_path)
    try:
        lb.start(lb.render([nodes[0].address], "--cert", str(certificate)))
        lb.wait_status(nodes[0].address, "UP")
        context = ssl.create_default_context(cafile=str(certificate))
        conn = http.client.HTTPSConnection("127.0.0.1", lb.port, timeout=5, context=context)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b'{"status": "ok"}'
        assert response.getheader("Strict-Transport-Security") == "max-age=31536000"
        conn.close()
    finally:
        lb.stop()


class EchoHandler(BaseHTTPRequestHandler):
    """A stand-in node: /readyz is 200, /echo answers the request headers (name: values) as
    JSON, /drop counts the request and closes the connection without answering."""

    protocol_version = "HTTP/1.1"
    drops: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        if self.path == "/drop":
            self.drops[self.command] += 1
            self.close_connection = True
            return
        headers = {k.lower(): self.headers.get_all(k) for k in self.headers}
        body = json.dumps(headers).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # HAProxy resets its checks
            super().handle_error(request, client_address)


@pytest.fixture
def echo_node() -> Iterator[str]:
    server = EchoServer(("127.0.0.1", free_port()), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    EchoHandler.drops.clear()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_forwarded_headers_and_retries_only_idempotent(echo_node: str, tmp_path: Path) -> None:
    lb = Balancer(free_port(), free_port(), tmp_path)
    try:
        lb.start(lb.render([echo_node]))
        lb.wait_status(echo_node, "UP")
        status, body = http_request(lb.port, "GET", "/echo", {"X-Forwarded-For": "6.6.6.6"})
        assert status == 200
        seen = json.loads(body)
        assert seen["x-forwarded-for"] == ["127.0.0.1"]  # the client's lie is gone
        assert seen["x-forwarded-proto"] == ["http"]
        # the node dies before answering: a GET is retried (retries 3), a POST never
        assert http_request(lb.port, "GET", "/drop")[0] == 502
        assert http_request(lb.port, "POST", "/drop", body=b"0123456789")[0] == 502
        assert EchoHandler.drops == {"GET": 4, "POST": 1}
    finally:
        lb.stop()


def test_killed_node_leaves_rotation_and_comes_back(
    balancer: Balancer, nodes: list[AppNode]
) -> None:
    victim = nodes[1]
    retries_before = backend_counters(balancer)
    ab = Ab(f"http://127.0.0.1:{balancer.port}/healthz", 200_000, CONCURRENCY, nice=10)
    time.sleep(0.7)
    assert ab.running()
    victim.stop(signal.SIGKILL)
    left = balancer.wait_status(victim.address, "DOWN")
    time.sleep(0.5)
    assert ab.running()
    result = ab.finish(interrupt=True)
    print(
        f"\nSIGKILL during ab: {result.failures} failed of {result.complete}, "
        f"node DOWN in HAProxy after {left:.2f} s; HAProxy retries/redispatches: "
        f"{[a - b for a, b in zip(backend_counters(balancer), retries_before, strict=True)]}"
    )
    assert result.failures <= CONCURRENCY, result.output
    assert left <= LEAVE_ROTATION_MAX_SECONDS

    victim.start()
    victim.wait_ready()
    back = balancer.wait_status(victim.address, "UP")
    print(f"restarted node UP again {back:.2f} s after it was ready")
    assert all(status == "UP" for status in (s["status"] for s in balancer.servers().values()))


def test_rolling_restart_under_load(balancer: Balancer, nodes: list[AppNode]) -> None:
    ab = Ab(f"http://127.0.0.1:{balancer.port}/healthz", 500_000, CONCURRENCY, seconds=90, nice=10)
    time.sleep(0.5)
    steps = []
    for node in nodes:
        start = time.monotonic()
        assert node.stop() == 0, node.log_tail()  # SIGTERM: drains and exits cleanly
        stopped = time.monotonic() - start
        balancer.wait_status(node.address, "DOWN")
        node.start()
        node.wait_ready()
        ready = time.monotonic() - start
        balancer.wait_status(node.address, "UP")
        steps.append(
            f"stop {stopped:.1f} s, ready {ready:.1f} s, UP {time.monotonic() - start:.1f} s"
        )
        assert ab.running(), "ab ended before the rolling restart did"
    result = ab.finish(interrupt=True)
    print(f"\nrolling restart during ab: {result.failures} failed of {result.complete}; {steps}")
    assert result.failures <= CONCURRENCY, result.output


def test_reload_with_new_node_list(balancer: Balancer, nodes: list[AppNode]) -> None:
    ab = Ab(f"http://127.0.0.1:{balancer.port}/healthz", 200_000, CONCURRENCY, nice=10)
    time.sleep(0.5)
    old = balancer.process
    assert old is not None
    kept = {n.address for n in nodes[:2]}
    balancer.start(balancer.render(sorted(kept)))
    old.wait(timeout=15)  # the soft-stopped process finished its connections and left
    wait_until(lambda: set(balancer.servers()) == kept, 10, "the new server list")
    for address in kept:
        balancer.wait_status(address, "UP")
    time.sleep(0.5)
    assert ab.running()
    result = ab.finish(interrupt=True)
    print(f"\nreload during ab: {result.failures} failed of {result.complete}")
    assert result.failures == 0, result.output
