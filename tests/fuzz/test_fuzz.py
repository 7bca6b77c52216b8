"""Bounded, derandomized fuzzing of the DICOM ingest path and the STOW-RS multipart parser
(`pytest -m fuzz`; part of the normal run too). Invariants: parsing raises only InvalidDicom;
over HTTP nothing is answered 5xx, nothing partial is stored and no temporary file is left.
A crashing input found here is fixed and kept under regressions/ (test_regressions.py)."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from cloudpacs.dicom.parse import parse_file
from cloudpacs.errors import InvalidDicom
from cloudpacs.runtime import Runtime
from tests.fuzz.mutations import dicom_inputs, multipart_bodies
from tests.http.test_stow import assert_storage_consistent, post
from tests.http.test_wado import Client

pytestmark = pytest.mark.fuzz

# CLOUDPACS_FUZZ_HUNT=N: a longer, random search (N times the examples) for new crashes
HUNT = int(os.environ.get("CLOUDPACS_FUZZ_HUNT", "0"))
FUZZ = settings(
    derandomize=not HUNT,  # the same examples on every CI run
    database=None,
    deadline=timedelta(seconds=10),  # a hang shows as a deadline error, not a stuck run
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one archive serves every example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
PARSE_EXAMPLES = 1500 * max(1, HUNT)
INGEST_EXAMPLES = 250 * max(1, HUNT)
MULTIPART_EXAMPLES = 500 * max(1, HUNT)


def parse_quietly(path: Path) -> None:
    """parse_file as in production, where pydicom's warnings are not errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parse_file(path)
        except InvalidDicom:
            pass


@settings(FUZZ, max_examples=PARSE_EXAMPLES)
@given(data=dicom_inputs())
def test_parse_raises_only_invalid_dicom(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(data)
    parse_quietly(path)


async def assert_consistent(runtime: Runtime) -> None:
    count = await runtime.database.db["instances"].count_documents({})
    await assert_storage_consistent(runtime, count)


@settings(FUZZ, max_examples=INGEST_EXAMPLES)
@given(data=dicom_inputs())
async def test_stow_of_mutated_files_is_never_5xx(
    runtime: Runtime, client: Client, data: bytes
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, _ = await post(client, [("application/dicom", data)])
    event(f"status {status}")  # shown by --hypothesis-show-statistics
    assert status in (200, 409), status
    await assert_consistent(runtime)


@settings(FUZZ, max_examples=MULTIPART_EXAMPLES)
@given(request=multipart_bodies())
async def test_multipart_bodies_are_never_5xx(
    runtime: Runtime, client: Client, request: tuple[bytes, str]
) -> None:
    body, content_type = request
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response = await client.post(
            "/dicomweb/studies", data=body, headers={"Content-Type": content_type}
        )
        text = await response.text()
    event(f"status {response.status}")
    assert response.status < 500, (response.status, text)
    assert "Traceback" not in text
    await assert_consistent(runtime)
