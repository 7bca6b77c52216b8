"""STOW-RS and projects on a secured archive: a SOP Instance UID held by another project or
study is refused without revealing anything of it (both conflict policies); one audit record
per instance; and a default project that is not one valid name (token or JWT) is refused
with a clear 400/401, never stored."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from cloudpacs.ingest import UID_IN_USE
from cloudpacs.runtime import Runtime
from cloudpacs.storage.schema import TOKENS
from tests.auth.idp import Idp
from tests.factory import Spec
from tests.http.secured import (  # noqa: F401  (fixtures)
    Archive,
    archive_fixture,
    audit_records,
    idp_fixture,
    secured_settings,
)
from tests.http.test_stow import (
    CONFLICT,
    FAILED_SOP_SEQUENCE,
    dicom_bytes,
    failure_of,
    items,
    multipart,
    sop_of,
)
from tests.http.test_wado import split_multipart

DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def stow(
    client: Any, url: str, headers: dict[str, str], *specs: Spec, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    parts = [("application/dicom", dicom_bytes(spec)[1]) for spec in specs]
    if raw is not None:
        parts.append(("application/dicom", raw))
    body, content_type = multipart(parts)
    response = await client.post(url, data=body, headers={**headers, "Content-Type": content_type})
    answer = await response.json(content_type=None) if response.status != 401 else {}
    return response.status, answer


async def stored_file(client: Any, archive: Archive, spec: Spec) -> bytes:
    url = f"/dicomweb/studies/{spec.study_uid}/series/{spec.series_uid}/instances/{spec.sop_uid}"
    response = await client.get(url, headers={**archive.headers["admin"], "Accept": DICOM})
    assert response.status == 200
    (part,) = split_multipart(response.headers["Content-Type"], await response.read())
    return part.body


@pytest.mark.parametrize("policy", ["keep-first", "overwrite"])
async def test_stow_of_an_instance_uid_held_elsewhere_is_refused_and_reveals_nothing(
    client: Any, archive: Archive, runtime: Runtime, policy: str
) -> None:
    runtime.ingestor.conflict_policy = policy
    a, db = archive.alpha, runtime.database.db
    bo = archive.headers["wrong-project"]  # admin (so contributor) of beta only
    before = await stored_file(client, archive, a)
    assert before == archive.files[a.sop_uid].read_bytes()
    files_before = await db["fs.files"].count_documents({})
    answers = []
    for url in ("/dicomweb/projects/beta/studies", "/dicomweb/studies"):  # beta by default
        intruder = Spec(patient_id="BETA-1", sop_uid=a.sop_uid)  # alpha's UID, a beta study
        status, answer = await stow(client, url, bo, intruder)
        assert status == 409
        assert await db["studies"].find_one({"_id": intruder.study_uid}) is None
        assert await db["study_projects"].find_one({"_id": intruder.study_uid}) is None
        answers.append(answer)
    # the same UID in another study of beta's own: the same answer, so nothing tells them apart
    status, answer = await stow(client, "/dicomweb/studies", bo, Spec(sop_uid=archive.beta.sop_uid))
    answers.append(answer)
    for answer in answers:
        (failed,) = items(answer, FAILED_SOP_SEQUENCE)
        assert failure_of(failed) == CONFLICT
        assert failed["00000902"]["Value"] == [UID_IN_USE[:64]]
        assert set(answer) == {FAILED_SOP_SEQUENCE}  # no retrieve URL, no referenced item
    assert {sop_of(items(x, FAILED_SOP_SEQUENCE)[0]) for x in answers[:2]} == {a.sop_uid}

    doc = await db["instances"].find_one({"_id": a.sop_uid})
    assert doc is not None and (doc["project"], doc["study"]) == ("alpha", a.study_uid)
    assert await stored_file(client, archive, a) == before  # alpha's bytes untouched
    assert await db["fs.files"].count_documents({}) == files_before
    assert await db["uploads"].count_documents({}) == 0

    records = await audit_records(runtime, user="bo", action="store.instance")
    assert [(r["outcome"], r["project"], r["detail"]) for r in records] == [
        ("rejected", "beta", UID_IN_USE)
    ] * 3
    requests = await audit_records(runtime, user="bo", action="store")
    assert [(r["outcome"], r["status"], r["project"]) for r in requests] == [
        ("failed", 409, "beta")
    ] * 3


async def test_stow_leaves_one_audit_record_per_instance(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    a = archive.alpha
    new = Spec(study_uid=a.study_uid, series_uid=a.series_uid, instance_number=3)
    duplicate = archive.files[archive.alpha2.sop_uid].read_bytes()
    status, _ = await stow(
        client,
        f"/dicomweb/projects/alpha/studies/{a.study_uid}",
        archive.headers["alpha-admin"],
        new,
        raw=duplicate,
    )
    assert status == 200
    body, content_type = multipart([("application/dicom", b"not dicom at all")])
    await client.post(
        f"/dicomweb/projects/alpha/studies/{a.study_uid}",
        data=body,
        headers={**archive.headers["alpha-admin"], "Content-Type": content_type},
    )
    records = await audit_records(runtime, user="al", action="store.instance")
    got = [
        (r["outcome"], r["project"], r.get("study"), r.get("series"), r.get("instance"))
        for r in records
    ]
    # the parts of one request are ingested at once: their records come as they finish
    assert sorted(got[:2]) == [
        ("duplicate", "alpha", a.study_uid, a.series_uid, archive.alpha2.sop_uid),
        ("stored", "alpha", a.study_uid, a.series_uid, new.sop_uid),
    ]
    assert got[2:] == [("rejected", "alpha", None, None, None)]
    assert "not a DICOM Part 10 file" in records[2]["detail"]
    requests = await audit_records(runtime, user="al", action="store")
    assert [(r["outcome"], r["status"], r["project"], r["study"]) for r in requests] == [
        ("ok", 200, "alpha", a.study_uid),
        ("failed", 409, "alpha", a.study_uid),
    ]


BAD_DEFAULT_PROJECTS = [["alpha", "beta"], 42, "Alpha", "alpha\n", "", "*", {"p": 1}]


@pytest.mark.parametrize("bad", BAD_DEFAULT_PROJECTS, ids=repr)
async def test_a_token_default_project_must_be_one_project_name(
    client: Any, archive: Archive, runtime: Runtime, bad: Any
) -> None:
    tokens = runtime.database.db[TOKENS]
    before = await tokens.count_documents({})
    response = await client.post(
        "/admin/tokens",
        json={"subject": "x", "grants": {"*": "contributor"}, "default_project": bad},
        headers=archive.headers["admin"],
    )
    assert response.status == 400
    assert "is not one project name" in (await response.json())["error"]
    assert await tokens.count_documents({}) == before
    ok = await client.post(
        "/admin/tokens",
        json={"subject": "x", "grants": {"*": "contributor"}, "default_project": "gamma"},
        headers=archive.headers["admin"],
    )
    assert ok.status == 201 and (await ok.json())["default_project"] == "gamma"


@pytest.mark.parametrize("bad", BAD_DEFAULT_PROJECTS, ids=repr)
async def test_a_jwt_default_project_must_be_one_project_name(
    client: Any, archive: Archive, runtime: Runtime, idp: Idp, bad: Any
) -> None:
    db = runtime.database.db
    token = idp.token({"*": "contributor"}, extra={"cloudpacs_default_project": bad})
    spec = Spec()
    status, _ = await stow(client, "/dicomweb/studies", {"Authorization": f"Bearer {token}"}, spec)
    assert status == 401
    assert await db["instances"].find_one({"_id": spec.sop_uid}) is None
    (record,) = await audit_records(runtime, action="store", user="-")
    assert "cloudpacs_default_project must be one project name" in record["detail"]


async def test_a_jwt_default_project_is_where_stow_stores(
    client: Any, archive: Archive, runtime: Runtime, idp: Idp
) -> None:
    token = idp.token({"*": "contributor"}, extra={"cloudpacs_default_project": "gamma"})
    spec = Spec()
    status, _ = await stow(client, "/dicomweb/studies", {"Authorization": f"Bearer {token}"}, spec)
    assert status == 200
    doc = await runtime.database.db["instances"].find_one({"_id": spec.sop_uid})
    assert doc is not None and doc["project"] == "gamma"


async def test_a_stored_token_with_a_bad_default_project_stores_nothing(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    """A token record written before default projects were checked (here: by hand)."""
    new = await runtime.tokens.create("old", {"*": "contributor"}, 1)
    await runtime.database.db[TOKENS].update_one(
        {"_id": new.record["_id"]}, {"$set": {"default_project": ["alpha", "beta"]}}
    )
    spec = Spec()
    status, _ = await stow(
        client, "/dicomweb/studies", {"Authorization": f"Bearer {new.token}"}, spec
    )
    assert status == 401
    assert await runtime.database.db["instances"].count_documents({"project": {"$type": 4}}) == 0
    assert await runtime.database.db["instances"].find_one({"_id": spec.sop_uid}) is None
    assert Counter(r["status"] for r in await audit_records(runtime, action="store")) == {401: 1}


async def test_two_projects_stowing_one_new_study_at_once_one_wins(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    study = Spec().study_uid
    senders = [
        ("/dicomweb/projects/alpha/studies", archive.headers["alpha-admin"]),
        ("/dicomweb/studies", archive.headers["wrong-project"]),  # beta, its default
    ] * 4
    specs = [Spec(study_uid=study, instance_number=n) for n in range(len(senders))]
    answers = await asyncio.gather(
        *(
            stow(client, url, headers, spec)
            for (url, headers), spec in zip(senders, specs, strict=True)
        )
    )
    db = runtime.database.db
    claim = await db["study_projects"].find_one({"_id": study})
    assert claim is not None
    winner = claim["project"]
    for (url, _), spec, (status, answer) in zip(senders, specs, answers, strict=True):
        mine = ("alpha" if "/alpha/" in url else "beta") == winner
        assert status == (200 if mine else 409), (url, answer)
        doc = await db["instances"].find_one({"_id": spec.sop_uid})
        assert (doc is not None) == mine
    assert await db["instances"].distinct("project", {"study": study}) == [winner]
    rollup = await db["studies"].find_one({"_id": study})
    assert rollup is not None and (rollup["project"], rollup["instance_count"]) == (winner, 4)
    assert await db["uploads"].count_documents({}) == 0
