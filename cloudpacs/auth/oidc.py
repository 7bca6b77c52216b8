"""OAuth2/OIDC bearer JWTs: signature (RS256/ES256 ... from a JWKS file or URL), issuer,
audience, expiry with clock skew. `alg=none` and HMAC algorithms are never accepted.

Grants come from a claim (jwt_projects_claim) holding {"project": "role"}, "*" for every
project; the subject is `sub`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt

from cloudpacs.auth.principal import Principal, parse_grants
from cloudpacs.errors import ConfigError, InvalidRequest, Unauthenticated
from cloudpacs.projects import PROJECT_NAME_RULE, is_project_name

JWKS_CACHE_SECONDS = 300
DEFAULT_PROJECT_CLAIM = "cloudpacs_default_project"


class JwtVerifier:
    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: str,
        algorithms: tuple[str, ...],
        leeway_seconds: float,
        projects_claim: str,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway = leeway_seconds
        self.projects_claim = projects_claim
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=JWKS_CACHE_SECONDS)
        else:
            try:
                self._keys = jwt.PyJWKSet.from_json(Path(jwks).read_text())
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"jwt_jwks: cannot load a JWKS from {jwks}: {exc}") from exc

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in self.algorithms:
                raise Unauthenticated(f"JWT algorithm {header.get('alg')!r} is not accepted")
            key = await self._signing_key(token, header)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("JWT expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("JWT audience is not this service") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("JWT issuer is not trusted") from None
        except (jwt.PyJWTError, ValueError, KeyError):
            raise Unauthenticated("invalid JWT") from None
        raw = claims.get(self.projects_claim) or {}
        if isinstance(raw, str):
            raw = json.loads(raw) if raw.startswith("{") else {}
        try:
            grants = parse_grants(raw if isinstance(raw, dict) else {})
        except InvalidRequest as exc:
            raise Unauthenticated(f"JWT claim {self.projects_claim}: {exc}") from None
        default_project = claims.get(DEFAULT_PROJECT_CLAIM)
        if default_project is not None and not is_project_name(default_project):
            # a list or a bad name must never become an instance's project
            raise Unauthenticated(
                f"JWT claim {DEFAULT_PROJECT_CLAIM} must be one project name ({PROJECT_NAME_RULE})"
            )
        return Principal(
            subject=str(claims["sub"]),
            grants=grants,
            default_project=default_project,
            credential="jwt",
        )

    async def _signing_key(self, token: str, header: dict[str, Any]) -> Any:
        if self._client is not None:
            # PyJWKClient fetches with urllib (blocking), so in a thread; it caches the keys
            return (await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)).key
        assert self._keys is not None
        kid = header.get("kid")
        keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        if not keys:
            raise Unauthenticated("JWT signed by an unknown key")
        return keys[0].key
