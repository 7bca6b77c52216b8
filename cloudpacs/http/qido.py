"""QIDO-RS: search for studies, series and instances (PS3.18 10.6)."""

from __future__ import annotations

import json

from aiohttp import web

from cloudpacs.auth.principal import Role
from cloudpacs.dicom.levels import Level
from cloudpacs.dicom.matching import parse_query
from cloudpacs.http.access import visible_projects
from cloudpacs.http.media import DICOM_JSON, negotiate_json
from cloudpacs.http.services import base_url, services
from cloudpacs.search import Scope


async def _search(request: web.Request, level: Level) -> web.Response:
    negotiate_json(request.headers.get("Accept"))
    query = parse_query(list(request.query.items()))  # aiohttp has percent-decoded them
    info = request.match_info
    scope = Scope(info.get("study"), info.get("series"), visible_projects(request, Role.READER))
    results = await services(request).search.search(level, query, scope, base_url(request))
    if not results:
        return web.Response(status=204)
    return web.Response(
        body=json.dumps(results, ensure_ascii=False).encode(), content_type=DICOM_JSON
    )


async def search_studies(request: web.Request) -> web.Response:
    return await _search(request, Level.STUDY)


async def search_series(request: web.Request) -> web.Response:
    return await _search(request, Level.SERIES)


async def search_instances(request: web.Request) -> web.Response:
    return await _search(request, Level.INSTANCE)
