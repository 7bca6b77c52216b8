"""Real servers for the tests: a FerretDB started here on a free loopback port, stopped by PID.

Each test gets its own database name, so tests never see each other's data.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloudpacs.config import Settings
from cloudpacs.embedded import add_id_lookup_indexes
from cloudpacs.http.app import create_app
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.storage.database import open_database
from cloudpacs.storage.file_stores import open_file_store
from cloudpacs.storage.schema import init_schema

REPO = Path(__file__).resolve().parent.parent
FERRETDB_BINARY = REPO / ".tools" / "bin" / "ferretdb"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FerretServer:
    """A FerretDB process the tests control (stop/start keep the same port and data)."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        assert FERRETDB_BINARY.exists(), "run `make ferretdb` first"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "ferretdb.log").open("ab") as log:
            self.process = self._spawn(log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("FerretDB did not start")

    def _spawn(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                str(FERRETDB_BINARY),
                f"--listen-addr=127.0.0.1:{self.port}",
                f"--sqlite-url=file:{self.data_dir}/",
                "--log-level=error",
            ],
            stdout=log,
            stderr=log,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretServer]:
    server = FerretServer(tmp_path_factory.mktemp("ferretdb"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def file_store_kind() -> str:
    """The settings' file_store: a module runs against both stores by parametrizing this
    (`pytestmark = BOTH_FILE_STORES`)."""
    return "auto"


BOTH_FILE_STORES = pytest.mark.parametrize("file_store_kind", ["gridfs", "directory"])


@pytest.fixture
def settings(tmp_path: Path, ferretdb: FerretServer, file_store_kind: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        mongo_uri=ferretdb.uri,
        file_store=file_store_kind,
        database=f"t_{uuid.uuid4().hex[:12]}",
        file_settle_seconds=0.3,
        drain_seconds=5,
        orphan_grace_seconds=0,
    )


@pytest.fixture
async def runtime(settings: Settings, ferretdb: FerretServer) -> AsyncIterator[Runtime]:
    assert settings.mongo_uri is not None
    database = open_database(settings.mongo_uri, settings.database)
    notes = await init_schema(database)
    add_id_lookup_indexes(ferretdb.data_dir, settings.database)
    files = await open_file_store(database, settings)
    runtime = build_runtime(settings, database, Metrics(), notes, files=files)
    yield runtime
    await runtime.parser.close()
    await database.client.drop_database(settings.database)
    await database.close()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_app(runtime.services()), host="127.0.0.1")) as c:
        yield c


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server (S3 + SQS over HTTP) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
