"""The whole URL table, with the action and role of every route (deny by default).

Every DICOMweb route exists twice: under /dicomweb (the caller's projects) and under
/dicomweb/projects/{project} (that project only; STOW-RS stores into it).
"""

from __future__ import annotations

from aiohttp import web

from cloudpacs.auth.principal import Role
from cloudpacs.http import admin, health, qido, stow, wado
from cloudpacs.http.access import RULES, Handler, Reach, Rule
from cloudpacs.http.services import SERVICE_ROOT

PROJECT_ROOT = SERVICE_ROOT + "/projects/{project}"

SEARCH = Rule("search")
RETRIEVE = Rule("retrieve")
STORE = Rule("store", Role.CONTRIBUTOR)
DELETE = Rule("delete", Role.ADMIN)
PUBLIC = Rule("health", reach=Reach.PUBLIC)


def _dicomweb(root: str) -> list[tuple[str, str, Handler, Rule]]:
    study = root + "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    table: list[tuple[str, str, Handler, Rule]] = [
        # QIDO-RS
        ("GET", root + "/studies", qido.search_studies, SEARCH),
        ("GET", root + "/series", qido.search_series, SEARCH),
        ("GET", root + "/instances", qido.search_instances, SEARCH),
        ("GET", study + "/series", qido.search_series, SEARCH),
        ("GET", study + "/instances", qido.search_instances, SEARCH),
        ("GET", series + "/instances", qido.search_instances, SEARCH),
        # STOW-RS
        ("POST", root + "/studies", stow.store, STORE),
        ("POST", study, stow.store, STORE),
    ]
    for path in (study, series, instance):  # WADO-RS, and deletion
        table += [
            ("GET", path, wado.retrieve, RETRIEVE),
            ("GET", path + "/metadata", wado.metadata, RETRIEVE),
            ("DELETE", path, admin.delete, DELETE),
        ]
    table += [
        ("GET", instance + "/frames/{frames}", wado.frames, RETRIEVE),
        ("GET", instance + "/bulkdata/{path:.+}", wado.bulkdata, RETRIEVE),
    ]
    return table


OPS = [
    ("GET", "/healthz", health.healthz, PUBLIC),
    ("GET", "/readyz", health.readyz, PUBLIC),
    ("GET", "/metrics", health.metrics, PUBLIC),
]
ADMIN = [
    ("GET", "/admin/tokens", admin.list_tokens, Rule("token.list", Role.ADMIN, Reach.GLOBAL)),
    ("POST", "/admin/tokens", admin.create_token, Rule("token.create", Role.ADMIN, Reach.GLOBAL)),
    (
        "DELETE",
        "/admin/tokens/{token_id}",
        admin.revoke_token,
        Rule("token.revoke", Role.ADMIN, Reach.GLOBAL),
    ),
    ("GET", "/admin/config", admin.show_config, Rule("config.read", Role.ADMIN, Reach.GLOBAL)),
]


def route_table(ops_only: bool = False) -> list[tuple[str, str, Handler, Rule]]:
    if ops_only:
        return list(OPS)
    return OPS + ADMIN + _dicomweb(SERVICE_ROOT) + _dicomweb(PROJECT_ROOT)


def add_routes(app: web.Application, ops_only: bool = False) -> None:
    rules: dict[Handler, Rule] = {}
    for method, path, handler, rule in route_table(ops_only):
        app.router.add_route(method, path, handler)
        if rules.setdefault(handler, rule) != rule:
            raise AssertionError(f"{handler.__name__} has two rules")  # one rule per handler
    app[RULES] = rules
