"""Who may call what: client address policy, authentication, the role each route needs,
and one audit record per request (including every refusal; see audit_request).

Deny by default: a route must have a Rule (routes.py) or it is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web
from aiohttp.typedefs import Middleware

from cloudpacs.auth.principal import Principal, Role
from cloudpacs.errors import Forbidden
from cloudpacs.http.services import services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PRINCIPAL = web.RequestKey("principal", Principal)
CLIENT = web.RequestKey("client", str)
DETAIL = web.RequestKey("audit_detail", str)
PROJECT = web.RequestKey("audit_project", str)  # when the URL does not say (STOW, deletion)
MAX_DETAIL = 500


class Reach(StrEnum):
    PUBLIC = "public"  # no credential (health, metrics); the address policy still applies
    PROJECT = "project"  # the role in the URL's project, or in at least one project
    GLOBAL = "global"  # the role over every project ("*"): tokens, configuration


@dataclass(frozen=True)
class Rule:
    action: str
    role: Role = Role.READER
    reach: Reach = Reach.PROJECT


RULES = web.AppKey("rules", dict[Handler, Rule])


def _rule(request: web.Request) -> Rule | None:
    return request.app[RULES].get(request.match_info.handler)


def _unmatched(request: web.Request) -> bool:
    return request.match_info.http_exception is not None


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def visible_projects(request: web.Request, role: Role) -> frozenset[str] | None:
    """The projects a handler may touch for the caller (None: all): the URL's project (its
    role was checked by the middleware) or every project where the caller holds `role`."""
    project = request.match_info.get("project")
    if project:
        return frozenset({project})
    return principal(request).projects_with(role)


def note_for_audit(
    request: web.Request, *, project: str | None = None, detail: str | None = None
) -> None:
    """What a handler learnt that the request's audit record should carry: the project it
    stored into or deleted from, and a detail. Records naming a study but no project get
    the study's project when they are written (AuditLog.flush)."""
    if project:
        request[PROJECT] = project
    if detail:
        request[DETAIL] = detail


def access_middleware() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        svc = services(request)
        client = svc.network.client_address(request.remote, request.headers.get("X-Forwarded-For"))
        request[CLIENT] = client
        if not svc.network.allows(client):
            _deny(request, "address", f"client address {client} is not allowed")
        if _unmatched(request):
            return await handler(request)
        rule = _rule(request)
        if rule is None:
            _deny(request, "no-rule", "forbidden")
        assert rule is not None
        if rule.reach is Reach.PUBLIC:
            return await handler(request)
        try:
            caller = await svc.authenticator.authenticate(request.headers.get("Authorization"))
        except Exception as exc:
            request[DETAIL] = str(exc)
            svc.metrics.auth_denials.labels("credential").inc()
            raise
        request[PRINCIPAL] = caller
        _authorise(request, caller, rule)
        return await handler(request)

    return middleware


def _authorise(request: web.Request, caller: Principal, rule: Rule) -> None:
    role = rule.role.name.lower()
    project = request.match_info.get("project")
    if rule.reach is Reach.GLOBAL:
        if caller.projects_with(rule.role) is not None:
            _deny(request, "role", f"this needs the {role} role over all projects")
    elif project:
        if not caller.allows(rule.role, project):
            _deny(request, "role", f"no {role} role in project {project}")
    elif not caller.allows_somewhere(rule.role):
        _deny(request, "role", f"no {role} role in any project")


def _deny(request: web.Request, reason: str, message: str) -> None:
    request[DETAIL] = message
    services(request).metrics.auth_denials.labels(reason).inc()
    raise Forbidden(message)


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status == 404:
        return "not-found"
    return "failed"


def audit_request(request: web.Request, status: int) -> None:
    """One audit record for a finished request (called by the outermost middleware)."""
    if _unmatched(request) and status not in (401, 403):
        return
    rule = _rule(request)
    if rule is not None and rule.reach is Reach.PUBLIC and status not in (401, 403):
        return
    caller = request.get(PRINCIPAL)
    info = request.match_info
    detail = request.get(DETAIL) or (request.query_string or None)
    services(request).audit.record(
        action=rule.action if rule else "unknown",
        outcome=_outcome(status),
        user=caller.subject if caller else "-",
        credential=caller.credential if caller else None,
        project=info.get("project") or request.get(PROJECT),
        study=info.get("study"),
        series=info.get("series"),
        instance=info.get("instance"),
        client=request.get(CLIENT),
        method=request.method,
        path=request.path[:MAX_DETAIL],
        status=status,
        detail=detail[:MAX_DETAIL] if detail else None,
    )
