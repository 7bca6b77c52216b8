"""Orthanc + its DICOMweb plugin (Debian packages `orthanc`, `orthanc-dicomweb`) on a free
loopback port, with its own configuration and storage folder, stopped by PID.

Used by perf/bench_core.py (--with-orthanc) and by the tests of `cloudpacs migrate`
(tests/test_migrate.py), which put perf/ on sys.path as tests/deploy does with deploy/.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchlib import Server, free_port, spawn

PACKAGES = ("orthanc", "orthanc-dicomweb")
DICOMWEB_ROOT = "/dicom-web"


def orthanc_plugin() -> str:
    """Path of the DICOMweb plugin's shared library, as the Debian package installed it."""
    listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        if line.endswith(".so") and "DicomWeb" in line:
            return line
    raise RuntimeError(
        "orthanc-dicomweb is not installed: scripts/install-system-deps.sh orthanc orthanc-dicomweb"
    )


def start_orthanc(
    work: Path, users: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None
) -> Server:
    """Orthanc on a free port: HTTP only, no DICOM port, loopback clients only; HTTP basic
    authentication only if `users` (name -> password) are given. `extra` overrides settings."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "Name": "cloudpacs-perf",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "HttpThreadsCount": 128,  # default 50: enough for the 64-client QIDO level
        "StorageCompression": False,
        "SaveJobs": False,
        "Plugins": [orthanc_plugin()],
        "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/"},
        **(extra or {}),
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    server = spawn("orthanc", ["Orthanc", str(path)], port, work / "orthanc.log")
    try:
        wait_ready(server, basic_auth(*next(iter(users.items()))) if users else None)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server, auth: str | None, timeout: float = 60) -> None:
    """Until `GET /system` answers 200 (Orthanc loads its plugins before it listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {server.proc.returncode}: see {server.log}")
        with contextlib.suppress(OSError):
            orthanc_get(server, "/system", auth, timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc not ready after {timeout}s: see {server.log}")


def basic_auth(user: str, password: str) -> str:
    """The `Authorization` header value of HTTP basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def orthanc_get(server: Server, path: str, auth: str | None = None, timeout: float = 60) -> bytes:
    """GET a path of Orthanc's own REST API."""
    request = urllib.request.Request(f"{server.base}{path}")
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body: bytes = answer.read()
    return body


def orthanc_post_file(server: Server, data: bytes, auth: str | None = None) -> dict[str, Any]:
    """Store one DICOM file through Orthanc's REST API (`POST /instances`)."""
    request = urllib.request.Request(f"{server.base}/instances", data=data, method="POST")
    request.add_header("Content-Type", "application/dicom")
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=60) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def orthanc_versions(server: Server, auth: str | None = None) -> dict[str, str]:
    system = json.loads(orthanc_get(server, "/system", auth))
    plugin = json.loads(orthanc_get(server, "/plugins/dicom-web", auth))
    return {"orthanc": system.get("Version", "?"), "dicomweb_plugin": plugin.get("Version", "?")}
