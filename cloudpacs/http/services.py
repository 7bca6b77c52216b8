"""What the HTTP handlers may use, bundled under one typed application key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from cloudpacs.config import Settings
from cloudpacs.ingest import Ingestor
from cloudpacs.metrics import Metrics
from cloudpacs.retrieve import RetrieveService
from cloudpacs.search import SearchService
from cloudpacs.storage.database import Database


@dataclass(frozen=True)
class Services:
    settings: Settings
    database: Database
    search: SearchService
    retrieve: RetrieveService
    ingestor: Ingestor
    metrics: Metrics


SERVICES = web.AppKey("services", Services)

SERVICE_ROOT = "/dicomweb"


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def base_url(request: web.Request) -> str:
    """The service root as the client sees it (honours the Host header)."""
    return f"{request.scheme}://{request.host}{SERVICE_ROOT}"
