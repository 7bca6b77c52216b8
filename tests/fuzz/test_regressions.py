"""Every crashing input the fuzzers found, replayed: `*.dcm` through the parser and STOW-RS,
`*.multipart` (first line the Content-Type, then the body) through STOW-RS. Each file name
says what it broke; docs in tests/fuzz/regressions/README.md."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cloudpacs.runtime import Runtime
from tests.fuzz.mutations import nested_sequences
from tests.fuzz.test_fuzz import assert_consistent, parse_quietly
from tests.http.test_stow import post
from tests.http.test_wado import Client

REGRESSIONS = Path(__file__).parent / "regressions"
DICOM = sorted(REGRESSIONS.glob("*.dcm"))
MULTIPART = sorted(REGRESSIONS.glob("*.multipart"))
CONTENT = {path: path.read_bytes() for path in DICOM + MULTIPART}  # read before the loop runs


def test_there_are_regressions_to_replay() -> None:
    assert DICOM


@pytest.mark.parametrize("path", DICOM, ids=[p.stem for p in DICOM])
def test_parse_of_a_past_crash_is_a_rejection_at_most(path: Path) -> None:
    parse_quietly(path)


@pytest.mark.parametrize("path", DICOM, ids=[p.stem for p in DICOM])
async def test_stow_of_a_past_crash_is_not_5xx(
    runtime: Runtime, client: Client, path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, _ = await post(client, [("application/dicom", CONTENT[path])])
    assert status in (200, 409)
    await assert_consistent(runtime)


@pytest.mark.parametrize("path", MULTIPART, ids=[p.stem for p in MULTIPART])
async def test_a_past_multipart_crash_is_not_5xx(
    runtime: Runtime, client: Client, path: Path
) -> None:
    content_type, _, body = CONTENT[path].partition(b"\n")
    response = await client.post(
        "/dicomweb/studies", data=body, headers={"Content-Type": content_type.decode()}
    )
    assert response.status < 500, await response.text()
    await assert_consistent(runtime)


@pytest.mark.parametrize("defined", [True, False], ids=["defined", "undefined"])
async def test_sequences_nest_as_deep_as_the_database_takes(
    runtime: Runtime, client: Client, defined: bool
) -> None:
    status, _ = await post(client, [("application/dicom", nested_sequences(24, defined))])
    assert status == 200
    status, answer = await post(client, [("application/dicom", nested_sequences(25, defined))])
    assert status == 409
    assert "nested deeper than 24" in str(answer)
    await assert_consistent(runtime)
