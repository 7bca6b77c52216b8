"""Where an archive keeps its original bytes: GridFS in the database, or files in a directory.

- `gridfs` (storage.files): the bytes live in MongoDB with everything else, so app nodes
  stay stateless. The default with a configured MongoDB.
- `directory` (storage.directory_files): plain files, which the embedded FerretDB does not
  have to encode as JSON. The default of a new embedded archive.

The choice is made once per archive and recorded in `checkpoints`, and every later start
must agree: switching would leave the stored files unreadable. An archive that already has
GridFS files stays on GridFS. A directory store carries the archive's id in a marker file,
so a node pointed at the wrong or an unmounted directory refuses to start instead of
answering 404 for everything.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pymongo.errors import DuplicateKeyError

from cloudpacs.config import Settings
from cloudpacs.errors import ConfigError
from cloudpacs.storage.database import Database, translate_errors
from cloudpacs.storage.directory_files import MARKER_NAME, DirectoryFiles
from cloudpacs.storage.files import GridFSFiles
from cloudpacs.storage.schema import CHECKPOINTS, FILES_BUCKET, INSTANCES

RECORD_ID = "file-store"


class FileStore(Protocol):
    kind: str

    async def write_path(
        self, file_id: Any, path: Path, filename: str, metadata: dict[str, Any]
    ) -> int: ...

    async def write_bytes(
        self, file_id: Any, data: bytes, filename: str, metadata: dict[str, Any]
    ) -> None: ...

    def read(
        self, file_id: Any, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]: ...

    async def delete(self, file_id: Any) -> None: ...

    async def completed_before(self, before: datetime) -> list[Any]: ...

    async def check(self) -> None: ...

    def local_path(self, file_id: Any) -> Path | None:
        """Where the file lies on this machine's file system, if it is a plain file there
        (the HTTP layer then hands it to the kernel: sendfile)."""
        ...


async def open_file_store(database: Database, settings: Settings) -> FileStore:
    """The archive's file store, chosen (and recorded) on first use; ConfigError when the
    settings contradict what the archive already holds."""
    db = database.db
    async with translate_errors():
        record = await db[CHECKPOINTS].find_one({"_id": RECORD_ID})
        if record is None:
            record = await _record_choice(database, settings)
    kind = record["kind"]
    if settings.file_store not in ("auto", kind):
        raise ConfigError(
            f"this archive keeps its files in {kind}, not {settings.file_store}: "
            f"set file_store to {kind} (or auto)"
        )
    if kind == "gridfs":
        return GridFSFiles(db, FILES_BUCKET)
    has_instances = await _has_any(database, INSTANCES)
    root = settings.file_dir
    await asyncio.to_thread(_claim_directory, root, record["archive"], has_instances)
    return DirectoryFiles(root)


async def _record_choice(database: Database, settings: Settings) -> dict[str, Any]:
    has_gridfs_files = await _has_any(database, f"{FILES_BUCKET}.files")
    kind = settings.file_store
    if kind == "auto":
        embedded = settings.mongo_uri is None
        kind = "directory" if embedded and not has_gridfs_files else "gridfs"
    elif kind == "directory" and has_gridfs_files:
        raise ConfigError(
            "this archive already keeps files in GridFS: set file_store to gridfs (or auto)"
        )
    record = {"_id": RECORD_ID, "kind": kind, "archive": uuid.uuid4().hex}
    try:
        await database.db[CHECKPOINTS].insert_one(record)
    except DuplicateKeyError:  # another node chose first: its choice stands
        found = await database.db[CHECKPOINTS].find_one({"_id": RECORD_ID})
        assert found is not None
        record = found
    return record


async def _has_any(database: Database, collection: str) -> bool:
    async with translate_errors():
        return await database.db[collection].find_one({}, {"_id": 1}) is not None


def _claim_directory(root: Path, archive: str, has_instances: bool) -> None:
    marker = root / MARKER_NAME
    try:
        found = marker.read_text().strip()
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise ConfigError(f"cannot read the file store marker {marker}: {exc.strerror}") from exc
    if found == archive:
        return
    if found is not None:
        raise ConfigError(
            f"file directory {root} belongs to another archive ({found}, not {archive}): "
            "point file_store_dir at this archive's files"
        )
    if has_instances:
        raise ConfigError(
            f"file directory {root} holds none of this archive's files (no {MARKER_NAME} "
            "marker): is the right volume mounted at file_store_dir?"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        part = root / f".{MARKER_NAME}.part"
        part.write_text(archive + "\n")
        part.rename(marker)
    except OSError as exc:
        raise ConfigError(f"cannot create the file directory {root}: {exc.strerror}") from exc
