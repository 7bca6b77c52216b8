"""Original DICOM bytes as plain files in a directory: the embedded default's file store.

FerretDB, the embedded database, keeps binary data as base64 inside JSON documents, so
GridFS on it stores ~25-35 files/s and serves ~50 MB/s (perf/RESULTS.md). Plain files do not
pay that. One file per id: `<root>/<id[0:2]>/<id[2:4]>/<id>`.

A file is written under a hidden `.<id>.part` name beside its final one, flushed to disk
(fsync), renamed into place, and its directory fsynced: a file under its final name is
complete and durable before any instance document names it. The `uploads` journal and the
sweep (storage.instances, storage.sweep) work as for GridFS: a crash leaves at most a part
file or an unreferenced file under a journaled id, and `delete` removes both.

App nodes may share the directory (a network file system): ids are random, so two nodes
never write one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from bson import ObjectId
from bson.errors import InvalidId

from cloudpacs.errors import NotFound, Unavailable

READ_BYTES = 1024 * 1024
PART_SUFFIX = ".part"
MARKER_NAME = "ARCHIVE"  # the id of the archive the directory belongs to (file_stores)
T = TypeVar("T")


@dataclass(frozen=True)
class LocalFile:
    """A stored file, open for reading (whoever holds it closes `source`)."""

    path: Path
    source: BinaryIO
    size: int

    @classmethod
    def open(cls, path: Path) -> LocalFile:
        """(Blocking: in a worker thread.) FileNotFoundError if it is not there."""
        source = path.open("rb")
        try:
            return cls(path, source, os.fstat(source.fileno()).st_size)
        except BaseException:
            source.close()
            raise


class DirectoryFiles:
    kind = "directory"

    def __init__(self, root: Path) -> None:
        self.root = root

    async def check(self) -> None:
        """Unavailable when the directory is gone (an unmounted volume): /readyz says so."""
        if not await asyncio.to_thread((self.root / MARKER_NAME).is_file):
            raise Unavailable(f"file directory {self.root} is not available")

    def local_path(self, file_id: Any) -> Path | None:
        return self.path(file_id)

    def path(self, file_id: Any) -> Path:
        name = str(file_id)
        return self.root / name[0:2] / name[2:4] / name

    def _part(self, file_id: Any) -> Path:
        final = self.path(file_id)
        return final.with_name(f".{final.name}{PART_SUFFIX}")

    async def write_path(
        self, file_id: Any, path: Path, filename: str, metadata: dict[str, Any]
    ) -> int:
        def copy(out: BinaryIO) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, out, READ_BYTES)

        return await _to_thread_to_the_end(self._write, file_id, copy)

    async def write_bytes(
        self, file_id: Any, data: bytes, filename: str, metadata: dict[str, Any]
    ) -> None:
        await _to_thread_to_the_end(self._write, file_id, lambda out: out.write(data))

    def _write(self, file_id: Any, fill: Callable[[BinaryIO], Any]) -> int:
        final, part = self.path(file_id), self._part(file_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with part.open("xb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
                length = out.tell()
            os.rename(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        _fsync_directory(final.parent)
        return length

    async def read(
        self, file_id: Any, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of a file (all of it by default), 1 MiB at a time."""
        try:
            source = await asyncio.to_thread(self.path(file_id).open, "rb")
        except FileNotFoundError:
            raise NotFound("stored file is missing") from None
        try:
            if offset:
                source.seek(offset)
            left = length
            while left is None or left > 0:
                size = READ_BYTES if left is None else min(READ_BYTES, left)
                block = await asyncio.to_thread(source.read, size)
                if not block:
                    break
                if left is not None:
                    left -= len(block)
                yield block
        finally:
            source.close()

    async def delete(self, file_id: Any) -> None:
        """Delete a file, and its part file if a write was cut short."""
        await _to_thread_to_the_end(self._delete, file_id)

    def _delete(self, file_id: Any) -> None:
        self.path(file_id).unlink(missing_ok=True)
        self._part(file_id).unlink(missing_ok=True)

    async def completed_before(self, before: datetime) -> list[Any]:
        """Ids of the files (part files included) last written before `before`."""
        return await asyncio.to_thread(self._completed_before, before.timestamp())

    def _completed_before(self, cutoff: float) -> list[Any]:
        found = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                file_id = _id_of(name)
                if file_id is None:
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    if os.stat(os.path.join(directory, name)).st_mtime < cutoff:
                        found.append(file_id)
        return found


def _id_of(name: str) -> ObjectId | None:
    if name.startswith(".") and name.endswith(PART_SUFFIX):
        name = name[1 : -len(PART_SUFFIX)]
    try:
        return ObjectId(name)
    except InvalidId:
        return None  # not ours (an operator's note, a lost+found)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the new name is in the directory's data, not the file's."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _to_thread_to_the_end(function: Callable[..., T], *args: Any) -> T:
    """asyncio.to_thread, except that a cancelled caller still waits for the thread to
    finish: the cleanup that follows a cancellation (deleting the file) must not race a
    write that is still going on."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait([future])
        raise
