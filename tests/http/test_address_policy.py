"""The client address allowlist and X-Forwarded-For trust, through the real app."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloudpacs.config import Settings
from cloudpacs.http.app import create_app
from cloudpacs.runtime import Runtime
from cloudpacs.storage.audit import AuditStore


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # the test client connects from 127.0.0.1: that is the "HAProxy node" here
    return dataclasses.replace(
        settings, allowed_networks=("10.0.0.0/8",), trusted_proxies=("127.0.0.1/32",)
    )


async def test_forwarded_client_addresses_are_checked_against_the_allowlist(
    client: Any, runtime: Runtime
) -> None:
    inside = await client.get("/dicomweb/studies", headers={"X-Forwarded-For": "10.1.2.3"})
    assert inside.status == 204
    outside = await client.get("/dicomweb/studies", headers={"X-Forwarded-For": "203.0.113.9"})
    assert outside.status == 403
    assert "203.0.113.9 is not allowed" in (await outside.json())["error"]
    # a client cannot smuggle an allowed address in front of its own
    spoofed = await client.get(
        "/dicomweb/studies", headers={"X-Forwarded-For": "10.1.2.3, 203.0.113.9"}
    )
    assert spoofed.status == 403
    # the proxy itself (127.0.0.1) is not in the allowlist
    assert (await client.get("/dicomweb/studies")).status == 403
    assert (await client.get("/healthz")).status == 403
    await runtime.audit.flush()
    records = [r async for r in AuditStore(runtime.database).query()]
    by_client = {r["client"]: r["outcome"] for r in records}
    assert by_client["10.1.2.3"] == "ok"
    assert by_client["203.0.113.9"] == "denied"


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    runtime: Runtime, settings: Settings
) -> None:
    untrusting = dataclasses.replace(settings, trusted_proxies=())
    services = dataclasses.replace(runtime, settings=untrusting).services()
    app = create_app(services)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        response = await c.get("/dicomweb/studies", headers={"X-Forwarded-For": "10.1.2.3"})
        assert response.status == 403  # judged by its real address, 127.0.0.1
