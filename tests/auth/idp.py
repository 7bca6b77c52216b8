"""A test identity provider: signing keys, a JWKS file, and JWTs good and bad."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.example.test"
AUDIENCE = "cloudpacs"
CLAIM = "cloudpacs_projects"


@dataclass
class Idp:
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    jwks_path: Path

    @classmethod
    def create(cls, folder: Path) -> Idp:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        keys = []
        for kid, alg, key in (("rsa1", "RS256", rsa_key), ("ec1", "ES256", ec_key)):
            algorithm = jwt.algorithms.get_default_algorithms()[alg]
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        path = folder / "jwks.json"
        path.write_text(json.dumps({"keys": keys}))
        return cls(rsa_key, ec_key, path)

    def token(
        self,
        grants: dict[str, str],
        *,
        alg: str = "RS256",
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        expires_in: float = 300,
        subject: str = "jwt-user",
        key: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "exp": now + int(expires_in),
            CLAIM: grants,
            **(extra or {}),
        }
        signing_key = key or (self.rsa_key if alg == "RS256" else self.ec_key)
        kid = "rsa1" if alg == "RS256" else "ec1"
        return jwt.encode(claims, signing_key, algorithm=alg, headers={"kid": kid})

    def forged(self, grants: dict[str, str]) -> str:
        """Right header and claims, signed by a key the service does not trust."""
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.token(grants, key=other)

    def unsigned(self, grants: dict[str, str]) -> str:
        """alg=none: a header and claims with an empty signature."""

        def part(value: dict[str, Any]) -> str:
            raw = json.dumps(value).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        now = int(time.time())
        claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, CLAIM: grants}
        return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa1'})}.{part(claims)}."
