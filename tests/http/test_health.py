"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloudpacs.config import Settings
from cloudpacs.http.app import create_app
from cloudpacs.ingest import Source
from cloudpacs.metrics import Metrics
from cloudpacs.runtime import Runtime, build_runtime
from cloudpacs.storage.database import open_database
from tests.conftest import free_port
from tests.factory import write_instance


async def test_healthz_and_readyz(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["status"] == "ready"


@pytest.fixture
async def dead_client(settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    dead = dataclasses.replace(settings, mongo_uri=f"mongodb://127.0.0.1:{free_port()}/")
    assert dead.mongo_uri is not None
    database = open_database(dead.mongo_uri, "x", server_selection_timeout_ms=300)
    runtime = build_runtime(dead, database, Metrics(), [])
    async with TestClient(TestServer(create_app(runtime.services()), host="127.0.0.1")) as c:
        yield c
    await runtime.parser.close()
    await database.close()


async def test_readyz_is_503_without_database(dead_client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await dead_client.get("/healthz")).status == 200
    response = await dead_client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["status"] == "unavailable"
    search = await dead_client.get("/dicomweb/studies")
    assert search.status == 503
    assert search.headers["Retry-After"]
    assert "Traceback" not in await search.text()
    assert "127.0.0.1" not in await search.text()  # the detail is in the log only


async def test_metrics_exposition(runtime: Runtime, client: Any, tmp_path: Path) -> None:
    spec = write_instance(tmp_path / "a.dcm")
    await runtime.ingestor.ingest(tmp_path / "a.dcm", Source("folder"))
    (tmp_path / "bad.dcm").write_text("x")
    await runtime.ingestor.ingest(tmp_path / "bad.dcm", Source("folder"))
    await client.get(f"/dicomweb/studies/{spec.study_uid}/metadata")
    await client.get("/dicomweb/studies/1.2.3/metadata")
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'cloudpacs_ingests_total{outcome="stored",source="folder"} 1.0' in text
    assert 'cloudpacs_ingests_total{outcome="rejected",source="folder"} 1.0' in text
    assert 'cloudpacs_rejections_total{reason="invalid-dicom",source="folder"} 1.0' in text
    assert f"cloudpacs_stored_bytes_total {float((tmp_path / 'a.dcm').stat().st_size)}" in text
    assert 'cloudpacs_ingest_seconds_count{source="folder"} 2.0' in text
    assert 'route="/dicomweb/studies/{study}/metadata",status="200"' in text
    assert 'route="/dicomweb/studies/{study}/metadata",status="404"' in text
    assert spec.study_uid not in text  # labels carry route templates, never UIDs
    assert "cloudpacs_http_requests_in_flight" in text
    assert "cloudpacs_ingests_in_flight" in text


async def test_unknown_route_and_internal_errors_are_opaque(client: Any) -> None:
    response = await client.get("/dicomweb/nothing-here")
    assert response.status == 404
