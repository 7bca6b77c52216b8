"""Bounded-concurrency ingest of local files, with retry on transient failure and drain.

The runner owns what happens to a source file afterwards: removed (or moved to done/) once
its instance is stored, moved to failed/ beside a reason file when rejected, left in place
and retried with backoff when the database is unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Ingestor, IngestResult, Outcome, Source

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
MAX_UNEXPECTED_FAILURES = 3


@dataclass(frozen=True)
class FileDisposal:
    """Where finished files go. `done_dir` None means delete after success."""

    root: Path
    failed_dir: Path
    done_dir: Path | None = None

    def relative(self, path: Path) -> Path:
        try:
            return path.relative_to(self.root)
        except ValueError:
            return Path(path.name)

    def succeeded(self, path: Path) -> None:
        if self.done_dir is None:
            path.unlink(missing_ok=True)
        else:
            _move(path, self.done_dir / self.relative(path))

    def failed(self, path: Path, reason: str) -> None:
        target = _move(path, self.failed_dir / self.relative(path))
        _write_atomically(target.with_name(target.name + ".reason.txt"), reason + "\n")


def _write_atomically(path: Path, text: str) -> None:
    # Whoever watches the failed folder sees the reason file whole or not at all.
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(text)
    os.replace(partial, path)


def _move(path: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target = target.with_name(f"{target.name}.{time.time_ns()}")
    shutil.move(str(path), str(target))
    return target


class IngestRunner:
    """Workers take paths from a queue; at most `concurrency` ingests run at once."""

    def __init__(
        self,
        ingestor: Ingestor,
        disposal: FileDisposal,
        concurrency: int,
        source_kind: str = "folder",
        project: str | None = None,
        on_done: Callable[[Path, IngestResult], None] | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.disposal = disposal
        self.concurrency = concurrency
        self.source_kind = source_kind
        self.project = project
        self.on_done = on_done
        self.queue: asyncio.Queue[Path] = asyncio.Queue()
        self.queued: set[Path] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    def submit(self, path: Path) -> None:
        if path not in self.queued and not self._stopping:
            self.queued.add(path)
            self.queue.put_nowait(path)

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]

    async def drain(self, grace_seconds: float) -> None:
        """Stop taking new work; give in-flight ingests `grace_seconds`, then cancel them.
        Cancelled files stay where they are and are picked up at the next start."""
        self._stopping = True
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()
        pending: set[asyncio.Task[None]] = set()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace_seconds)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pending:
            log.warning("runner.drain_timeout", extra={"cancelled": len(pending)})

    async def wait_idle(self) -> None:
        await self.queue.join()

    async def _work(self) -> None:
        while not self._stopping:
            try:
                path = await asyncio.wait_for(self.queue.get(), timeout=0.2)
            except TimeoutError:
                continue
            try:
                await self._process(path)
            finally:
                self.queued.discard(path)
                self.queue.task_done()

    async def _process(self, path: Path) -> None:
        result = await self._ingest(path)
        if result is None:
            return
        if result.outcome is Outcome.REJECTED:
            done = await self._dispose(self.disposal.failed, path, result.reason or "rejected")
        else:
            done = await self._dispose(self.disposal.succeeded, path)
        if done and self.on_done is not None:
            self.on_done(path, result)

    async def _ingest(self, path: Path) -> IngestResult | None:
        """Ingest, retrying while the database is unavailable; None: the file stays put
        (gone, stopping) or was moved to failed/ after repeated internal errors."""
        delay = RETRY_BASE_SECONDS
        unexpected = 0
        while True:
            if not await asyncio.to_thread(path.exists):
                return None  # removed by someone else meanwhile
            try:
                return await self.ingestor.ingest(
                    path,
                    Source(
                        self.source_kind, str(self.disposal.relative(path)), project=self.project
                    ),
                )
            except Unavailable as exc:
                log.warning("ingest.retry", extra={"reason": str(exc), "delay_seconds": delay})
            except Exception:  # a bug must not kill the worker or lose the file
                unexpected += 1
                log.exception("ingest.unexpected_error", extra={"attempt": unexpected})
                if unexpected >= MAX_UNEXPECTED_FAILURES:
                    reason = "internal error while ingesting; see the cloudpacs log"
                    await self._dispose(self.disposal.failed, path, reason)
                    return None
            if self._stopping:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _dispose(self, action: Callable[..., None], path: Path, *args: str) -> bool:
        """Move or delete a finished file; a file-system error leaves it where it is."""
        try:
            await asyncio.to_thread(action, path, *args)
        except OSError as exc:
            log.error(
                "runner.dispose_failed",
                extra={"path": str(self.disposal.relative(path)), "reason": str(exc)},
            )
            return False
        return True
