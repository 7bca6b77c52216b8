"""Original DICOM bytes in GridFS collections (`fs.files`, `fs.chunks`), addressed by `_id`:
the file store of archives on MongoDB (see storage.file_stores).

The documents follow the GridFS spec, so mongofiles and every driver's GridFS can read them.
One deviation, on purpose: a chunk's `_id` is "<file id>:<n>" instead of a random ObjectId.
FerretDB v1.24 pushes only `_id` equality down to SQLite (answered from an index once the
embedded mode adds `embedded.add_id_lookup_indexes`); pymongo's GridFS reads chunks with
{files_id, n} range queries, which FerretDB answers by decoding every chunk in the archive (a
WADO read went from 1.3 ms at 5 instances to 70 ms at 240). Reading by `_id` keeps a read
O(chunks of the file) on the embedded FerretDB and on MongoDB alike.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import Binary, ObjectId

from cloudpacs.errors import NotFound

CHUNK_BYTES = 255 * 1024  # the GridFS default chunk size
CHUNKS_PER_INSERT = 4  # about 1 MiB per insert: fewer round trips, bounded memory


def new_file_id() -> ObjectId:
    """A random id: fs.chunks is sharded by the range key {files_id: 1, n: 1} (the one GridFS
    documents, compatible with its unique index), and time-ordered ObjectIds would send every
    new chunk to the last range, i.e. one shard (see perf/SHARDING.md). Random ids spread
    writes like a hash while a file's chunks stay together."""
    return ObjectId(os.urandom(12))


def chunk_id(file_id: Any, n: int) -> str:
    return f"{file_id}:{n}"


class GridFSFiles:
    kind = "gridfs"

    def __init__(self, db: Any, bucket: str) -> None:
        self.files = db[f"{bucket}.files"]
        self.chunks = db[f"{bucket}.chunks"]

    async def write_path(
        self, file_id: Any, path: Path, filename: str, metadata: dict[str, Any]
    ) -> int:
        """Copy a local file in; the files document comes last, as in GridFS."""
        length = n = 0
        with path.open("rb") as fp:
            while True:
                block = await asyncio.to_thread(fp.read, CHUNK_BYTES * CHUNKS_PER_INSERT)
                if not block:
                    break
                docs = []
                for start in range(0, len(block), CHUNK_BYTES):
                    docs.append(self._chunk(file_id, n, block[start : start + CHUNK_BYTES]))
                    n += 1
                await self.chunks.insert_many(docs, ordered=True)
                length += len(block)
        await self._finish(file_id, length, filename, metadata)
        return length

    async def write_bytes(
        self, file_id: Any, data: bytes, filename: str, metadata: dict[str, Any]
    ) -> None:
        docs = [
            self._chunk(file_id, n, data[start : start + CHUNK_BYTES])
            for n, start in enumerate(range(0, len(data), CHUNK_BYTES))
        ]
        for first in range(0, len(docs), CHUNKS_PER_INSERT):
            await self.chunks.insert_many(docs[first : first + CHUNKS_PER_INSERT], ordered=True)
        await self._finish(file_id, len(data), filename, metadata)

    def _chunk(self, file_id: Any, n: int, data: bytes) -> dict[str, Any]:
        return {"_id": chunk_id(file_id, n), "files_id": file_id, "n": n, "data": Binary(data)}

    async def _finish(
        self, file_id: Any, length: int, filename: str, metadata: dict[str, Any]
    ) -> None:
        await self.files.insert_one(
            {
                "_id": file_id,
                "length": length,
                "chunkSize": CHUNK_BYTES,
                "uploadDate": datetime.now(UTC),
                "filename": filename,
                "metadata": metadata,
            }
        )

    async def read(
        self, file_id: Any, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of a file (all of it by default), chunk by chunk."""
        info = await self.files.find_one({"_id": file_id}, {"length": 1, "chunkSize": 1})
        if info is None:
            raise NotFound("stored file is missing")
        size, chunk_size = int(info["length"]), int(info["chunkSize"])
        end = size if length is None else min(size, offset + length)
        n = offset // chunk_size
        position = n * chunk_size
        while position < end:
            data = await self._chunk_data(file_id, n)
            lo = max(0, offset - position)
            hi = min(len(data), end - position)
            if lo < hi:
                yield data[lo:hi]
            position += chunk_size
            n += 1

    async def _chunk_data(self, file_id: Any, n: int) -> bytes:
        doc = await self.chunks.find_one({"_id": chunk_id(file_id, n)}, {"data": 1})
        if doc is None:  # written by another GridFS client: standard lookup
            doc = await self.chunks.find_one({"files_id": file_id, "n": n}, {"data": 1})
        if doc is None:
            raise NotFound(f"stored file is missing chunk {n}")
        return bytes(doc["data"])

    async def delete(self, file_id: Any) -> None:
        """Delete a file and its chunks, even chunks written before a crash left no files
        document (chunks are written in order, so they are probed from n = 0 up)."""
        info = await self.files.find_one({"_id": file_id}, {"length": 1, "chunkSize": 1})
        n = deleted = 0
        if info is not None:
            count = -(-int(info["length"]) // int(info["chunkSize"]))
            for n in range(count):
                result = await self.chunks.delete_one({"_id": chunk_id(file_id, n)})
                deleted += result.deleted_count
            n = count
        while (await self.chunks.delete_one({"_id": chunk_id(file_id, n)})).deleted_count:
            n += 1
            deleted += 1
        if not deleted:
            # None addressed by _id: chunks another GridFS client wrote (pymongo's GridFS,
            # before this store) are found by the standard query (a scan on FerretDB).
            await self.chunks.delete_many({"files_id": file_id})
        await self.files.delete_one({"_id": file_id})

    async def check(self) -> None:
        """Nothing beyond the database, which /readyz pings anyway."""

    def local_path(self, file_id: Any) -> Path | None:
        return None  # in the database

    async def completed_before(self, before: datetime) -> list[Any]:
        """Ids of the files completed before `before` (the full sweep's candidates)."""
        files = self.files.find({"uploadDate": {"$lt": before}}, {"_id": 1})
        return [doc["_id"] async for doc in files]
