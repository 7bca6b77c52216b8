"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from cloudpacs.errors import Unavailable
from cloudpacs.http.services import services


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and the stored files can be reached; 503 otherwise
    so balancers take the node out."""
    try:
        await services(request).database.ping()
        await services(request).retrieve.check_files()
    except Unavailable as exc:
        return web.json_response({"status": "unavailable", "reason": str(exc)}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.StreamResponse:
    handler = make_aiohttp_handler(services(request).metrics.registry)
    return await handler(request)
