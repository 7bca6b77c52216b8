"""Untrusted DICOM parsed in worker processes, so a pathological file cannot hang or exhaust
the service: each parse has a time limit and each worker an address-space cap (RLIMIT_AS).

A worker that times out is killed, one that dies is replaced (pebble's ProcessPool does
both); the file is rejected with InvalidDicom and a reason saying which limit it hit. The
worker gets the file's path, never its bytes, and sends back the ParsedInstance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pebble import ProcessExpired, ProcessPool

from cloudpacs.config import Settings
from cloudpacs.dicom.parse import ParsedInstance, parse_file
from cloudpacs.errors import InvalidDicom, Unavailable

log = logging.getLogger(__name__)

ParseFunction = Callable[[Path, "int | None"], ParsedInstance]
MIB = 1024 * 1024


class Parser(Protocol):
    async def start(self) -> None: ...

    async def parse(self, path: Path) -> ParsedInstance: ...

    async def close(self) -> None: ...


class ThreadParser:
    """In-process parsing on a worker thread: no isolation (parse_workers = 0)."""

    def __init__(self, max_bytes: int | None = None, target: ParseFunction = parse_file) -> None:
        self.max_bytes = max_bytes
        self.target = target

    async def start(self) -> None:
        pass

    async def parse(self, path: Path) -> ParsedInstance:
        return await asyncio.to_thread(self.target, path, self.max_bytes)

    async def close(self) -> None:
        pass


class ProcessParser:
    """A pool of parser processes, started at first use, stopped by close()."""

    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        memory_bytes: int | None,
        max_bytes: int | None = None,
        target: ParseFunction = parse_file,
    ) -> None:
        self.workers = workers
        self.timeout_seconds = timeout_seconds
        self.memory_bytes = memory_bytes
        self.max_bytes = max_bytes
        self.target = target
        self._pool: ProcessPool | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Start the workers now rather than at the first parse (which would wait ~1 s)."""
        await self._started()

    async def _started(self) -> ProcessPool:
        async with self._starting:
            if self._pool is None or not self._pool.active:
                # starting the forkserver and the workers blocks: not on the event loop
                self._pool = await asyncio.to_thread(self._start)
            return self._pool

    def _start(self) -> ProcessPool:
        # forkserver: workers (and their replacements) are forked from a clean,
        # single-threaded server process, never from the threaded event-loop process.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["cloudpacs.parsing"])
        pool = ProcessPool(
            max_workers=self.workers,
            initializer=limit_memory,
            initargs=(self.memory_bytes,),
            context=context,
        )
        pool.schedule(limit_memory, args=(None,)).result()  # the workers are up
        return pool

    async def parse(self, path: Path) -> ParsedInstance:
        pool = await self._started()
        future = pool.schedule(
            self.target, args=(path, self.max_bytes), timeout=self.timeout_seconds
        )
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # type: ignore[no-untyped-call]  # pebble stops its worker
            raise
        except InvalidDicom:
            raise
        except concurrent.futures.TimeoutError:
            raise InvalidDicom(f"parse timed out after {self.timeout_seconds:g} s") from None
        except MemoryError:
            raise InvalidDicom(f"parse exceeded the memory limit ({self._limit_text()})") from None
        except concurrent.futures.BrokenExecutor:
            # the workers cannot start at all: not this file's fault; retry later
            log.exception("parse.pool_broken")
            await self.close()
            raise Unavailable("the parser workers are unavailable") from None
        except ProcessExpired as exc:
            # killed by the kernel (e.g. its memory cap hit inside C code) or crashed
            raise InvalidDicom(f"parser process died (exit code {exc.exitcode})") from None
        # Anything else (e.g. the path is a folder) comes through as it would from a thread:
        # callers treat it as an internal error (retried, then set aside; HTTP 500).

    def _limit_text(self) -> str:
        return f"{self.memory_bytes // MIB} MiB" if self.memory_bytes else "no cap"

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]
            await asyncio.to_thread(pool.join, 10)


def limit_memory(memory_bytes: int | None) -> None:
    """Worker initializer: cap the address space, so a bomb raises MemoryError here."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def parser_for(settings: Settings) -> Parser:
    if settings.parse_workers == 0:
        return ThreadParser(settings.max_upload_bytes)
    return ProcessParser(
        settings.parse_workers,
        settings.parse_timeout_seconds,
        settings.parse_memory_bytes or None,
        settings.max_upload_bytes,
    )
