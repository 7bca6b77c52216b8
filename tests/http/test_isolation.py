"""Project isolation: what a caller of one project gets from searches (at every QIDO level,
the answers' content, not only their status), retrievals and bulk data of another project's
data: nothing, and a 404 indistinguishable from a UID that does not exist."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest

from cloudpacs.runtime import Runtime
from tests.http.secured import (  # noqa: F401  (fixtures)
    Archive,
    archive_fixture,
    audit_records,
    idp_fixture,
    secured_settings,
)
from tests.http.test_wado import OCTETS, split_multipart

STUDY_UID, SERIES_UID, SOP_UID, PATIENT_ID = "0020000D", "0020000E", "00080018", "00100020"


def _values(answer: list[dict[str, Any]], tag: str) -> set[str]:
    return {item[tag]["Value"][0] for item in answer if "Value" in item.get(tag, {})}


async def _search(client: Any, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """A QIDO-RS answer's matches; an empty list for 204."""
    response = await client.get(url, headers=headers)
    assert response.status in (200, 204), (url, response.status)
    if response.status == 204:
        return []
    answer: list[dict[str, Any]] = await response.json(content_type=None)
    return answer


@pytest.mark.parametrize("credential", ["wrong-role", "jwt-reader"])  # token, and JWT
async def test_an_alpha_reader_finds_only_alphas_data_at_every_qido_level(
    client: Any, archive: Archive, credential: str
) -> None:
    a, b = archive.alpha, archive.beta
    headers = archive.headers[credential]
    alpha_sops = {a.sop_uid, archive.alpha2.sop_uid}
    for root in ("/dicomweb", "/dicomweb/projects/alpha"):
        # top levels: everything the reader may see, and nothing else
        for level, query in (("studies", ""), ("series", ""), ("instances", "?includefield=all")):
            answer = await _search(client, f"{root}/{level}{query}", headers)
            assert _values(answer, STUDY_UID) == {a.study_uid}, (root, level)
            assert _values(answer, PATIENT_ID) == {"ALPHA-1"}, (root, level)
        answer = await _search(client, f"{root}/instances", headers)
        assert _values(answer, SOP_UID) == alpha_sops
        assert _values(await _search(client, f"{root}/series", headers), SERIES_UID) == {
            a.series_uid
        }
        # an attribute match on beta's data, and beta's UIDs, find nothing
        for level in ("studies", "series", "instances"):
            for query in ("PatientID=BETA-1", f"StudyInstanceUID={b.study_uid}"):
                assert await _search(client, f"{root}/{level}?{query}", headers) == []
        # path-scoped levels: alpha's study lists alpha's series and instances ...
        study = f"{root}/studies/{a.study_uid}"
        answer = await _search(client, f"{study}/series", headers)
        assert _values(answer, SERIES_UID) == {a.series_uid}
        for url in (f"{study}/instances", f"{study}/series/{a.series_uid}/instances"):
            answer = await _search(client, url, headers)
            assert _values(answer, SOP_UID) == alpha_sops, url
            assert _values(answer, STUDY_UID) == {a.study_uid}, url
        # ... and beta's study, named in the path, is as empty as one that does not exist
        other = f"{root}/studies/{b.study_uid}"
        for url in (
            f"{other}/series",
            f"{other}/instances",
            f"{other}/series/{b.series_uid}/instances",
        ):
            assert await _search(client, url, headers) == [], url


@pytest.mark.parametrize("root", ["/dicomweb", "/dicomweb/projects/beta"])
async def test_searches_return_only_the_callers_projects_at_every_level(
    client: Any, archive: Archive, root: str
) -> None:
    headers = archive.headers["wrong-project"]  # admin of beta only
    for level, tag, expected in (
        ("studies", STUDY_UID, archive.beta.study_uid),
        ("series", SERIES_UID, archive.beta.series_uid),
        ("instances", SOP_UID, archive.beta.sop_uid),
    ):
        assert _values(await _search(client, f"{root}/{level}", headers), tag) == {expected}
        # an attribute match on the other project's data finds nothing
        assert await _search(client, f"{root}/{level}?PatientID=ALPHA-1", headers) == []
    answer = await _search(client, f"{root}/studies", archive.headers["admin"])
    studies = _values(answer, STUDY_UID)
    if root == "/dicomweb":
        assert studies == {archive.alpha.study_uid, archive.beta.study_uid}
    else:
        assert studies == {archive.beta.study_uid}


async def test_retrievals_outside_the_callers_projects_are_not_found(
    client: Any, archive: Archive
) -> None:
    a = archive.alpha
    headers = archive.headers["wrong-project"]
    missing = await client.get("/dicomweb/studies/1.2.3.4.5", headers=headers)
    hidden = await client.get(f"/dicomweb/studies/{a.study_uid}", headers=headers)
    assert missing.status == hidden.status == 404
    assert (await missing.json()) == (await hidden.json())  # existence is not revealed
    ok = await client.get(
        f"/dicomweb/projects/alpha/studies/{a.study_uid}/series/{a.series_uid}"
        f"/instances/{a.sop_uid}",
        headers={
            **archive.headers["wrong-role"],
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        },
    )
    assert ok.status == 200
    # the project in the URL must hold the instance
    moved = await client.get(
        f"/dicomweb/projects/beta/studies/{a.study_uid}", headers=archive.headers["admin"]
    )
    assert moved.status == 404


async def test_bulkdata_outside_the_callers_projects_is_not_found(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    a = archive.alpha
    instance = f"/studies/{a.study_uid}/series/{a.series_uid}/instances/{a.sop_uid}"
    accept = {"Accept": OCTETS}
    pixels = pydicom.dcmread(archive.files[a.sop_uid]).PixelData

    reader = await client.get(
        f"/dicomweb{instance}/bulkdata/7FE00010",
        headers={**archive.headers["wrong-role"], **accept},
    )
    assert reader.status == 200
    (part,) = split_multipart(reader.headers["Content-Type"], await reader.read())
    assert part.body == pixels

    beta = {**archive.headers["wrong-project"], **accept}
    missing = await client.get(
        f"/dicomweb{instance.replace(a.sop_uid, '1.2.3.4.5')}/bulkdata/7FE00010", headers=beta
    )
    assert missing.status == 404
    for path in (
        f"/dicomweb{instance}/bulkdata/7FE00010",
        f"/dicomweb/projects/beta{instance}/bulkdata/7FE00010",
    ):
        hidden = await client.get(path, headers=beta)
        assert hidden.status == 404, path
        assert (await hidden.json()) == (await missing.json()), path
    refused = await client.get(
        f"/dicomweb/projects/alpha{instance}/bulkdata/7FE00010", headers=beta
    )
    assert refused.status == 403
    # the instance's study in the URL must be its own
    wrong_study = instance.replace(a.study_uid, archive.beta.study_uid)
    response = await client.get(
        f"/dicomweb{wrong_study}/bulkdata/7FE00010", headers={**archive.headers["admin"], **accept}
    )
    assert response.status == 404
