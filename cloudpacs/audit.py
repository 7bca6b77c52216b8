"""The audit log: who did what to which data, when, from where, and with what outcome.

Recording is a cheap in-memory append, so that audit never slows a request down; a background
task writes the buffer to the append-only `audit` collection in batches. If the database is
unreachable, records wait in the buffer (bounded by audit_buffer_limit; beyond it they are
dropped, counted in cloudpacs_audit_dropped and logged).

A record that names a study but no project (a DICOMweb request under /dicomweb/, whose URL
does not say) gets the study's project at that write, looked up once per study and batch:
off the request path, so that requests pay nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bson import ObjectId

from cloudpacs.errors import Unavailable
from cloudpacs.metrics import Metrics
from cloudpacs.storage.audit import AuditStore
from cloudpacs.storage.clock import utcnow

log = logging.getLogger(__name__)

BATCH = 1000
CLOSE_SECONDS = 5.0

# study UIDs -> {study UID: project} for those that exist (InstanceStore.study_projects)
ProjectLookup = Callable[[Sequence[str]], Awaitable[dict[str, str]]]


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        metrics: Metrics,
        flush_seconds: float,
        limit: int,
        projects_of: ProjectLookup | None = None,
    ) -> None:
        self.store = store
        self.projects_of = projects_of
        self.metrics = metrics
        self.flush_seconds = flush_seconds
        self.limit = limit
        self._buffer: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        *,
        action: str,
        outcome: str,
        user: str,
        credential: str | None = None,
        project: str | None = None,
        study: str | None = None,
        series: str | None = None,
        instance: str | None = None,
        client: str | None = None,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        if len(self._buffer) >= self.limit:
            self.metrics.audit_dropped.inc()
            log.error("audit.dropped", extra={"action": action, "user": user})
            return
        record = {
            "_id": ObjectId(),  # its own, so that writing a batch again is harmless
            "at": utcnow(),
            "user": user,
            "credential": credential,
            "action": action,
            "outcome": outcome,
            "project": project,
            "study": study,
            "series": series,
            "instance": instance,
            "client": client,
            "method": method,
            "path": path,
            "status": status,
            "detail": detail,
        }
        self._buffer.append({k: v for k, v in record.items() if v is not None})
        self.metrics.audit_pending.set(len(self._buffer))

    async def flush(self) -> int:
        """Write everything buffered so far; on failure the records stay for the next try."""
        written = 0
        while self._buffer:
            batch = self._buffer[:BATCH]
            await self._fill_projects(batch)
            await self.store.append(batch)
            # append() inserted these exact dicts, so drop them by count (records appended
            # meanwhile are behind them)
            del self._buffer[: len(batch)]
            written += len(batch)
            self.metrics.audit_records.inc(len(batch))
        self.metrics.audit_pending.set(len(self._buffer))
        return written

    def name_project(self, study: str, project: str) -> None:
        """Give the buffered records of `study` its project now: it is being deleted, and
        could not be looked up when they are written."""
        for record in self._buffer:
            if record.get("study") == study and "project" not in record:
                record["project"] = project

    async def _fill_projects(self, batch: list[dict[str, Any]]) -> None:
        missing = [r for r in batch if "study" in r and "project" not in r]
        if not missing or self.projects_of is None:
            return
        found = await self.projects_of(sorted({r["study"] for r in missing}))
        for record in missing:
            if record["study"] in found:
                record["project"] = found[record["study"]]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop the background writer and write what is left (bounded in time)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.wait_for(self.flush(), CLOSE_SECONDS)
        except (Unavailable, TimeoutError):
            log.error("audit.lost_at_exit", extra={"records": len(self._buffer)})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Unavailable:
                log.warning("audit.flush_deferred", extra={"records": len(self._buffer)})
            except Exception:
                log.exception("audit.flush_failed")
