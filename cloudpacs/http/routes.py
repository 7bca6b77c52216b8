"""The whole URL table."""

from __future__ import annotations

from aiohttp import web

from cloudpacs.http import health, qido, stow, wado
from cloudpacs.http.services import SERVICE_ROOT as R

STUDY = R + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)


def add_routes(app: web.Application) -> None:
    add_ops_routes(app)
    # QIDO-RS
    app.router.add_get(R + "/studies", qido.search_studies)
    app.router.add_get(R + "/series", qido.search_series)
    app.router.add_get(R + "/instances", qido.search_instances)
    app.router.add_get(STUDY + "/series", qido.search_series)
    app.router.add_get(STUDY + "/instances", qido.search_instances)
    app.router.add_get(SERIES + "/instances", qido.search_instances)
    # WADO-RS
    for path in (STUDY, SERIES, INSTANCE):
        app.router.add_get(path, wado.retrieve)
        app.router.add_get(path + "/metadata", wado.metadata)
    app.router.add_get(INSTANCE + "/frames/{frames}", wado.frames)
    app.router.add_get(INSTANCE + "/bulkdata/{path:.+}", wado.bulkdata)
    # STOW-RS
    app.router.add_post(R + "/studies", stow.store)
    app.router.add_post(STUDY, stow.store)
