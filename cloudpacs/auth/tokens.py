"""API tokens: random, shown once, stored only as a hash, with an expiry, revocable.

A token reads `cpt_<id>_<secret>`: the id finds the record by primary key, the secret (256
random bits) is compared with its stored SHA-256 in constant time. A slow password hash
would add nothing for secrets of that strength, and would cost every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cloudpacs.auth.principal import Principal, Role, parse_grants
from cloudpacs.errors import InvalidRequest, NotFound, Unauthenticated
from cloudpacs.projects import ALL_PROJECTS, PROJECT_NAME_RULE, is_project_name
from cloudpacs.storage.clock import utcnow
from cloudpacs.storage.tokens import TokenStore

PREFIX = "cpt_"
CACHE_ENTRIES = 10_000
MAX_DAYS = 3650


@dataclass(frozen=True)
class NewToken:
    token: str  # the only time the secret exists outside the caller's hands
    record: dict[str, Any]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_token(credential: str) -> bool:
    return credential.startswith(PREFIX)


class TokenService:
    def __init__(self, store: TokenStore, cache_seconds: float = 0.0) -> None:
        self.store = store
        # token id -> (record, when read): a revocation made elsewhere (another node, the
        # CLI) takes effect here within cache_seconds; one made here, at once
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[dict[str, Any], float]] = {}

    async def create(
        self,
        subject: str,
        grants: dict[str, str],
        days: float,
        default_project: object = None,
        description: str = "",
    ) -> NewToken:
        """`default_project` comes straight from a request body or the command line: None or
        one project name; anything else (a list, a number, a bad name) is refused."""
        if not subject or len(subject) > 200:
            raise InvalidRequest("a token needs a subject (who it is for), at most 200 chars")
        if not 0 < days <= MAX_DAYS:
            raise InvalidRequest(f"expiry must be between 0 and {MAX_DAYS} days")
        parsed = parse_grants(grants)
        if not parsed:
            raise InvalidRequest("a token needs at least one grant, e.g. myproject=reader")
        if default_project is not None and not is_project_name(default_project):
            raise InvalidRequest(
                f"default project {default_project!r} is not one project name ({PROJECT_NAME_RULE})"
            )
        if default_project and default_project not in parsed and ALL_PROJECTS not in parsed:
            raise InvalidRequest(f"default project {default_project!r} is not among the grants")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        record = {
            "_id": token_id,
            "subject": subject,
            "grants": {project: role.name.lower() for project, role in parsed.items()},
            "default_project": default_project,
            "description": description,
            "created_at": now,
            "expires_at": now + timedelta(days=days),
            "revoked_at": None,
            "secret_sha256": _digest(secret),
        }
        await self.store.insert(record)
        shown = {k: v for k, v in record.items() if k != "secret_sha256"}
        return NewToken(f"{PREFIX}{token_id}_{secret}", shown)

    async def verify(self, token: str) -> Principal:
        token_id, _, secret = token.removeprefix(PREFIX).partition("_")
        record = await self._record(token_id) if token_id and secret else None
        if record is None or not hmac.compare_digest(record["secret_sha256"], _digest(secret)):
            raise Unauthenticated("invalid token")
        if record.get("revoked_at") is not None:
            raise Unauthenticated("token revoked")
        if record["expires_at"] <= utcnow():  # the client is tz_aware
            raise Unauthenticated("token expired")
        default_project = record.get("default_project")
        if default_project is not None and not is_project_name(default_project):
            # only a record written before default projects were checked can hold this
            raise Unauthenticated("token has an invalid default project; create a new one")
        return Principal(
            subject=record["subject"],
            grants={p: Role.named(r) for p, r in record["grants"].items()},
            default_project=default_project,
            credential=f"token:{token_id}",
        )

    async def _record(self, token_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        record = await self.store.get(token_id)
        if record is not None and self.cache_seconds > 0:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[token_id] = (record, now)
        return record

    async def list(self) -> list[dict[str, Any]]:
        return await self.store.list()

    async def revoke(self, token_id: str) -> None:
        self._cache.pop(token_id, None)
        if not await self.store.revoke(token_id, utcnow()):
            if await self.store.get(token_id) is None:
                raise NotFound(f"no token {token_id}")
            # already revoked: revoking is idempotent
