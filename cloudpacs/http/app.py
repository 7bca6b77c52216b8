"""The aiohttp application: services in, routes and middleware wired."""

from __future__ import annotations

from aiohttp import web

from cloudpacs.http.access import access_middleware
from cloudpacs.http.middleware import close_unsized_http10, error_middleware, lift_deadline
from cloudpacs.http.routes import add_routes
from cloudpacs.http.services import SERVICES, Services
from cloudpacs.http.stow import UPLOAD_SLOTS, UploadSlots

# Request line and headers: generous for long QIDO URLs, bounded against abuse.
MAX_LINE_SIZE = 16 * 1024
MAX_FIELD_SIZE = 16 * 1024


def create_app(services: Services, ops_only: bool = False) -> web.Application:
    """The DICOMweb API, or with ops_only just /healthz, /readyz and /metrics (the ingest
    daemon's listener, so that its metrics can be scraped)."""
    settings = services.settings
    app = web.Application(
        middlewares=[
            error_middleware(services.metrics, settings.request_timeout_seconds),
            access_middleware(),
        ],
        client_max_size=settings.max_upload_bytes,
        handler_args={"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE},
    )
    app.on_response_prepare.append(lift_deadline)
    app.on_response_prepare.append(close_unsized_http10)
    app[SERVICES] = services
    app[UPLOAD_SLOTS] = UploadSlots(settings.max_concurrent_uploads)
    add_routes(app, ops_only)
    return app
