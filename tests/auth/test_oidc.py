"""OIDC bearer JWTs: accepted only when signed by a configured key, for us, from our issuer."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cloudpacs.auth.oidc import JwtVerifier
from cloudpacs.auth.principal import Role
from cloudpacs.errors import ConfigError, Unauthenticated
from tests.auth.idp import AUDIENCE, CLAIM, ISSUER, Idp


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    return Idp.create(tmp_path)


def verifier(idp: Idp, leeway: float = 30) -> JwtVerifier:
    return JwtVerifier(ISSUER, AUDIENCE, str(idp.jwks_path), ("RS256", "ES256"), leeway, CLAIM)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_signed_tokens_give_their_grants(idp: Idp, alg: str) -> None:
    principal = await verifier(idp).verify(idp.token({"alpha": "contributor"}, alg=alg))
    assert principal.subject == "jwt-user" and principal.credential == "jwt"
    assert principal.allows(Role.CONTRIBUTOR, "alpha") and not principal.allows(Role.READER, "b")


async def test_clock_skew_is_tolerated_up_to_the_leeway(idp: Idp) -> None:
    just_expired = idp.token({"alpha": "reader"}, expires_in=-10)
    assert (await verifier(idp, leeway=30).verify(just_expired)).subject == "jwt-user"
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier(idp, leeway=0).verify(just_expired)


async def test_bad_tokens_are_refused(idp: Idp) -> None:
    v = verifier(idp)
    now = int(time.time())
    claims = {"sub": "m", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, CLAIM: {"*": "admin"}}
    # a shared-secret token (HS256): never accepted, whatever the secret
    hmac_signed = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "rsa1"})
    cases = {
        "forged signature": idp.forged({"*": "admin"}),
        "alg none": idp.unsigned({"*": "admin"}),
        "HS256": hmac_signed,
        "wrong audience": idp.token({"*": "admin"}, audience="other"),
        "wrong issuer": idp.token({"*": "admin"}, issuer="https://evil.example"),
        "garbage": "not.a.jwt",
    }
    for name, token in cases.items():
        with pytest.raises(Unauthenticated):
            await v.verify(token)
        assert name


async def test_unknown_roles_in_the_claim_are_refused(idp: Idp) -> None:
    with pytest.raises(Unauthenticated, match="unknown role"):
        await verifier(idp).verify(idp.token({"alpha": "superuser"}))


def test_an_unreadable_jwks_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot load a JWKS"):
        JwtVerifier(ISSUER, AUDIENCE, str(tmp_path / "bad.json"), ("RS256",), 0, CLAIM)


async def test_keys_can_come_from_a_jwks_url(idp: Idp) -> None:
    jwks = idp.jwks_path.read_bytes()

    async def serve_jwks(request: web.Request) -> web.Response:
        return web.Response(body=jwks, content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve_jwks)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/.well-known/jwks.json"))
        v = JwtVerifier(ISSUER, AUDIENCE, url, ("RS256", "ES256"), 0, CLAIM)
        assert (await v.verify(idp.token({"alpha": "reader"}))).subject == "jwt-user"
        with pytest.raises(Unauthenticated):
            await v.verify(idp.forged({"alpha": "reader"}))
