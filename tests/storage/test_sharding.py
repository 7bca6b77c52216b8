"""The exact admin commands `db init --sharded` sends (no MongoDB cluster can run here)."""

from __future__ import annotations

import pytest

from cloudpacs.errors import InvalidRequest
from cloudpacs.runtime import Runtime
from cloudpacs.storage.sharding import shard_archive, sharding_commands


def test_sharding_commands_are_exactly_these() -> None:
    commands = sharding_commands("archive")
    assert commands[0] == ("admin", {"enableSharding": "archive"})
    shard = [c for t, c in commands if "shardCollection" in c]
    assert shard == [
        {"shardCollection": "archive.instances", "key": {"study": "hashed"}},
        {"shardCollection": "archive.series", "key": {"study": "hashed"}},
        {"shardCollection": "archive.series_members", "key": {"study": "hashed"}},
        {"shardCollection": "archive.studies", "key": {"_id": "hashed"}},
        {"shardCollection": "archive.study_search", "key": {"_id": "hashed"}},
        {"shardCollection": "archive.instance_reads", "key": {"_id": "hashed"}},
        {"shardCollection": "archive.fs.files", "key": {"_id": "hashed"}},
        {"shardCollection": "archive.fs.chunks", "key": {"files_id": 1, "n": 1}},
    ]
    # every shardCollection is preceded by the creation of its shard-key index
    for i, (_target, command) in enumerate(commands):
        if "shardCollection" in command:
            previous_target, previous = commands[i - 1]
            assert previous_target == "archive"
            assert previous["createIndexes"] == command["shardCollection"].split(".", 1)[1]
            assert previous["indexes"][0]["key"] == command["key"]
    unique = commands[-1]
    assert unique[1]["createIndexes"] == "instances"
    assert unique[1]["indexes"][0]["unique"] is True
    assert list(unique[1]["indexes"][0]["key"]) == ["study", "_id"]


async def test_ferretdb_refuses_sharding_clearly(runtime: Runtime) -> None:
    with pytest.raises(InvalidRequest, match="has no sharding"):
        await shard_archive(runtime.database)
