"""A secured archive for the security tests: authentication required, a JWT issuer, two
projects (alpha: one study of two instances; beta: one instance) and one credential of
every kind. Import the fixtures into a test module to use them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudpacs.config import Settings
from cloudpacs.ingest import Outcome, Source
from cloudpacs.runtime import Runtime
from cloudpacs.storage.audit import AuditStore
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.schema import TOKENS
from tests.auth.idp import AUDIENCE, ISSUER, Idp
from tests.factory import Spec, write_instance

UNAUTHENTICATED = ("none", "expired", "revoked", "forged-jwt", "alg-none-jwt", "wrong-audience")
# admin: "*"=admin; alpha-admin: admin of alpha only; jwt-reader, wrong-role: readers of alpha;
# wrong-project: admin of beta only
ALL = ("admin", "alpha-admin", "jwt-reader", "wrong-role", "wrong-project", *UNAUTHENTICATED)
USERS = {
    "admin": "root",
    "alpha-admin": "al",
    "jwt-reader": "jwt-user",
    "wrong-role": "ann",
    "wrong-project": "bo",
}
DEFAULT_PROJECTS = {"admin": "alpha", "alpha-admin": "alpha", "wrong-project": "beta"}


# Fixture functions are named *_fixture so that the modules importing them may take the
# fixture (`archive: Archive`) as a parameter without shadowing an import.
@pytest.fixture(name="idp")
def idp_fixture(tmp_path: Path) -> Idp:
    return Idp.create(tmp_path)


@pytest.fixture(name="settings")
def secured_settings(settings: Settings, idp: Idp) -> Settings:
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
    files: dict[str, Path]  # SOP Instance UID -> the file ingested

    async def restore_alpha(self, runtime: Runtime) -> None:
        """Store alpha's two instances again (after a test deleted them)."""
        for spec in (self.alpha, self.alpha2):
            await ingest_file(runtime, self.files[spec.sop_uid], "alpha")


async def ingest_file(runtime: Runtime, path: Path, project: str) -> None:
    result = await runtime.ingestor.ingest(path, Source("test", project=project))
    assert result.outcome in (Outcome.STORED, Outcome.DUPLICATE), result.reason


@pytest.fixture(name="archive")
async def archive_fixture(runtime: Runtime, tmp_path: Path, idp: Idp) -> Archive:
    alpha = Spec(patient_id="ALPHA-1")
    alpha2 = Spec(
        patient_id="ALPHA-1",
        study_uid=alpha.study_uid,
        series_uid=alpha.series_uid,
        instance_number=2,
    )
    beta = Spec(patient_id="BETA-1")
    files = {}
    for spec, project in ((alpha, "alpha"), (alpha2, "alpha"), (beta, "beta")):
        path = tmp_path / "archive" / f"{spec.sop_uid}.dcm"
        write_instance(path, spec)
        files[spec.sop_uid] = path
        await ingest_file(runtime, path, project)
    tokens = runtime.tokens
    admin = await tokens.create("root", {"*": "admin"}, 1, default_project="alpha")
    alpha_admin = await tokens.create("al", {"alpha": "admin"}, 1, default_project="alpha")
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
        "alpha-admin": alpha_admin.token,
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
    return Archive(alpha, alpha2, beta, headers, spare.record["_id"], files)


async def audit_records(runtime: Runtime, **query: Any) -> list[dict[str, Any]]:
    """The records matching `query` (AuditStore.query), the buffer written out first."""
    await runtime.audit.flush()
    return [record async for record in AuditStore(runtime.database).query(**query)]
