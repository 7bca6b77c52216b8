"""Every endpoint x every kind of credential, with the expected status and an audit record
for each request; project isolation at every QIDO level and in WADO-RS."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudpacs.config import Settings
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from cloudpacs.storage.audit import AuditStore
from cloudpacs.storage.instances import utcnow
from cloudpacs.storage.schema import TOKENS
from tests.auth.idp import AUDIENCE, ISSUER, Idp
from tests.factory import Spec, write_instance
from tests.http.test_stow import dicom_bytes, multipart

UNAUTHENTICATED = ("none", "expired", "revoked", "forged-jwt", "alg-none-jwt", "wrong-audience")
ALL = ("admin", "jwt-reader", "wrong-role", "wrong-project", *UNAUTHENTICATED)


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    return Idp.create(tmp_path)


@pytest.fixture
def settings(settings: Settings, idp: Idp) -> Settings:
    return dataclasses.replace(
        settings,
        auth_required=True,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks=str(idp.jwks_path),
    )


@dataclass
class Archive:
    alpha: Spec  # study with two instances in project alpha
    alpha2: Spec
    beta: Spec  # one instance in project beta
    headers: dict[str, dict[str, str]]
    spare_token: str


async def _ingest(runtime: Runtime, tmp: Path, spec: Spec, project: str) -> None:
    path = tmp / f"{spec.sop_uid}.dcm"
    write_instance(path, spec)
    result = await runtime.ingestor.ingest(path, Source("test", project=project))
    assert result.outcome is Outcome.STORED


@pytest.fixture
async def archive(runtime: Runtime, tmp_path: Path, idp: Idp) -> Archive:
    alpha = Spec(patient_id="ALPHA-1")
    alpha2 = Spec(
        patient_id="ALPHA-1",
        study_uid=alpha.study_uid,
        series_uid=alpha.series_uid,
        instance_number=2,
    )
    beta = Spec(patient_id="BETA-1")
    for spec, project in ((alpha, "alpha"), (alpha2, "alpha"), (beta, "beta")):
        await _ingest(runtime, tmp_path, spec, project)
    tokens = runtime.tokens
    admin = await tokens.create("root", {"*": "admin"}, 1)
    reader = await tokens.create("ann", {"alpha": "reader"}, 1)
    other = await tokens.create("bo", {"beta": "admin"}, 1, default_project="beta")
    expired = await tokens.create("old", {"alpha": "admin"}, 1)
    await runtime.database.db[TOKENS].update_one(
        {"_id": expired.record["_id"]}, {"$set": {"expires_at": utcnow() - timedelta(minutes=1)}}
    )
    revoked = await tokens.create("gone", {"alpha": "admin"}, 1)
    await tokens.revoke(revoked.record["_id"])
    spare = await tokens.create("spare", {"alpha": "reader"}, 1)
    bearer = {
        "admin": admin.token,
        "jwt-reader": idp.token({"alpha": "reader"}, alg="ES256"),
        "wrong-role": reader.token,
        "wrong-project": other.token,
        "expired": expired.token,
        "revoked": revoked.token,
        "forged-jwt": idp.forged({"*": "admin"}),
        "alg-none-jwt": idp.unsigned({"*": "admin"}),
        "wrong-audience": idp.token({"*": "admin"}, audience="someone-else"),
    }
    headers = {name: {"Authorization": f"Bearer {value}"} for name, value in bearer.items()}
    headers["none"] = {}
    return Archive(alpha, alpha2, beta, headers, spare.record["_id"])


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    kind: str  # read, store, delete, admin
    ok: int = 200
    hidden: int = 404  # a valid caller without access to alpha, on a /dicomweb route

    def expected(self, credential: str) -> int:
        if credential in UNAUTHENTICATED:
            return 401
        if credential == "admin":
            return self.ok
        if credential in ("jwt-reader", "wrong-role"):
            return self.ok if self.kind == "read" else 403
        # wrong-project: a beta admin
        if self.kind == "admin" or "/projects/alpha/" in self.path:
            return 403
        return self.hidden


def endpoints(a: Archive, spare_token: str) -> list[Endpoint]:
    study, series, sop = a.alpha.study_uid, a.alpha.series_uid, a.alpha.sop_uid
    out = []
    for root in ("/dicomweb", "/dicomweb/projects/alpha"):
        s = f"{root}/studies/{study}"
        se = f"{s}/series/{series}"
        i = f"{se}/instances/{sop}"
        out += [
            Endpoint("GET", f"{root}/studies", "read", hidden=200),  # beta's study only
            Endpoint("GET", f"{root}/series", "read", hidden=200),
            Endpoint("GET", f"{root}/instances", "read", hidden=200),
            Endpoint("GET", f"{s}/series", "read", hidden=204),
            Endpoint("GET", f"{s}/instances", "read", hidden=204),
            Endpoint("GET", f"{se}/instances", "read", hidden=204),
            Endpoint("GET", s, "read"),
            Endpoint("GET", se, "read"),
            Endpoint("GET", i, "read"),
            Endpoint("GET", f"{s}/metadata", "read"),
            Endpoint("GET", f"{se}/metadata", "read"),
            Endpoint("GET", f"{i}/metadata", "read"),
            Endpoint("GET", f"{i}/frames/1", "read"),
            Endpoint("DELETE", f"{se}/instances/1.2.3.999", "delete", ok=404),
        ]
    out += [
        Endpoint("POST", "/dicomweb/projects/alpha/studies", "store"),
        Endpoint("GET", "/admin/tokens", "admin"),
        Endpoint("POST", "/admin/tokens", "admin", ok=201),
        Endpoint("DELETE", f"/admin/tokens/{spare_token}", "admin", ok=204),
        Endpoint("GET", "/admin/config", "admin"),
    ]
    return out


def _body(endpoint: Endpoint) -> tuple[bytes | None, dict[str, str]]:
    if endpoint.method == "POST" and endpoint.kind == "store":
        body, content_type = multipart([("application/dicom", dicom_bytes()[1])])
        return body, {"Content-Type": content_type}
    if endpoint.method == "POST":
        return b'{"subject": "new", "grants": {"alpha": "reader"}, "days": 1}', {
            "Content-Type": "application/json"
        }
    return None, {}


async def test_every_endpoint_against_every_credential_is_answered_and_audited(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    sent: Counter[tuple[str, str, int, str]] = Counter()
    wrong = []
    for endpoint in endpoints(archive, archive.spare_token):
        for credential in ALL:
            body, extra = _body(endpoint)
            headers = {**archive.headers[credential], **extra}
            response = await client.request(
                endpoint.method, endpoint.path, data=body, headers=headers
            )
            await response.read()
            expected = endpoint.expected(credential)
            if response.status != expected:
                wrong.append(
                    (credential, endpoint.method, endpoint.path, response.status, expected)
                )
            if response.status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            sent[(endpoint.method, endpoint.path, response.status, credential)] += 1
    assert not wrong, "\n".join(map(str, wrong))

    await runtime.audit.flush()
    recorded: Counter[tuple[str, str, int, str]] = Counter()
    async for record in AuditStore(runtime.database).query():
        if "method" in record:
            recorded[(record["method"], record["path"], record["status"], record["user"])] += 1
    users = {
        "admin": "root",
        "jwt-reader": "jwt-user",
        "wrong-role": "ann",
        "wrong-project": "bo",
    }
    for (method, path, status, credential), count in sent.items():
        key = (method, path, status, users.get(credential, "-"))
        assert recorded[key] >= count, f"no audit record for {key}"


async def test_denied_requests_are_audited_with_the_reason(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    study = archive.alpha.study_uid
    await client.get(f"/dicomweb/studies/{study}", headers=archive.headers["revoked"])
    await client.get(
        f"/dicomweb/projects/alpha/studies/{study}", headers=archive.headers["wrong-project"]
    )
    await runtime.audit.flush()
    records = [r async for r in AuditStore(runtime.database).query(study=study)]
    denied = [r for r in records if r["outcome"] == "denied"]
    assert {r["status"] for r in denied} == {401, 403}
    assert any(r.get("detail") == "token revoked" for r in denied)
    assert any("no reader role in project alpha" in r.get("detail", "") for r in denied)
    assert all(r["client"] == "127.0.0.1" and r["action"] == "retrieve" for r in denied)


def _uids(answer: list[dict[str, Any]], tag: str) -> set[str]:
    return {item[tag]["Value"][0] for item in answer}


@pytest.mark.parametrize("root", ["/dicomweb", "/dicomweb/projects/beta"])
async def test_searches_return_only_the_callers_projects_at_every_level(
    client: Any, archive: Archive, root: str
) -> None:
    headers = archive.headers["wrong-project"]  # admin of beta only
    for level, tag, expected in (
        ("studies", "0020000D", archive.beta.study_uid),
        ("series", "0020000E", archive.beta.series_uid),
        ("instances", "00080018", archive.beta.sop_uid),
    ):
        response = await client.get(f"{root}/{level}", headers=headers)
        assert response.status == 200
        assert _uids(await response.json(content_type=None), tag) == {expected}
        # an attribute match on the other project's data finds nothing
        response = await client.get(f"{root}/{level}?PatientID=ALPHA-1", headers=headers)
        assert response.status == 204
    response = await client.get(f"{root}/studies", headers=archive.headers["admin"])
    studies = _uids(await response.json(content_type=None), "0020000D")
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


async def test_stow_stores_into_the_url_project_or_the_callers_default(
    client: Any, archive: Archive, runtime: Runtime
) -> None:
    spec, data = dicom_bytes()
    body, content_type = multipart([("application/dicom", data)])
    headers = {**archive.headers["wrong-project"], "Content-Type": content_type}
    response = await client.post("/dicomweb/studies", data=body, headers=headers)
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
    body, content_type = multipart([("application/dicom", data2)])
    response = await client.post(
        "/dicomweb/projects/alpha/studies",
        data=body,
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
