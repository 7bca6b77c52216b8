"""Read phases of perf/bench_core.py, the same for every DICOMweb target: QIDO-RS searches and
WADO-RS retrieval (instance, series, series metadata) under ApacheBench or aiohttp load.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from bench_context import DICOM_ACCEPT, JSON_ACCEPT, Context, Target, log
from benchlib import (
    ResourceWatch,
    percentile,
    run_ab,
)
from corpus import Corpus
from phase_ingest import http_json


# ---- QIDO-RS ----------------------------------------------------------------------------
def typical_study(corpus: Corpus, modality: str = "CT") -> dict[str, Any]:
    """The study of `modality` with the median instance count, and one of its series."""
    counts = Counter(i["study"] for i in corpus.instances if i["modality"] == modality)
    if not counts:
        counts = Counter(i["study"] for i in corpus.instances)
    ordered = sorted(counts, key=lambda s: (counts[s], s))
    study = ordered[len(ordered) // 2]
    members = [i for i in corpus.instances if i["study"] == study]
    series = Counter(i["series"] for i in members).most_common(1)[0][0]
    return {"study": study, "series": series, "instances": members}


def qido_queries(corpus: Corpus) -> dict[str, str]:
    first = corpus.instances[0]
    family = first["patient_name"].split("^")[0]
    study = typical_study(corpus)["study"]
    dates = sorted(i["study_date"] for i in corpus.instances)
    low, high = dates[len(dates) // 4], dates[len(dates) // 2]
    return {
        "studies?PatientID (exact)": f"/studies?PatientID={first['patient_id']}",
        "studies?PatientName (wildcard)": f"/studies?PatientName={family[:3]}*",
        "studies?StudyDate (range)": f"/studies?StudyDate={low}-{high}",
        "studies?ModalitiesInStudy": "/studies?ModalitiesInStudy=MR",
        "study/series": f"/studies/{study}/series",
        "study/instances": f"/studies/{study}/instances",
    }


def timed_get(url: str, accept: str, timeout: float = 600) -> tuple[float, int]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        size = len(answer.read())
    return time.perf_counter() - started, size


def single_latency(url: str, accept: str) -> float:
    """One warm-up request, then the best of two (or the warm-up alone when it is slow)."""
    first, _ = timed_get(url, accept)
    if first > 2.0:
        return first
    return min(timed_get(url, accept)[0] for _ in range(2))


@dataclass(frozen=True)
class Load:
    """One ab measurement: requests scaled down for slow URLs so each stays near budget."""

    url: str
    accept: str
    clients: int
    requests: int
    keepalive: bool = True


def run_load(ctx: Context, load: Load, single: float) -> dict[str, Any]:
    budget = ctx.plan.ab_time_limit
    requests = min(load.requests, max(load.clients, int(budget / max(single, 1e-3))))
    # `clients` requests at once take about clients x single on a saturated server
    limit = min(ctx.plan.ab_max_seconds, max(6 * budget, int(2 * load.clients * single) + 15))
    result = run_ab(
        load.url,
        requests,
        load.clients,
        ctx.run_dir / "ab",
        headers=[f"Accept: {load.accept}"],
        time_limit=limit,
        keepalive=load.keepalive,
        request_timeout=limit,
    )
    return {"single_request_ms": round(1000 * single, 1), **result.as_dict()}


def qido_phase(ctx: Context, target: Target) -> list[dict[str, Any]]:
    rows = []
    levels = list(zip(ctx.plan.qido_clients, ctx.plan.qido_requests, strict=True))
    for name, path in qido_queries(ctx.corpus).items():
        url = f"{target.root}{path}"
        target.ready()
        matches = len(http_json(url))
        single = single_latency(url, JSON_ACCEPT)
        for clients, requests in levels:
            target.ready()
            row = run_load(ctx, Load(url, JSON_ACCEPT, clients, requests), single)
            rows.append({"query": name, "path": path, "matches": matches, **row})
            log(
                f"QIDO {name} c={clients} n={row['requests']}: p50 {row['p50_ms']:.1f} ms, "
                f"p99 {row['p99_ms']:.1f} ms, {row['rps']} req/s {row['error']}"
            )
    return rows


# ---- WADO-RS ----------------------------------------------------------------------------
def instance_url(root: str, item: dict[str, Any]) -> str:
    return f"{root}/studies/{item['study']}/series/{item['series']}/instances/{item['sop']}"


def wado_instances(ctx: Context, target: Target, study: dict[str, Any]) -> list[dict[str, Any]]:
    """With keep-alive, as a viewer fetches instances: both systems answer an instance with a
    Content-Length (cloudpacs since it sends stored files whole; an answer without one would
    end by closing the connection, which ab also reads correctly)."""
    item = study["instances"][0]
    url = instance_url(target.root, item)
    single = single_latency(url, DICOM_ACCEPT)
    rows = []
    levels = zip(ctx.plan.wado_clients, ctx.plan.wado_instance_requests, strict=True)
    for clients, requests in levels:
        target.ready()
        row = run_load(ctx, Load(url, DICOM_ACCEPT, clients, requests), single)
        rows.append({"instance_bytes": item["size"], **row})
        log(
            f"WADO instance c={clients} n={row['requests']}: {row['rps']} req/s, "
            f"{row['mb_per_s']} MB/s, p50 {row['p50_ms']:.1f} ms {row['error']}"
        )
    return rows


def wado_metadata(ctx: Context, target: Target, study: dict[str, Any]) -> list[dict[str, Any]]:
    url = f"{target.root}/studies/{study['study']}/series/{study['series']}/metadata"
    single = single_latency(url, JSON_ACCEPT)
    instances = sum(1 for i in study["instances"] if i["series"] == study["series"])
    rows = []
    for clients, requests in zip(ctx.plan.wado_clients, ctx.plan.metadata_requests, strict=True):
        target.ready()
        row = run_load(ctx, Load(url, JSON_ACCEPT, clients, requests, False), single)
        rows.append({"series_instances": instances, **row})
        log(
            f"WADO series metadata c={clients} n={row['requests']}: p50 {row['p50_ms']:.1f} ms, "
            f"p99 {row['p99_ms']:.1f} ms {row['error']}"
        )
    return rows


async def fetch_all(
    urls: Sequence[str], clients: int, deadline: float, headers: dict[str, str]
) -> tuple[int, list[float], int]:
    """GET URLs until all are done or `deadline` passes (each client finishes its current
    one); bytes received, latencies, errors."""
    queue, latencies = deque(urls), []
    received = errors = 0
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def worker() -> None:
            nonlocal received, errors
            while queue and time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.get(queue.popleft()) as answer:
                    async for chunk in answer.content.iter_chunked(1 << 20):
                        received += len(chunk)
                    errors += answer.status != 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return received, latencies, errors


def median_series(corpus: Corpus) -> list[tuple[str, str, int]]:
    """(study, series, stored bytes) of every series, those nearest the median size first."""
    sizes: Counter[tuple[str, str]] = Counter()
    for item in corpus.instances:
        sizes[(item["study"], item["series"])] += item["size"]
    ordered = sorted(sizes, key=lambda k: (sizes[k], k))
    middle = sizes[ordered[len(ordered) // 2]]
    ordered.sort(key=lambda k: (abs(sizes[k] - middle), k))
    return [(st, se, sizes[(st, se)]) for st, se in ordered]


def wado_series(ctx: Context, target: Target) -> list[dict[str, Any]]:
    chosen = median_series(ctx.corpus)[: ctx.plan.series_max]
    urls = [f"{target.root}/studies/{st}/series/{se}" for st, se, _ in chosen]
    rows = []
    for clients in ctx.plan.series_clients:
        target.ready()
        started = time.perf_counter()
        received, latencies, errors = asyncio.run(
            fetch_all(urls, clients, started + ctx.plan.ab_time_limit, {"Accept": DICOM_ACCEPT})
        )
        seconds = time.perf_counter() - started
        rows.append(
            {
                "clients": clients,
                "series": len(latencies),
                "errors": errors,
                "bytes": received,
                "seconds": round(seconds, 2),
                "stored_bytes_of_series": sum(size for _, _, size in chosen[: len(latencies)]),
                "mb_per_s": round(received / 1e6 / seconds, 2),
                "series_p50_ms": round(1000 * percentile(latencies, 50), 1),
                "series_p99_ms": round(1000 * percentile(latencies, 99), 1),
            }
        )
        log(f"WADO series c={clients}: {rows[-1]['mb_per_s']} MB/s over {len(latencies)} series")
    return rows


def wado_phase(ctx: Context, target: Target) -> dict[str, Any]:
    study = typical_study(ctx.corpus)
    with ResourceWatch(dict(target.pids)) as watch:
        out: dict[str, Any] = {
            "series_metadata": wado_metadata(ctx, target, study),
            "instance": wado_instances(ctx, target, study),
            "series": wado_series(ctx, target),
        }
    out["resources"] = watch.result
    return out
