"""`cloudpacs ingest` exposes /metrics and /healthz (and nothing else) on metrics_port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.conftest import FerretServer, free_port

CLOUDPACS = str(Path(sys.executable).parent / "cloudpacs")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_ingest_daemon_metrics_listener(ferretdb: FerretServer, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CLOUDPACS_MONGO_URI": ferretdb.uri,
        "CLOUDPACS_DATABASE": f"l_{uuid.uuid4().hex[:8]}",
        "CLOUDPACS_METRICS_PORT": str(port),
    }
    with (tmp_path / "log").open("w") as log:
        process = subprocess.Popen(
            [CLOUDPACS, "ingest", "--home", str(tmp_path / "home")], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        status, body = 0, ""
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and "cloudpacs_ingests_in_flight" in body
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/dicomweb/studies")[0] == 404
    finally:
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(30) == 0
