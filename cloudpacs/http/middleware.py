"""The one error-to-status table; request metrics by route template and the audit record."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Middleware

from cloudpacs import errors
from cloudpacs.http.access import Handler, audit_request
from cloudpacs.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[errors.CloudPacsError], int]] = [
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.InvalidRequest, 400),
    (errors.NotAcceptable, 406),
    (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMedia, 415),
    (errors.Conflict, 409),
    (errors.Rejected, 400),
    (errors.Unavailable, 503),
]


HEADERS_BY_STATUS = {
    401: {"WWW-Authenticate": 'Bearer realm="cloudpacs"'},
    503: {"Retry-After": "5"},
}


def status_for(exc: errors.CloudPacsError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status
    return 500


def error_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = _route_template(request)
        status = 500
        metrics.http_in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except errors.CloudPacsError as exc:
            status = status_for(exc)
            if status == 500:
                raise
            headers = HEADERS_BY_STATUS.get(status)
            return web.json_response({"error": str(exc)}, status=status, headers=headers)
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("http.unhandled", extra={"request_id": request_id, "route": route})
            return web.json_response(
                {"error": "internal error", "request_id": request_id}, status=500
            )
        finally:
            audit_request(request, status)
            metrics.http_in_flight.dec()
            metrics.http_seconds.labels(route, request.method, str(status)).observe(
                time.perf_counter() - started
            )

    return middleware


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
