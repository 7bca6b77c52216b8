"""Every route of the URL table x every kind of credential, with the expected status and an
audit record of each request (its action, outcome, client, UIDs and project); real
deletions; deny by default for a route without an access rule."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cloudpacs.auth.authenticator import Authenticator
from cloudpacs.http.app import create_app
from cloudpacs.http.routes import PROJECT_ROOT, route_table
from cloudpacs.http.services import SERVICE_ROOT
from cloudpacs.runtime import Runtime
from tests.factory import Spec
from tests.http.secured import (  # noqa: F401  (fixtures)
    ALL,
    DEFAULT_PROJECTS,
    UNAUTHENTICATED,
    USERS,
    Archive,
    archive_fixture,
    audit_records,
    idp_fixture,
    secured_settings,
)
from tests.http.test_stow import dicom_bytes, multipart

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


@dataclass(frozen=True)
class Expect:
    """What a route answers: `ok` to a caller with the role, `outsider` to beta's admin on a
    /dicomweb/ route naming alpha's data (under /dicomweb/projects/alpha/ it gets 403)."""

    action: str
    kind: str  # public, read, store, delete, admin
    ok: int = 200
    outsider: int = 404

    def status(self, credential: str, under_alpha: bool) -> int:
        if self.kind == "public":
            return self.ok  # no credential is looked at
        if credential in UNAUTHENTICATED:
            return 401
        if self.kind == "admin":  # role admin over every project
            return self.ok if credential == "admin" else 403
        if credential in ("admin", "alpha-admin"):
            return self.ok
        if credential in ("jwt-reader", "wrong-role"):  # readers of alpha
            return self.ok if self.kind == "read" else 403
        return 403 if under_alpha else self.outsider  # wrong-project: beta's admin


# The DICOMweb routes, relative to either root.
DICOMWEB = {
    ("GET", "/studies"): Expect("search", "read", outsider=200),  # beta's study only
    ("GET", "/series"): Expect("search", "read", outsider=200),
    ("GET", "/instances"): Expect("search", "read", outsider=200),
    ("GET", STUDY + "/series"): Expect("search", "read", outsider=204),
    ("GET", STUDY + "/instances"): Expect("search", "read", outsider=204),
    ("GET", SERIES + "/instances"): Expect("search", "read", outsider=204),
    # beta's admin stores a new study into its default project beta; alpha's study: refused
    ("POST", "/studies"): Expect("store", "store", outsider=200),
    ("POST", STUDY): Expect("store", "store", outsider=409),
    **{
        (method, path + suffix): Expect(action, kind)
        for path in (STUDY, SERIES, INSTANCE)
        for method, suffix, action, kind in (
            ("GET", "", "retrieve", "read"),
            ("GET", "/metadata", "retrieve", "read"),
            ("DELETE", "", "delete", "delete"),
        )
    },
    ("GET", INSTANCE + "/frames/{frames}"): Expect("retrieve", "read"),
    ("GET", INSTANCE + "/bulkdata/{path:.+}"): Expect("retrieve", "read"),
}
OTHERS = {
    ("GET", "/healthz"): Expect("health", "public"),
    ("GET", "/readyz"): Expect("health", "public"),
    ("GET", "/metrics"): Expect("health", "public"),
    ("GET", "/admin/tokens"): Expect("token.list", "admin"),
    ("POST", "/admin/tokens"): Expect("token.create", "admin", ok=201),
    ("DELETE", "/admin/tokens/{token_id}"): Expect("token.revoke", "admin", ok=204),
    ("GET", "/admin/config"): Expect("config.read", "admin"),
}


def expectation(method: str, template: str) -> Expect | None:
    for root in (PROJECT_ROOT, SERVICE_ROOT):
        if template.startswith(root + "/"):
            return DICOMWEB.get((method, template.removeprefix(root)))
    return OTHERS.get((method, template))


def test_every_route_has_a_matrix_entry() -> None:
    """A route added to routes.py without an entry here fails this test."""
    routes = [(method, template) for method, template, _, _ in route_table()]
    missing = [route for route in routes if expectation(*route) is None]
    assert not missing, f"routes without a matrix entry: {missing}"
    assert len(routes) == len(set(routes)) == 2 * len(DICOMWEB) + len(OTHERS)


def concrete(template: str, a: Archive) -> str:
    values = {
        "project": "alpha",
        "study": a.alpha.study_uid,
        "series": a.alpha.series_uid,
        "instance": a.alpha.sop_uid,
        "frames": "1",
        "path:.+": "7FE00010",
        "token_id": a.spare_token,
    }
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template)


def body(method: str, template: str, a: Archive) -> tuple[bytes | None, dict[str, str]]:
    if method == "POST" and template.endswith("/admin/tokens"):
        grant = b'{"subject": "new", "grants": {"alpha": "reader"}, "days": 1}'
        return grant, {"Content-Type": "application/json"}
    if method == "POST":  # STOW-RS: a new study, or a new instance of alpha's study
        spec = Spec(study_uid=a.alpha.study_uid) if template.endswith(STUDY) else Spec()
        data, content_type = multipart([("application/dicom", dicom_bytes(spec)[1])])
        return data, {"Content-Type": content_type}
    return None, {}


def outcome(status: int) -> str:
    return {401: "denied", 403: "denied", 404: "not-found"}.get(
        status, "ok" if status < 400 else "failed"
    )


def audited(
    template: str, expect: Expect, credential: str, status: int, a: Archive
) -> dict[str, Any]:
    """The fields of the audit record a matrix request must leave."""
    under_alpha = template.startswith(PROJECT_ROOT)
    names = "{study}" in template
    if under_alpha:
        project: str | None = "alpha"
    elif expect.kind == "store" and status in (200, 409):  # the project it stored into
        project = DEFAULT_PROJECTS[credential]
    else:
        project = "alpha" if names else None  # the study's project, when the URL names one
    return {
        "action": expect.action,
        "outcome": outcome(status),
        "client": "127.0.0.1",
        "user": USERS.get(credential, "-"),
        "project": project,
        "study": a.alpha.study_uid if names else None,
        "series": a.alpha.series_uid if "{series}" in template else None,
        "instance": a.alpha.sop_uid if "{instance}" in template else None,
    }


async def test_every_route_against_every_credential_is_answered_and_audited(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    sent: Counter[tuple[str, str, int, str]] = Counter()
    expected_records: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    wrong = []
    for method, template, _, _ in route_table():
        expect = expectation(method, template)
        assert expect is not None, (method, template)
        path = concrete(template, archive)
        for credential in ALL:
            data, extra = body(method, template, archive)
            headers = {**archive.headers[credential], **extra}
            response = await client.request(method, path, data=data, headers=headers)
            await response.read()
            want = expect.status(credential, template.startswith(PROJECT_ROOT))
            if response.status != want:
                wrong.append((credential, method, path, response.status, want))
            if response.status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if expect.kind == "delete" and response.status == 200:
                await archive.restore_alpha(runtime)  # deleted for real: put it back
            if expect.kind == "public" and response.status == 200:
                continue  # health and metrics are not audited
            key = (method, path, response.status, USERS.get(credential, "-"))
            fields = audited(template, expect, credential, response.status, archive)
            assert expected_records.setdefault(key, fields) == fields, key
            sent[key] += 1
    assert not wrong, "\n".join(map(str, wrong))

    recorded: Counter[tuple[str, str, int, str]] = Counter()
    for record in await audit_records(runtime):
        if "method" not in record:
            continue  # a store.instance record
        key = (record["method"], record["path"], record["status"], record["user"])
        assert key in expected_records, f"unexpected audit record {record}"
        got = {field: record.get(field) for field in expected_records[key]}
        assert got == expected_records[key], key
        recorded[key] += 1
    assert recorded == sent


async def test_denied_requests_are_audited_with_the_reason(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    study = archive.alpha.study_uid
    await client.get(f"/dicomweb/studies/{study}", headers=archive.headers["revoked"])
    await client.get(
        f"/dicomweb/projects/alpha/studies/{study}", headers=archive.headers["wrong-project"]
    )
    records = await audit_records(runtime, study=study)
    denied = [r for r in records if r["outcome"] == "denied"]
    assert {r["status"] for r in denied} == {401, 403}
    assert any(r.get("detail") == "token revoked" for r in denied)
    assert any("no reader role in project alpha" in r.get("detail", "") for r in denied)
    assert all(r["client"] == "127.0.0.1" and r["action"] == "retrieve" for r in denied)
    assert all(r["project"] == "alpha" for r in denied)


async def test_a_beta_admin_cannot_delete_alphas_study_and_alphas_admin_can(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    a = archive.alpha
    db = runtime.database.db
    files_before = await db["fs.files"].count_documents({})
    study = f"/dicomweb/studies/{a.study_uid}"
    series = f"{study}/series/{a.series_uid}"
    beta = archive.headers["wrong-project"]
    missing = await client.delete("/dicomweb/studies/1.2.3.4.5", headers=beta)
    for path in (study, series, f"{series}/instances/{a.sop_uid}"):
        for root in ("", "/projects/beta"):
            hidden = await client.delete(
                path.replace("/dicomweb", "/dicomweb" + root), headers=beta
            )
            assert hidden.status == missing.status == 404
            assert await hidden.json() == await missing.json()  # existence not revealed
    refused = await client.delete(
        study.replace("/dicomweb", "/dicomweb/projects/alpha"), headers=beta
    )
    assert refused.status == 403
    assert await db["instances"].count_documents({"study": a.study_uid}) == 2
    assert await db["fs.files"].count_documents({}) == files_before
    reader = {
        **archive.headers["wrong-role"],
        "Accept": "multipart/related; type=application/dicom",
    }
    assert (await client.get(study, headers=reader)).status == 200

    response = await client.delete(study, headers=archive.headers["alpha-admin"])
    assert response.status == 200
    assert (await response.json())["deleted_instances"] == 2
    assert await db["instances"].count_documents({"study": a.study_uid}) == 0
    assert await db["study_projects"].find_one({"_id": a.study_uid}) is None
    assert await db["fs.files"].count_documents({}) == files_before - 2
    assert await db["instances"].find_one({"_id": archive.beta.sop_uid}) is not None
    assert (await client.get(study, headers=reader)).status == 404

    deletions = await audit_records(runtime, action="delete", study=a.study_uid)
    by_user = Counter((r["user"], r["outcome"], r["status"]) for r in deletions)
    assert by_user == {("bo", "not-found", 404): 6, ("bo", "denied", 403): 1, ("al", "ok", 200): 1}
    done = next(r for r in deletions if r["user"] == "al")
    assert (done["project"], done["detail"], done["client"]) == (
        "alpha",
        "2 instances",
        "127.0.0.1",
    )
    # the study was gone when the records were written: the deletion named its project
    projects = Counter(
        (r["path"].startswith("/dicomweb/projects/beta"), r["project"]) for r in deletions
    )
    assert projects == {(False, "alpha"): 5, (True, "beta"): 3}  # else the URL's project


async def test_stow_stores_into_the_url_project_or_the_callers_default(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    spec, data = dicom_bytes()
    payload, content_type = multipart([("application/dicom", data)])
    headers = {**archive.headers["wrong-project"], "Content-Type": content_type}
    response = await client.post("/dicomweb/studies", data=payload, headers=headers)
    assert response.status == 200
    answer = await response.json(content_type=None)
    assert "/dicomweb/studies/" in answer["00081190"]["Value"][0]
    doc = await runtime.database.db["instances"].find_one({"_id": spec.sop_uid})
    assert doc is not None and doc["project"] == "beta"
    study = await runtime.database.db["studies"].find_one({"_id": spec.study_uid})
    assert study is not None and study["project"] == "beta"
    # the same study cannot also go into alpha: a study belongs to exactly one project
    other = Spec(study_uid=spec.study_uid)
    _, data2 = dicom_bytes(other)
    payload, content_type = multipart([("application/dicom", data2)])
    response = await client.post(
        "/dicomweb/projects/alpha/studies",
        data=payload,
        headers={**archive.headers["admin"], "Content-Type": content_type},
    )
    assert response.status == 409
    answer = await response.json(content_type=None)
    assert "another project" in answer["00081198"]["Value"][0]["00000902"]["Value"][0]
    assert await runtime.database.db["instances"].find_one({"_id": other.sop_uid}) is None


async def test_admin_deletes_a_study_and_nothing_is_left(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    a = archive.alpha
    db = runtime.database.db
    files_before = await db["fs.files"].count_documents({})
    path = f"/dicomweb/projects/alpha/studies/{a.study_uid}"
    assert (await client.delete(path, headers=archive.headers["wrong-role"])).status == 403
    response = await client.delete(path, headers=archive.headers["admin"])
    assert response.status == 200
    assert (await response.json())["deleted_instances"] == 2
    assert await db["instances"].count_documents({"study": a.study_uid}) == 0
    assert await db["studies"].find_one({"_id": a.study_uid}) is None
    assert await db["series"].find_one({"_id": a.series_uid}) is None
    assert await db["study_projects"].find_one({"_id": a.study_uid}) is None
    assert await db["fs.files"].count_documents({}) == files_before - 2
    assert await db["uploads"].count_documents({}) == 0
    assert (await client.get(path, headers=archive.headers["admin"])).status == 404


async def _unruled(request: web.Request) -> web.Response:
    return web.Response(text="no access rule, never served")


async def test_a_route_without_an_access_rule_is_refused(
    archive: Archive, runtime: Runtime, tmp_path: Path
) -> None:
    """Deny by default: a handler routes.py gives no Rule is never reached, whoever calls,
    with authentication on or off."""
    secured = runtime.services()
    open_access = dataclasses.replace(
        secured, authenticator=Authenticator(runtime.tokens, None, enabled=False)
    )
    path = f"/dicomweb/unruled/{archive.alpha.study_uid}"
    for services, credentials in ((secured, ("admin", "none")), (open_access, ("none",))):
        app = create_app(services)
        app.router.add_get("/dicomweb/unruled/{study}", _unruled)
        async with TestClient(TestServer(app, host="127.0.0.1")) as c:
            for credential in credentials:
                response = await c.get(path, headers=archive.headers[credential])
                assert response.status == 403
                assert await response.json() == {"error": "forbidden"}
    records = [r for r in await audit_records(runtime) if r.get("path") == path]
    assert len(records) == 3
    assert all(
        (r["action"], r["outcome"], r["status"], r["detail"])
        == ("unknown", "denied", 403, "forbidden")
        for r in records
    )
