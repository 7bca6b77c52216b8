"""`cloudpacs migrate --from-dicomweb URL`: copy a whole archive from a DICOMweb server.

QIDO-RS lists the studies, then each study's instances; each instance is fetched as stored
(WADO-RS, `transfer-syntax=*`) into a temporary file and handed to the one `ingest()`.

- Idempotent: ingest answers "duplicate" for bytes already stored.
- Resumable: a study whose every instance is stored and verified is recorded in
  `checkpoints` (with each instance's source sha256); a rerun copies only the other studies,
  or a finished one whose source now lists more instances.
- Verified: every study, copied now or earlier, is reconciled (report.py).
- Bounded: `concurrency` instance transfers at a time, as many studies in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from cloudpacs.errors import Unavailable
from cloudpacs.ingest import Ingestor, Outcome, Source
from cloudpacs.migrate.report import (
    ALREADY_COMPLETE,
    COPIED,
    MigrationReport,
    StudyReport,
    reconcile,
)
from cloudpacs.migrate.source import (
    DicomwebSource,
    InstanceRef,
    SourceError,
    SourceRetry,
    StudyRef,
)
from cloudpacs.storage.checkpoints import CheckpointStore
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.instances import InstanceStore

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 5  # per request to the source, and per ingest while the database is unavailable
# a checkpoint keeps each instance's source sha256: past this many a study's document would
# near MongoDB's 16 MiB limit, so only the count is kept (a rerun then re-fetches the study)
MAX_CHECKPOINT_INSTANCES = 50_000
GIVE_UP_AFTER_FAILURES = 20  # transfers failed in a row (each after its retries)
PROGRESS_LINE_SECONDS = 10.0  # when stderr is not a terminal


@dataclass(frozen=True)
class MigrateOptions:
    source: str
    tmp_dir: Path
    max_bytes: int
    concurrency: int = 8
    project: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    limit_studies: int | None = None
    progress: bool = True


class Migration:
    def __init__(
        self,
        options: MigrateOptions,
        source: DicomwebSource,
        ingestor: Ingestor,
        store: InstanceStore,
        checkpoints: CheckpointStore,
    ) -> None:
        self.options = options
        self.source = source
        self.ingestor = ingestor
        self.store = store
        self.checkpoints = checkpoints
        self.job = f"migrate:{source.root}"  # the root carries no credentials
        self.slots = asyncio.Semaphore(options.concurrency)
        self.failures_in_a_row = 0
        self.report = MigrationReport(source.root, options.project, utcnow().isoformat())
        self.progress = Progress(options.progress)

    async def run(self) -> MigrationReport:
        started = time.perf_counter()
        try:
            await self._run()
        except asyncio.CancelledError:
            self.report.interrupted = True
            raise
        finally:
            self.report.seconds = time.perf_counter() - started
            self.progress.close()
        return self.report

    async def _run(self) -> None:
        await self.source.check()
        studies = await self._retrying(self.source.studies)
        self.report.studies_in_source = len(studies)
        done = await self.checkpoints.done_items(self.job)
        todo = studies
        if self.options.limit_studies is not None:
            pending = [s for s in studies if not _complete(done.get(s.uid), s)]
            keep = {s.uid for s in pending[: self.options.limit_studies]}
            todo = [s for s in studies if s.uid in keep or _complete(done.get(s.uid), s)]
            self.report.limited = len(keep) < len(pending)
        self.progress.start(sum(s.instances or 0 for s in todo))
        log.info("migrate.started", extra={"studies": len(todo), "finished_before": len(done)})
        queue = iter(todo)
        workers = [self._worker(queue, done) for _ in range(self.options.concurrency)]
        await asyncio.gather(*workers)

    async def _worker(self, queue: Iterator[StudyRef], done: dict[str, dict[str, Any]]) -> None:
        for study in queue:  # one shared iterator: each study goes to one worker
            if self.report.aborted:
                return
            report = StudyReport(study.uid)
            self.report.studies.append(report)
            checkpoint = done.get(study.uid)
            if _complete(checkpoint, study) and checkpoint is not None:
                await self._verify(report, checkpoint)
            else:
                await self._copy(study, report)

    async def _verify(self, report: StudyReport, checkpoint: dict[str, Any]) -> None:
        """A study finished by an earlier run: reconcile from its checkpoint, fetch nothing."""
        shas = {i["sop"]: i["sha256"] for i in checkpoint.get("instances") or []}
        await reconcile(self.store, report, shas)
        report.source_instances = int(checkpoint.get("count", len(shas)))
        self.progress.update(report.source_instances)
        if report.problems:  # lost or changed in the archive since: copy it again next run
            await self.checkpoints.forget(self.job, report.study)
            report.problem(None, "finished earlier but no longer intact: a rerun copies it")
            return
        report.status = ALREADY_COMPLETE

    async def _copy(self, study: StudyRef, report: StudyReport) -> None:
        try:
            refs = await self._retrying(lambda: self.source.instances(study))
        except (SourceError, SourceRetry) as exc:
            report.problem(None, f"cannot list the study's instances: {exc}")
            return
        shas: dict[str, str] = {}
        await asyncio.gather(*(self._instance(ref, report, shas) for ref in refs))
        await reconcile(self.store, report, shas)
        report.source_instances = len(refs)
        if report.problems or len(shas) != len(refs):
            return
        report.status = COPIED
        kept = len(shas) <= MAX_CHECKPOINT_INSTANCES
        instances = [{"sop": k, "sha256": v} for k, v in sorted(shas.items())] if kept else None
        await self.checkpoints.mark_done(
            self.job, study.uid, {"count": len(refs), "instances": instances}
        )
        log.info("migrate.study_done", extra={"study_instance_uid": study.uid, "n": len(refs)})

    async def _instance(self, ref: InstanceRef, report: StudyReport, shas: dict[str, str]) -> None:
        reason: str | None
        sha: str | None
        async with self.slots:
            if self.report.aborted:
                outcome, reason, sha = "failed", "not attempted: the migration gave up", None
            else:
                try:
                    outcome, reason, sha = await self._transfer(ref)
                    self.failures_in_a_row = 0
                except (SourceError, SourceRetry, Unavailable) as exc:
                    outcome, reason, sha = "failed", str(exc), None
                    self._failed(exc)
        report.counts[outcome] += 1
        if sha is not None and outcome != Outcome.REJECTED:
            shas[ref.sop] = sha
        if reason is not None:
            report.problem(ref.sop, f"{outcome}: {reason}")
        self.progress.update(1)

    def _failed(self, exc: Exception) -> None:
        """Give up when transfers keep failing (source or database down, credentials expired):
        every further instance would only wait through its retries."""
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= GIVE_UP_AFTER_FAILURES and not self.report.aborted:
            self.report.aborted = f"{self.failures_in_a_row} transfers failed in a row; last: {exc}"
            log.warning("migrate.gave_up", extra={"error": str(exc)})

    async def _transfer(self, ref: InstanceRef) -> tuple[str, str | None, str | None]:
        """Fetch one instance to a temporary file and ingest it: (outcome, reason, sha256)."""
        self.options.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.options.tmp_dir, suffix=".dcm")
        path = Path(name)
        try:
            os.close(fd)
            fetched = await self._retrying(
                lambda: self.source.fetch(ref, path, self.options.max_bytes)
            )
            self.report.fetched_bytes += fetched.size
            source = Source("migrate", self.source.instance_url(ref), self.options.project)
            result = await self._retrying(
                lambda: self.ingestor.ingest(path, source, expected_study=ref.study),
                transient=(Unavailable,),
            )
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        return result.outcome.value, result.reason, fetched.sha256

    async def _retrying(
        self,
        call: Callable[[], Awaitable[T]],
        transient: tuple[type[Exception], ...] = (SourceRetry,),
    ) -> T:
        for attempt in range(RETRIES):
            try:
                return await call()
            except transient as exc:
                if attempt == RETRIES - 1:
                    raise
                log.info("migrate.retry", extra={"attempt": attempt + 1, "error": str(exc)})
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def _complete(checkpoint: dict[str, Any] | None, study: StudyRef) -> bool:
    """Finished by an earlier run, and the source lists no more instances than then."""
    if checkpoint is None:
        return False
    return study.instances is None or study.instances <= int(checkpoint.get("count", 0))


class Progress:
    """A tqdm bar on a terminal; otherwise a line on stderr every PROGRESS_LINE_SECONDS."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar: tqdm[Any] | None = None
        self.done = 0
        self.total = 0
        self.running = False
        self.started = self.last = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        self.running = True
        self.started = self.last = time.monotonic()
        if self.enabled and self.tty:
            self.bar = tqdm(total=total or None, unit="instance", desc="migrate")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= PROGRESS_LINE_SECONDS:
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        print(
            f"migrate: {self.done}/{self.total or '?'} instances, {rate:.1f}/s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.running:
            with contextlib.suppress(ValueError):  # stderr closed
                self._line()
