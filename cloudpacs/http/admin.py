"""Administration: API tokens and the effective configuration (role admin over "*"),
and deletion of studies, series and instances (role admin in their project)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from cloudpacs.auth.principal import Role
from cloudpacs.errors import InvalidRequest
from cloudpacs.http.access import note_for_audit, visible_projects
from cloudpacs.http.services import services
from cloudpacs.search import Scope


def _json(body: Any, status: int = 200) -> web.Response:
    def default(value: Any) -> str:
        return value.isoformat() if isinstance(value, datetime) else str(value)

    return web.Response(
        body=json.dumps(body, default=default).encode(),
        status=status,
        content_type="application/json",
    )


async def list_tokens(request: web.Request) -> web.Response:
    return _json(await services(request).tokens.list())


async def create_token(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        raise InvalidRequest(
            'send a JSON object: {"subject": ..., "grants": {"project": "role"}, "days": 90}'
        ) from None
    grants = body.get("grants")
    if not isinstance(grants, dict):
        raise InvalidRequest('"grants" must be an object of project -> role')
    try:
        days = float(body.get("days", 90))
    except (TypeError, ValueError):
        raise InvalidRequest('"days" must be a number') from None
    new = await services(request).tokens.create(
        subject=str(body.get("subject", "")),
        grants={str(k): str(v) for k, v in grants.items()},
        days=days,
        default_project=body.get("default_project"),
        description=str(body.get("description", "")),
    )
    return _json({"token": new.token, **new.record}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    await services(request).tokens.revoke(request.match_info["token_id"])
    return web.Response(status=204)


async def show_config(request: web.Request) -> web.Response:
    return _json(services(request).settings.masked())


async def delete(request: web.Request) -> web.Response:
    info = request.match_info
    scope = Scope(info["study"], info.get("series"), visible_projects(request, Role.ADMIN))
    deleted = await services(request).deletion.delete(scope, info.get("instance"))
    # the audit record names the project the data was in (it is gone by the time it is
    # written, so it cannot be looked up then)
    note_for_audit(request, project=deleted.project, detail=f"{deleted.instances} instances")
    if deleted.project:
        services(request).audit.name_project(info["study"], deleted.project)
    return _json({"deleted_instances": deleted.instances})
