"""Authorization header -> Principal, through an API token or a JWT."""

from __future__ import annotations

from cloudpacs.auth.oidc import JwtVerifier
from cloudpacs.auth.principal import OPEN_ACCESS, Principal
from cloudpacs.auth.tokens import TokenService, looks_like_token
from cloudpacs.errors import Unauthenticated


class Authenticator:
    def __init__(self, tokens: TokenService, jwt: JwtVerifier | None, enabled: bool) -> None:
        self.tokens = tokens
        self.jwt = jwt
        self.enabled = enabled

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return OPEN_ACCESS
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("authentication required: send Authorization: Bearer <token>")
        if looks_like_token(credential):
            return await self.tokens.verify(credential)
        if self.jwt is None:
            raise Unauthenticated("invalid token")
        return await self.jwt.verify(credential)
