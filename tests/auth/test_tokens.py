"""API tokens against a real FerretDB: shown once, stored hashed, expiring, revocable."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from cloudpacs.auth.principal import Role
from cloudpacs.auth.tokens import TokenService
from cloudpacs.config import Settings
from cloudpacs.errors import InvalidRequest, NotFound, Unauthenticated
from cloudpacs.runtime import Runtime
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.schema import TOKENS
from cloudpacs.storage.tokens import TokenStore


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, token_cache_seconds=0)  # every check reads the DB


async def test_a_token_is_stored_only_as_a_hash_and_verifies(runtime: Runtime) -> None:
    new = await runtime.tokens.create("ann", {"alpha": "contributor"}, 30, "alpha")
    secret = new.token.rsplit("_", 1)[1]
    stored = await runtime.database.db[TOKENS].find_one({"_id": new.record["_id"]})
    assert stored is not None and secret not in str(stored)
    assert len(stored["secret_sha256"]) == 64
    principal = await runtime.tokens.verify(new.token)
    assert principal.subject == "ann" and principal.default_project == "alpha"
    assert principal.allows(Role.CONTRIBUTOR, "alpha") and not principal.allows(Role.READER, "b")
    listed = await runtime.tokens.list()
    assert [t["_id"] for t in listed] == [new.record["_id"]]
    assert "secret_sha256" not in listed[0]


async def test_wrong_secret_expired_and_revoked_tokens_are_refused(runtime: Runtime) -> None:
    new = await runtime.tokens.create("ann", {"alpha": "reader"}, 1)
    for bad in (new.token[:-1] + ("A" if new.token[-1] != "A" else "B"), "cpt_nope_x", "cpt_"):
        with pytest.raises(Unauthenticated, match="invalid token"):
            await runtime.tokens.verify(bad)
    await runtime.database.db[TOKENS].update_one(
        {"_id": new.record["_id"]}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}}
    )
    with pytest.raises(Unauthenticated, match="expired"):
        await runtime.tokens.verify(new.token)
    other = await runtime.tokens.create("bo", {"alpha": "reader"}, 1)
    await runtime.tokens.revoke(other.record["_id"])
    await runtime.tokens.revoke(other.record["_id"])  # idempotent
    with pytest.raises(Unauthenticated, match="revoked"):
        await runtime.tokens.verify(other.token)
    with pytest.raises(NotFound):
        await runtime.tokens.revoke("0000000000000000")


async def test_token_requests_are_validated(runtime: Runtime) -> None:
    with pytest.raises(InvalidRequest, match="at least one grant"):
        await runtime.tokens.create("ann", {}, 1)
    with pytest.raises(InvalidRequest, match="between 0 and"):
        await runtime.tokens.create("ann", {"alpha": "reader"}, 0)
    with pytest.raises(InvalidRequest, match="default project"):
        await runtime.tokens.create("ann", {"alpha": "reader"}, 1, default_project="beta")
    assert await runtime.database.db[TOKENS].count_documents({}) == 0


async def test_cached_tokens_see_local_revocation_at_once_and_remote_within_the_ttl(
    runtime: Runtime,
) -> None:
    node_a = TokenService(TokenStore(runtime.database), cache_seconds=0.5)
    node_b = TokenService(TokenStore(runtime.database), cache_seconds=0.5)
    new = await node_a.create("ann", {"alpha": "reader"}, 1)
    other = await node_a.create("bo", {"alpha": "reader"}, 1)
    for token in (new.token, other.token):
        await node_a.verify(token)
        await node_b.verify(token)
    await node_a.revoke(new.record["_id"])
    with pytest.raises(Unauthenticated, match="revoked"):
        await node_a.verify(new.token)  # here: at once
    await node_b.verify(new.token)  # another node: still cached...
    await asyncio.sleep(0.6)
    with pytest.raises(Unauthenticated, match="revoked"):
        await node_b.verify(new.token)  # ...until the cache entry expires
    assert (await node_b.verify(other.token)).subject == "bo"
