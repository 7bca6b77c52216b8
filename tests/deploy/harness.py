"""Real processes for the deployment tests: cloudpacs app nodes, HAProxy, ApacheBench.

Every process listens on a free loopback port and is stopped by its PID.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "haproxy" / "render-config.sh"
CLOUDPACS = str(Path(sys.executable).parent / "cloudpacs")


def http_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:PORT (http.client: no proxy from the environment)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return http_request(port, "GET", path, timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll every 50 ms; the seconds it took, or AssertionError after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal by PID, wait (SIGKILL after 15 s); the exit code."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@dataclass
class AppNode:
    """One `cloudpacs serve` process on a fixed loopback port (restartable on that port)."""

    port: int
    home: Path
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "node.log").open("ab") as log:
            self.process = subprocess.Popen(
                [CLOUDPACS, "serve", "--http", self.address, "--home", str(self.home)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        try:
            return http_get(self.port, "/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(self.ready, timeout, f"node {self.address} ready")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        code = stop_process(self.process, sig)
        self.process = None
        return code

    def log_tail(self) -> str:
        path = self.home / "node.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class Balancer:
    """HAProxy in foreground mode (-db) on a rendered config."""

    port: int
    stats_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    old: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.workdir / "admin.sock"

    def render(self, nodes: list[str], *extra: str) -> Path:
        """Render the config for `nodes` with short test timings; its path."""
        self.generation += 1
        config = self.workdir / f"haproxy-{self.generation}.cfg"
        subprocess.run(
            [
                str(RENDER),
                *("--bind", f"127.0.0.1:{self.port}", "--stats", f"127.0.0.1:{self.stats_port}"),
                *("--admin-socket", str(self.socket), "--log", "stdout", "--unprivileged"),
                *("--check-inter", "500ms", "--check-fall", "2", "--check-rise", "2"),
                *("--check-timeout", "1s", "--maxconn", "2000", "--frontend-maxconn", "1000"),
                *("--output", str(config), *extra),
                *nodes,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return config

    def start(self, config: Path) -> None:
        """Start HAProxy on `config`; when one runs already, a seamless reload: the new process
        takes the listening sockets over the admin socket (-x) and soft-stops the old (-sf)."""
        command = ["haproxy", "-db", "-f", str(config)]
        if self.process is not None:
            command += ["-x", str(self.socket), "-sf", str(self.process.pid)]
            self.old.append(self.process)
        with (self.workdir / "haproxy.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._listening, 10, "HAProxy listening")

    def _listening(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        try:
            return http_get(self.stats_port, "/stats;csv", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        for process in [*self.old, *([self.process] if self.process else [])]:
            stop_process(process)
        self.process = None

    def rows(self) -> dict[str, dict[str, str]]:
        """The backend's rows of the stats CSV by svname: its servers, and BACKEND."""
        status, body = http_get(self.stats_port, "/stats;csv", timeout=2)
        assert status == 200
        rows = csv.DictReader(io.StringIO(body.decode().removeprefix("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "cloudpacs"}

    def servers(self) -> dict[str, dict[str, str]]:
        return {name: row for name, row in self.rows().items() if name != "BACKEND"}

    def status(self, server: str) -> str:
        return self.servers()[server]["status"]

    def wait_status(self, server: str, prefix: str, timeout: float = 10) -> float:
        """Seconds until the server's status starts with `prefix` ("UP" is exactly UP)."""

        def reached() -> bool:
            status = self.status(server)
            return status == "UP" if prefix == "UP" else status.startswith(prefix)

        return wait_until(reached, timeout, f"{server} {prefix}")

    def log_tail(self) -> str:
        path = self.workdir / "haproxy.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@dataclass(frozen=True)
class AbResult:
    complete: int
    failed: int
    non_2xx: int
    requests_per_second: float
    output: str

    @property
    def failures(self) -> int:
        return self.failed + self.non_2xx


class Ab:
    """ApacheBench in the background: bounded by a request count and a time limit."""

    def __init__(
        self, url: str, requests: int, concurrency: int, seconds: int = 30, nice: int = 0
    ) -> None:
        # nice: a background load yields the CPU to what the test is doing meanwhile (starting
        # nodes) and to other work on the machine; it then sends fewer requests per second.
        # -r: count socket errors instead of aborting; -s: per-request timeout
        command = ["nice", "-n", str(nice), "ab", "-q", "-r", "-s", "10", "-t", str(seconds)]
        command += ["-n", str(requests), "-c", str(concurrency), url]  # -n after -t wins
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, interrupt: bool = False, timeout: float = 60) -> AbResult:
        """Wait for the end (or SIGINT now: ab then reports what it has done)."""
        if interrupt and self.running():
            os.kill(self.process.pid, signal.SIGINT)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.communicate()
            raise
        return parse_ab(out.decode() + err.decode())


def parse_ab(text: str) -> AbResult:
    def number(label: str, default: str | None = None) -> str:
        match = re.search(rf"^{label}:\s+([\d.]+)", text, re.MULTILINE)
        if match is None and default is None:
            raise AssertionError(f"no {label!r} in ab output:\n{text}")
        return match.group(1) if match else str(default)

    return AbResult(
        complete=int(number("Complete requests")),
        failed=int(number("Failed requests")),
        non_2xx=int(number("Non-2xx responses", "0")),
        requests_per_second=float(number("Requests per second")),
        output=text,
    )
