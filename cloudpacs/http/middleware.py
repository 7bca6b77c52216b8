"""The one error-to-status table, the request deadline, request metrics by route and the
audit record of every request.

Error bodies never carry a traceback, an exception class name or a path: 4xx errors say
what was wrong with the request, 5xx ones say only what the client can do (retry), with a
request id that finds the details in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import HttpVersion11, web
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
    (errors.Overloaded, 503),
    (errors.RequestTimedOut, 503),
    (errors.Unavailable, 503),
]
RETRY_AFTER_SECONDS = "5"
UNAVAILABLE = "service temporarily unavailable; retry later"
# the deadline of a request's handler, lifted once its answer has started (streamed WADO)
DEADLINE = web.RequestKey("deadline", asyncio.Timeout)


HEADERS_BY_STATUS = {
    401: {"WWW-Authenticate": 'Bearer realm="cloudpacs"'},
    503: {"Retry-After": RETRY_AFTER_SECONDS},
}


def status_for(exc: errors.CloudPacsError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status
    return 500


def error_middleware(metrics: Metrics, timeout_seconds: float | None = None) -> Middleware:
    """Errors to statuses, metrics, and `timeout_seconds` for a handler to start answering."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = _route_template(request)
        status = 500
        metrics.http_in_flight.inc()
        try:
            response = await _within_deadline(request, handler, timeout_seconds)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except errors.CloudPacsError as exc:
            status = status_for(exc)
            if status == 500:
                return _internal_error(route)
            return _error_response(exc, status, route)
        except Exception:  # noqa: BLE001  (the opaque 500; _internal_error logs the traceback)
            return _internal_error(route)
        finally:
            audit_request(request, status)
            metrics.http_in_flight.dec()
            metrics.http_seconds.labels(route, request.method, str(status)).observe(
                time.perf_counter() - started
            )

    return middleware


def _internal_error(route: str) -> web.Response:
    """An opaque 500; the traceback (of the exception being handled) goes to the log."""
    request_id = uuid.uuid4().hex[:12]
    log.exception("http.unhandled", extra={"request_id": request_id, "route": route})
    return web.json_response({"error": "internal error", "request_id": request_id}, status=500)


def _error_response(exc: errors.CloudPacsError, status: int, route: str) -> web.Response:
    if status < 500 or getattr(exc, "public", False):
        body = {"error": str(exc)}
    else:
        request_id = uuid.uuid4().hex[:12]
        log.warning(
            "http.unavailable", extra={"request_id": request_id, "route": route, "error": str(exc)}
        )
        body = {"error": UNAVAILABLE, "request_id": request_id}
    headers = HEADERS_BY_STATUS.get(status)
    return web.json_response(body, status=status, headers=headers)


async def _within_deadline(
    request: web.Request, handler: Handler, seconds: float | None
) -> web.StreamResponse:
    if seconds is None:
        return await handler(request)
    deadline = asyncio.timeout(seconds)
    request[DEADLINE] = deadline
    try:
        async with deadline:
            return await handler(request)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise errors.RequestTimedOut(
            f"the request took longer than {seconds:g} s (request_timeout_seconds)"
        ) from None
    finally:
        del request[DEADLINE]  # answers prepared after the handler returned need no lifting


async def lift_deadline(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an answer that has started (a streamed WADO-RS response) is
    not cut by the deadline; the body it is sending is bounded by the transport instead."""
    deadline = request.get(DEADLINE)
    if deadline is not None:
        deadline.reschedule(None)


async def close_unsized_http10(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an HTTP/1.0 client has no chunked encoding, so the end of a
    streamed answer (no Content-Length) is the connection closing. aiohttp keeps it open
    when the client asked for keep-alive (as ab and HAProxy do), and the client then waits
    for ever."""
    if request.version < HttpVersion11 and response.content_length is None:
        response.force_close()


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
