"""The embedded default database: a supervised FerretDB (SQLite) on a loopback port.

Started when no MongoDB URI is configured; restarted if it dies; stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

from cloudpacs.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
RESTART_DELAY_SECONDS = 1.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedFerretDB:
    def __init__(self, binary: Path, data_dir: Path, port: int | None = None) -> None:
        if not binary.exists():
            raise ConfigError(
                f"FerretDB binary not found at {binary}; run `make ferretdb` "
                "or set CLOUDPACS_MONGO_URI to use an existing server"
            )
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        log_file = (self.data_dir / "ferretdb.log").open("ab")
        self._process = await asyncio.create_subprocess_exec(
            str(self.binary),
            f"--listen-addr=127.0.0.1:{self.port}",
            f"--sqlite-url=file:{self.data_dir.resolve()}/",
            "--log-level=warn",
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # our Ctrl-C must not kill it before we drain
        )
        log_file.close()
        await self._wait_listening()
        log.info("ferretdb.started", extra={"pid": self._process.pid, "port": self.port})

    async def _wait_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        while loop.time() < deadline:
            assert self._process is not None
            if self._process.returncode is not None:
                code = self._process.returncode
                raise Unavailable(f"FerretDB exited with {code}; see {self.data_dir}/ferretdb.log")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.05)
        raise Unavailable(
            f"FerretDB did not listen on port {self.port} within {START_TIMEOUT_SECONDS}s"
        )

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("ferretdb.exited", extra={"returncode": code})
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            try:
                await self._spawn()
            except Unavailable:
                log.exception("ferretdb.restart_failed")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("ferretdb.stopped", extra={"pid": process.pid})


@contextlib.asynccontextmanager
async def embedded_ferretdb(binary: Path, data_dir: Path) -> AsyncIterator[EmbeddedFerretDB]:
    server = EmbeddedFerretDB(binary, data_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def add_id_lookup_indexes(data_dir: Path, database: str) -> int:
    """Make FerretDB's `_id` lookups use an index. Blocking: run it in a worker thread.

    FerretDB v1.24 (SQLite) indexes `_id` as `_ferretdb_sjson->"_id"` but queries it as
    `_ferretdb_sjson->'$._id' = ?`; SQLite only uses an expression index for the very same
    expression, so every `_id` lookup scans the whole table (measured: 116 ms per lookup at
    1,700 instances). An index on the queried expression fixes that; FerretDB ignores it
    and drops it with its table. Returns the number of indexes created."""
    path = data_dir / f"{database}.sqlite"
    if not path.exists():
        return 0
    created = 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        tables = [row[0] for row in conn.execute("SELECT table_name FROM _ferretdb_collections")]
        existing = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        for table in tables:
            name = f"{table}_cloudpacs_id_lookup"
            if name not in existing:
                expression = "_ferretdb_sjson->'$._id'"
                conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({expression})')
                created += 1
        conn.commit()
    return created
