"""`cloudpacs db init --sharded`: shard the archive on a MongoDB sharded cluster (via mongos).

Shard keys, and why:
- instances  {study: "hashed"}   a hash spreads writes evenly over shards whatever the UID
             scheme (UIDs share long prefixes, so a range key would pile onto one shard);
             every instance of a study lands on one shard, so study-level QIDO, WADO
             retrieval and the rollup recount touch a single shard.
- series, series_members  {study: "hashed"}  beside their study's instances, same reasoning.
- studies, study_search  {_id: "hashed"}  keyed by the study UID.
- instance_reads {_id: "hashed"}  read by SOP Instance UID alone: each lookup goes to one shard.
- fs.chunks  {files_id: 1, n: 1} the key MongoDB documents for GridFS (and the only one that
             keeps GridFS's unique {files_id, n} index legal): all chunks of a file stay
             together and in order, so a stream or a frame read is one shard. cloudpacs
             draws file ids at random (storage.files.new_file_id), so writes spread over the
             ranges like a hash instead of piling onto the last one (perf/SHARDING.md).
- fs.files   {_id: "hashed"}     file documents spread evenly.
Unique indexes must be prefixed by the shard key, so sharded `instances` keep uniqueness of
`_id` per shard only; the application's existence check by `_id` (a scatter-gather, cheap
on the `_id` index of each shard) plus a unique {study, _id} index keeps duplicates out.
FerretDB has no sharding: the command is refused there with that reason.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import OperationFailure

from cloudpacs.errors import InvalidRequest
from cloudpacs.storage.database import Database, translate_errors
from cloudpacs.storage.schema import (
    FILES_BUCKET,
    INSTANCE_READS,
    INSTANCES,
    SERIES,
    SERIES_MEMBERS,
    STUDIES,
    STUDY_SEARCH,
)

SHARD_KEYS: dict[str, dict[str, Any]] = {
    INSTANCES: {"study": "hashed"},
    SERIES: {"study": "hashed"},
    SERIES_MEMBERS: {"study": "hashed"},
    STUDIES: {"_id": "hashed"},
    STUDY_SEARCH: {"_id": "hashed"},
    INSTANCE_READS: {"_id": "hashed"},
    f"{FILES_BUCKET}.files": {"_id": "hashed"},
    f"{FILES_BUCKET}.chunks": {"files_id": 1, "n": 1},
}
# AlreadyInitialized (collection already sharded), IndexAlreadyExists, NamespaceExists
ALREADY_DONE_CODES = {23, 48, 68, 85, 86}
# Unique indexes a sharded cluster allows (prefixed by the shard key).
SHARDED_UNIQUE_INDEXES = {
    INSTANCES: IndexModel([("study", ASCENDING), ("_id", ASCENDING)], unique=True),
}


def sharding_commands(database: str) -> list[tuple[str, dict[str, Any]]]:
    """(target database, command) pairs, in order, that shard the archive database.

    The shard-key index is created first so that non-empty collections can be sharded."""
    commands: list[tuple[str, dict[str, Any]]] = [("admin", {"enableSharding": database})]
    for collection, key in SHARD_KEYS.items():
        name = "_".join(f"{field}_{kind}" for field, kind in key.items())
        commands.append(
            (database, {"createIndexes": collection, "indexes": [{"key": key, "name": name}]})
        )
        commands.append(("admin", {"shardCollection": f"{database}.{collection}", "key": key}))
    for collection, index in SHARDED_UNIQUE_INDEXES.items():
        commands.append((database, {"createIndexes": collection, "indexes": [index.document]}))
    return commands


async def shard_archive(database: Database) -> list[str]:
    """Run sharding_commands through mongos; safe to run again."""
    info = await database.server_info()
    if info.ferretdb:
        raise InvalidRequest(f"{info.name} {info.version} has no sharding; use MongoDB 7+ mongos")
    notes = []
    async with translate_errors():
        hello = await database.client.admin.command("hello")
        if hello.get("msg") != "isdbgrid":
            raise InvalidRequest("connect to a mongos (sharded cluster router) to shard")
        for target, command in sharding_commands(database.db.name):
            name = next(iter(command))
            try:
                await database.client[target].command(command)
                notes.append(f"{name} {command[name]}: done")
            except OperationFailure as exc:
                if exc.code not in ALREADY_DONE_CODES:
                    raise
                notes.append(f"{name} {command[name]}: already done")
    return notes
