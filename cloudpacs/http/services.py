"""What the HTTP handlers may use, bundled under one typed application key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from cloudpacs.audit import AuditLog
from cloudpacs.auth.authenticator import Authenticator
from cloudpacs.auth.network import NetworkPolicy
from cloudpacs.auth.tokens import TokenService
from cloudpacs.config import Settings
from cloudpacs.deletion import DeletionService
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
    authenticator: Authenticator
    tokens: TokenService
    network: NetworkPolicy
    audit: AuditLog
    deletion: DeletionService


SERVICES = web.AppKey("services", Services)

SERVICE_ROOT = "/dicomweb"


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def base_url(request: web.Request) -> str:
    """The service root as the client sees it (honours the Host header), with the project
    when the URL names one (/dicomweb/projects/{project})."""
    project = request.match_info.get("project")
    root = f"{SERVICE_ROOT}/projects/{project}" if project else SERVICE_ROOT
    return f"{request.scheme}://{request.host}{root}"
