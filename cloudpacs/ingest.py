"""The one use case: a DICOM file -> a stored, searchable instance. Source-agnostic, idempotent.

Every front door (watched folder, bulk import, STOW-RS, later SQS) hands a local file here.
Outcomes: stored, duplicate (same bytes already stored), rejected (permanent, with a reason).
Transient failures raise Unavailable: the caller keeps its source and retries later.

A SOP Instance UID already stored in another project, or in another study, is never
overwritten, moved or described to the sender (UidInUse, one generic reason whatever the
stored instance holds); only the same study of the same project may hold a duplicate, a
keep-first conflict or an overwrite.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bson import ObjectId

from cloudpacs.audit import AuditLog
from cloudpacs.dicom.parse import ParsedInstance
from cloudpacs.errors import Conflict, InvalidRequest, Rejected, UidInUse, WrongProject, WrongStudy
from cloudpacs.metrics import Metrics
from cloudpacs.parsing import Parser, ThreadParser
from cloudpacs.projects import is_project_name
from cloudpacs.storage import documents
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.instances import AlreadyStored, InstanceStore

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Rejected)

# One reason for every refused reuse of a SOP Instance UID held elsewhere: whether the other
# holder is a project the sender cannot see, or a study the file does not name, and whatever
# its content, the sender learns only that the UID cannot be stored here. (STOW-RS answers
# carry the first 64 characters.)
UID_IN_USE = (
    "SOP Instance UID already used outside this study or project; not stored "
    "(send the instance with a new SOP Instance UID)"
)


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    sop_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    reason: str | None = None
    reason_code: str | None = None

    @classmethod
    def of(cls, outcome: Outcome, parsed: ParsedInstance) -> IngestResult:
        return cls(
            outcome, parsed.sop_uid, parsed.sop_class_uid, parsed.study_uid, parsed.series_uid
        )


@dataclass(frozen=True)
class Source:
    """Where an input came from: a kind for metrics (bounded), a name for the record, the
    project its rules assign (None: the default project) and who sent it (for the audit)."""

    kind: str
    name: str = ""
    project: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        # the last guard: an instance's project is always one valid name (never a list
        # from a malformed credential)
        if self.project is not None and not is_project_name(self.project):
            raise InvalidRequest(f"{self.project!r} is not a project name")


class Ingestor:
    def __init__(
        self,
        store: InstanceStore,
        metrics: Metrics,
        conflict_policy: str = "keep-first",
        parser: Parser | None = None,
        default_project: str = "default",
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.conflict_policy = conflict_policy
        self.parser = parser or ThreadParser()
        self.default_project = default_project
        self.audit = audit

    async def ingest(
        self, path: Path, source: Source, expected_study: str | None = None
    ) -> IngestResult:
        started = time.perf_counter()
        gauge = self.metrics.ingests_in_flight.labels(source.kind)
        gauge.inc()
        try:
            result = await self._ingest(path, source, expected_study)
        except Rejected as exc:
            result = IngestResult(
                Outcome.REJECTED,
                sop_uid=exc.sop_uid,
                sop_class_uid=exc.sop_class_uid,
                study_uid=exc.study_uid,
                series_uid=exc.series_uid,
                reason=str(exc),
                reason_code=exc.reason,
            )
        except BaseException:
            self.metrics.ingests.labels(source.kind, "failed").inc()
            raise
        finally:
            gauge.dec()
        if result.outcome is Outcome.REJECTED:
            await self._record_rejection(source, result)
        self._audit(source, result)
        self.metrics.ingests.labels(source.kind, result.outcome.value).inc()
        self.metrics.ingest_seconds.labels(source.kind).observe(time.perf_counter() - started)
        if result.outcome is not Outcome.REJECTED:
            log.debug(
                f"ingest.{result.outcome.value}",
                extra={"source": source.kind, "sop_instance_uid": result.sop_uid},
            )
        return result

    async def reject(self, source: Source, reason: str, reason_code: str) -> IngestResult:
        """Record a permanent refusal decided before ingest (e.g. an S3 object gone)."""
        result = IngestResult(Outcome.REJECTED, reason=reason, reason_code=reason_code)
        await self._record_rejection(source, result)
        self.metrics.ingests.labels(source.kind, result.outcome.value).inc()
        return result

    def _audit(self, source: Source, result: IngestResult) -> None:
        if self.audit is None:
            return
        self.audit.record(
            action="store.instance",
            outcome=result.outcome.value,
            user=source.user or f"{source.kind}:{source.name}",
            project=source.project or self.default_project,
            study=result.study_uid,
            series=result.series_uid,
            instance=result.sop_uid,
            detail=result.reason,
        )

    async def _record_rejection(self, source: Source, result: IngestResult) -> None:
        """Log, count and keep a `rejections` record operators can query."""
        code = result.reason_code or "rejected"
        self.metrics.rejections.labels(source.kind, code).inc()
        log.info(
            "ingest.rejected",
            extra={
                "source": source.kind,
                "reason": result.reason,
                "sop_instance_uid": result.sop_uid,
            },
        )
        await self.store.record_rejection(
            {
                "at": utcnow(),
                "source": {"kind": source.kind, "name": source.name},
                "reason": result.reason,
                "reason_code": code,
                "sop_uid": result.sop_uid,
                "study_uid": result.study_uid,
            }
        )

    async def _ingest(self, path: Path, source: Source, expected_study: str | None) -> IngestResult:
        parsed = await self.parser.parse(path)
        if expected_study is not None and parsed.study_uid != expected_study:
            raise _refusal(
                WrongStudy,
                f"instance {parsed.sop_uid} belongs to study {parsed.study_uid}, "
                f"not to {expected_study} named in the URL",
                parsed,
            )
        project = source.project or self.default_project
        existing = await self.store.existing(parsed.sop_uid)
        if existing is not None and not self._same_place(existing, parsed, project):
            raise self._uid_in_use(parsed, project, existing)
        if await self.store.claim_study(parsed.study_uid, project) != project:
            raise _refusal(
                WrongProject,
                f"another project holds study {parsed.study_uid}; a study belongs to "
                f"exactly one project, so it cannot be stored in {project!r}",
                parsed,
            )
        if existing is not None:
            if existing["sha256"] == parsed.sha256:
                return IngestResult.of(Outcome.DUPLICATE, parsed)
            if self.conflict_policy == "keep-first":
                raise _conflict(parsed, existing)
        file_ids = await self._upload(path, parsed)
        try:
            doc = await self._document(parsed, file_ids, source)
        except BaseException:
            await self.store.discard_files(file_ids)
            raise
        # From here on, a failure (connection lost, cancelled) may come after the server
        # stored the document: the files then stay under their journal entries, and the
        # sweep deletes them only if no instance references them.
        if existing is not None:
            return await self._overwrite(parsed, doc, existing, file_ids)
        try:
            await self.store.insert(doc)
        except AlreadyStored:
            await self.store.delete_files(file_ids)
            return await self._lost_race(parsed, doc["project"])
        await self._finish(doc)
        self.metrics.stored_bytes.inc(parsed.size)
        return IngestResult.of(Outcome.STORED, parsed)

    async def _upload(self, path: Path, parsed: ParsedInstance) -> list[ObjectId]:
        return [await self.store.upload_file(path, parsed.sop_uid)]

    async def _document(
        self, parsed: ParsedInstance, file_ids: list[ObjectId], source: Source
    ) -> dict[str, Any]:
        record = {"kind": source.kind, "name": source.name}
        project = source.project or self.default_project
        doc = documents.instance_document(parsed, file_ids[0], record, project, utcnow())
        if documents.is_oversized(doc):
            data = json.dumps(parsed.meta).encode()
            meta_id = await self.store.upload_bytes(data, parsed.sop_uid, "dicom-json")
            file_ids.append(meta_id)
            doc["meta"] = documents.reduced_meta(parsed.meta)
            doc["meta_file_id"] = meta_id
        return doc

    async def _finish(self, doc: dict[str, Any]) -> None:
        """Post-visibility bookkeeping (rollups, then the journal entries); if it fails, the
        sweep completes it later."""
        await self.store.apply_rollups(doc)

    async def _lost_race(self, parsed: ParsedInstance, project: str) -> IngestResult:
        """A concurrent ingest stored the same SOP Instance UID first."""
        existing = await self.store.existing(parsed.sop_uid)
        if existing is not None and not self._same_place(existing, parsed, project):
            raise self._uid_in_use(parsed, project, existing)
        if existing is not None and existing["sha256"] == parsed.sha256:
            return IngestResult.of(Outcome.DUPLICATE, parsed)
        raise _conflict(parsed, existing or {})

    def _same_place(self, existing: dict[str, Any], parsed: ParsedInstance, project: str) -> bool:
        """Whether the stored instance is in the study and project the new file goes to."""
        held_by = existing.get("project") or self.default_project
        return existing.get("study") == parsed.study_uid and held_by == project

    def _uid_in_use(
        self, parsed: ParsedInstance, project: str, existing: dict[str, Any]
    ) -> UidInUse:
        # where the UID is held goes to the log (operators), never to the sender
        log.warning(
            "ingest.uid_in_use",
            extra={
                "sop_instance_uid": parsed.sop_uid,
                "project": project,
                "held_by_project": existing.get("project") or self.default_project,
                "same_study": existing.get("study") == parsed.study_uid,
            },
        )
        return _refusal(UidInUse, UID_IN_USE, parsed)

    async def _overwrite(
        self,
        parsed: ParsedInstance,
        doc: dict[str, Any],
        existing: dict[str, Any],
        file_ids: list[ObjectId],
    ) -> IngestResult:
        if not await self.store.replace(doc, existing["sha256"]):  # same study and project
            await self.store.delete_files(file_ids)
            raise _refusal(
                Conflict,
                f"SOP Instance UID {parsed.sop_uid} changed during overwrite; retry",
                parsed,
            )
        old_files = [
            existing["file_id"],
            *([existing["meta_file_id"]] if existing.get("meta_file_id") else []),
        ]
        await self.store.settle_uploads(file_ids)
        await self.store.delete_files(old_files)
        await self.store.recompute_rollups(parsed.study_uid)  # the series may have changed
        self.metrics.stored_bytes.inc(parsed.size)
        return IngestResult.of(Outcome.STORED, parsed)


def _refusal(kind: type[R], message: str, parsed: ParsedInstance) -> R:
    """A refusal of a parsed instance, carrying its UIDs (for the answer and the audit)."""
    return kind(
        message,
        parsed.sop_uid,
        parsed.sop_class_uid,
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
    )


def _conflict(parsed: ParsedInstance, existing: dict[str, Any]) -> Conflict:
    return _refusal(
        Conflict,
        f"SOP Instance UID {parsed.sop_uid} is already stored with different content "
        f"(stored sha256 {str(existing.get('sha256', '?'))[:12]}…, "
        f"new {parsed.sha256[:12]}…); policy keep-first keeps the stored one",
        parsed,
    )
