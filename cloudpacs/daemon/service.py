"""The folder ingest daemon: a FolderSource feeding an IngestRunner."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cloudpacs.config import Settings
from cloudpacs.daemon.folder import FolderSource
from cloudpacs.daemon.runner import FileDisposal, IngestRunner
from cloudpacs.ingest import Ingestor

log = logging.getLogger(__name__)


class FolderDaemon:
    def __init__(self, settings: Settings, ingestor: Ingestor) -> None:
        self.settings = settings
        inbox = settings.inbox
        self.disposal = FileDisposal(
            root=inbox.resolve(),
            failed_dir=settings.failed_dir,
            done_dir=settings.done_dir if settings.after_ingest == "move" else None,
        )
        self.runner = IngestRunner(
            ingestor,
            self.disposal,
            settings.ingest_concurrency,
            project=settings.project_rules.folder,
        )
        self.source = FolderSource(
            inbox,
            submit=self.runner.submit,
            refuse=self._refuse,
            settle_seconds=settings.file_settle_seconds,
            excluded=(
                settings.failed_dir,
                settings.done_dir,
                settings.home / "tmp",
                settings.home / "db",
            ),
        )
        self._refusals: set[asyncio.Task[None]] = set()

    def _refuse(self, path: Path, reason: str) -> None:
        log.warning(
            "folder.refused", extra={"reason": reason, "path": str(self.disposal.relative(path))}
        )
        task = asyncio.create_task(asyncio.to_thread(self.disposal.failed, path, reason))
        self._refusals.add(task)  # a reference, so the task is not garbage-collected
        task.add_done_callback(self._refused)

    def _refused(self, task: asyncio.Task[None]) -> None:
        self._refusals.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("folder.refuse_failed", extra={"reason": str(exc)})

    async def start(self) -> None:
        self.runner.start()
        await self.source.start()

    async def stop(self) -> None:
        await self.source.stop()
        await self.runner.drain(self.settings.drain_seconds)
        if self._refusals:
            await asyncio.wait(set(self._refusals))
