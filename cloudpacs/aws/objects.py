"""One S3 object -> the one ingest, via a temporary file (shared by SQS and backfill)."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloudpacs.ingest import Ingestor, IngestResult, Source
from cloudpacs.projects import ProjectRules

DOWNLOAD_CHUNK_BYTES = 1024 * 1024
MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    event_time: datetime | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class RetryLater(Exception):
    """A transient failure (S3 5xx, throttling, timeouts): try the object again later."""


class ObjectIngest:
    def __init__(
        self,
        s3: Any,
        ingestor: Ingestor,
        tmp_dir: Path,
        max_bytes: int,
        kind: str,
        projects: ProjectRules | None = None,
    ) -> None:
        self.projects = projects
        self.s3 = s3
        self.ingestor = ingestor
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.kind = kind

    async def ingest(self, obj: S3Object) -> IngestResult:
        """Stored, duplicate or rejected (recorded); raises RetryLater or Unavailable."""
        project = self.projects.for_s3(obj.bucket, obj.key) if self.projects else None
        source = Source(self.kind, obj.url, project=project)
        if obj.size is not None and obj.size > self.max_bytes:
            reason = f"object is {obj.size} bytes, over the {self.max_bytes}-byte limit"
            return await self.ingestor.reject(source, reason, "too-large")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkstemp(dir=self.tmp_dir, suffix=".dcm")[1])
        try:
            problem = await asyncio.to_thread(self._download, obj, path)
            if problem is not None:
                return await self.ingestor.reject(source, problem[1], problem[0])
            return await self.ingestor.ingest(path, source)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def _download(self, obj: S3Object, path: Path) -> tuple[str, str] | None:
        """Stream the object to `path`; (code, reason) if it can never be ingested."""
        try:
            body = self.s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
            size = 0
            with path.open("wb") as fp:
                while chunk := body.read(DOWNLOAD_CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_bytes:
                        return "too-large", f"object is over the {self.max_bytes}-byte limit"
                    fp.write(chunk)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_OBJECT_CODES:
                return "object-missing", "object was deleted before it could be read"
            raise RetryLater(f"S3 {code or 'error'}") from exc
        except BotoCoreError as exc:
            raise RetryLater(f"S3 {type(exc).__name__}") from exc
        return None
