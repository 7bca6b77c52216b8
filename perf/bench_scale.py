"""Scale runs (issue #6): how QIDO-RS latency and load rate grow with the archive, for
cloudpacs and Orthanc side by side in the same run, on this machine.

    .venv/bin/python perf/bench_scale.py --sizes 10000,100000
    .venv/bin/python perf/bench_scale.py --sizes 1000,3000 --clients 1,16    # smoke run

Sizes grow incrementally in one archive per system (load 10k, measure, add 90k, measure).
cloudpacs is `cloudpacs serve` on its embedded FerretDB (the `make run` default, with its
`_id` lookup indexes), loaded metadata-only straight into its database (perf/scale_load.py);
Orthanc gets the same files over its REST API. Each QIDO level runs ApacheBench with the
adaptive request count of bench_core.py; a level whose requests at once would take longer
than --level-cap-seconds is skipped and recorded as such.
Results: perf/out/results-scale.json (or --out), PNG plots beside it, a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench_context import JSON_ACCEPT, Context, Plan, log
from benchlib import OUT, REPO, Archive, ResourceWatch, Server, machine, start_archive
from corpus import Corpus, CorpusParams
from orthanc_server import orthanc_get, orthanc_versions, start_orthanc
from phase_ingest import embedded_sqlite, id_lookup_indexes
from phase_reads import Load, run_load, single_latency
from pymongo import MongoClient
from scale_corpus import ScaleCorpus, ScaleStudy
from scale_load import load_cloudpacs, load_orthanc, verify_direct_load, wait_idle
from scale_plot import plot_results
from scale_report import report

from cloudpacs.embedded import add_id_lookup_indexes

DATABASE = "scale"
# The periodic crash-repair sweep scans all instances on FerretDB; it runs once at start
# (on the empty archive) and then not during the measurements.
SERVE_ENV = {"CLOUDPACS_SWEEP_INTERVAL_SECONDS": "86400"}
# Cores a saturated cloudpacs + FerretDB spread concurrent requests over (RESULTS.md).
PARALLELISM = 1.5
DATE_WINDOW_DAYS = 30


@dataclass(frozen=True)
class ScalePlan:
    sizes: tuple[int, ...] = (10_000, 100_000)
    seed: int = 7
    clients: tuple[int, ...] = (1, 16, 64)
    requests: tuple[int, ...] = (100, 300, 600)
    ab_seconds: int = 10
    level_cap_seconds: int = 600
    orthanc_clients: int = 8
    parse_workers: int = 2
    loaders: int = 2
    orthanc_up_to: int | None = None  # sizes above it: cloudpacs alone (its own growth)


@dataclass
class Systems:
    cloudpacs: Archive
    orthanc: Server
    roots: dict[str, str] = field(default_factory=dict)

    def pids(self, name: str) -> dict[str, int]:
        if name == "orthanc":
            return {"orthanc": self.orthanc.pid}
        return dict(self.cloudpacs.pids)


def queries(corpus: ScaleCorpus, first: ScaleStudy) -> dict[str, str]:
    """Queries on the first study's data: their answers stay small as the archive grows
    (new patients come with new studies), except where noted."""
    plan = first.plan
    family, given = plan.patient.name.split("^")
    day = date(int(plan.study_date[:4]), int(plan.study_date[4:6]), int(plan.study_date[6:]))
    low = (day - timedelta(days=DATE_WINDOW_DAYS // 2)).strftime("%Y%m%d")
    high = (day + timedelta(days=DATE_WINDOW_DAYS // 2)).strftime("%Y%m%d")
    series = max(plan.series, key=lambda s: (s.count, s.uid))
    return {
        "studies?PatientID": f"/studies?PatientID={plan.patient.patient_id}",
        "studies?PatientName": f"/studies?PatientName={family}^{given[:2]}*",
        f"studies?StudyDate ({DATE_WINDOW_DAYS} days)": f"/studies?StudyDate={low}-{high}",
        "studies?ModalitiesInStudy (limit 25)": "/studies?ModalitiesInStudy=MR&limit=25",
        "study/series": f"/studies/{plan.uid}/series",
        "series/instances": f"/studies/{plan.uid}/series/{series.uid}/instances",
    }


def counted_answer(url: str, timeout: float) -> tuple[int, float]:
    """Results of one QIDO request and its seconds (a full scan at 100k takes minutes)."""
    request = urllib.request.Request(url, headers={"Accept": JSON_ACCEPT})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body = answer.read()
    return len(json.loads(body) if body else []), time.perf_counter() - started


def measure_query(
    ctx: Context, root: str, name: str, path: str, plan: ScalePlan
) -> list[dict[str, Any]]:
    url = f"{root}{path}"
    matches, first = counted_answer(url, plan.level_cap_seconds)
    single = first if first > 2.0 else single_latency(url, JSON_ACCEPT)
    rows = []
    for clients, requests in zip(plan.clients, plan.requests, strict=True):
        row: dict[str, Any] = {"query": name, "path": path, "matches": matches}
        estimate = clients * single / PARALLELISM
        if clients > 1 and estimate > plan.level_cap_seconds:
            row.update(
                concurrency=clients, skipped=f"{clients} requests at once: ~{estimate:.0f} s"
            )
            row["single_request_ms"] = round(1000 * single, 1)
            log(f"  {name} c={clients}: skipped ({row['skipped']})")
        else:
            row.update(run_load(ctx, Load(url, JSON_ACCEPT, clients, requests), single))
            log(
                f"  {name} c={clients} n={row['requests']}: p50 {row['p50_ms']:.1f} ms, "
                f"p99 {row['p99_ms']:.1f} ms, {row['rps']} req/s {row['error']}"
            )
        rows.append(row)
    return rows


def measure_system(
    ctx: Context, systems: Systems, name: str, paths: dict[str, str], plan: ScalePlan
) -> dict[str, Any]:
    log(f"QIDO-RS on {name}")
    with ResourceWatch(systems.pids(name)) as watch:
        rows = [
            row
            for query, path in paths.items()
            for row in measure_query(ctx, systems.roots[name], query, path, plan)
        ]
    return {"rows": rows, "resources": watch.result}


def archive_counts(systems: Systems, home: Path) -> dict[str, Any]:
    names = ("instances", "series", "studies")
    return {
        "cloudpacs": stored_counts(systems.cloudpacs, home, names),
        "orthanc": orthanc_counts(systems),
    }


def stored_counts(archive: Archive, home: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Documents per collection. On the embedded FerretDB, rows counted in its SQLite file
    (read-only): FerretDB 1.24's own count of 1M instances took about 15 minutes."""
    with embedded_sqlite(home, archive) as conn:
        if conn is not None:
            tables = dict(conn.execute("SELECT name, table_name FROM _ferretdb_collections"))
            return {
                n: conn.execute(f'SELECT count(*) FROM "{tables[n]}"').fetchone()[0] for n in names
            }
    client: MongoClient[dict[str, Any]] = MongoClient(archive.db_uri)
    try:
        return {n: client[archive.database][n].estimated_document_count() for n in names}
    finally:
        client.close()


def orthanc_counts(systems: Systems) -> dict[str, int]:
    stats = json.loads(orthanc_get(systems.orthanc, "/statistics"))
    return {
        "instances": stats["CountInstances"],
        "series": stats["CountSeries"],
        "studies": stats["CountStudies"],
    }


def load_increment(
    systems: Systems,
    corpus: ScaleCorpus,
    new: list[ScaleStudy],
    plan: ScalePlan,
    home: Path,
    with_orthanc: bool,
) -> dict[str, Any]:
    n = sum(s.instances for s in new)
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    log(f"cloudpacs: loading {len(new)} studies, {n} instances (metadata only)")
    with ResourceWatch(systems.pids("cloudpacs")) as watch:
        out["cloudpacs"] = load_cloudpacs(
            systems.cloudpacs.db_uri, DATABASE, corpus, new, plan.parse_workers, plan.loaders, log
        )
    out["cloudpacs"]["resources"] = watch.result
    out["cloudpacs"]["id_lookup_indexes_added"] = add_id_lookup_indexes(home / "db", DATABASE)
    out["cloudpacs"]["id_lookup_indexes"] = id_lookup_indexes(home, systems.cloudpacs)
    log(f"  -> {out['cloudpacs']['instances_per_s']} instances/s")
    if with_orthanc:
        log(f"Orthanc: POST {n} instances, {plan.orthanc_clients} clients")
        with ResourceWatch(systems.pids("orthanc")) as watch:
            out["orthanc"] = load_orthanc(systems.orthanc, corpus, new, plan.orthanc_clients)
        out["orthanc"]["resources"] = watch.result
        log(f"  -> {out['orthanc']['instances_per_s']} instances/s")
    pids = [*systems.pids("cloudpacs").values(), systems.orthanc.pid]
    out["idle_wait_seconds"] = wait_idle(pids)
    out["loadavg_after"] = os.getloadavg()
    return out


def run_sizes(plan: ScalePlan, run_dir: Path, results: dict[str, Any], out: Path) -> None:
    corpus = ScaleCorpus(plan.seed)
    home = run_dir / "cloudpacs"
    archive = start_archive("serve", home, DATABASE, extra_env=SERVE_ENV)
    try:
        orthanc = start_orthanc(run_dir / "orthanc")
    except BaseException:
        archive.stop()
        raise
    systems = Systems(archive, orthanc)
    systems.roots = {
        "cloudpacs": f"{archive.server.base}/dicomweb",
        "orthanc": f"{orthanc.base}/dicom-web",
    }
    # run_load (bench_core) reads only the plan's ab budget and the run folder.
    ctx = Context(
        Plan(ab_time_limit=plan.ab_seconds, ab_max_seconds=plan.level_cap_seconds),
        Corpus(corpus.folder, CorpusParams(0, 0, plan.seed), []),
        run_dir,
        None,
    )
    try:
        results["orthanc_versions"] = orthanc_versions(orthanc)
        loaded: list[ScaleStudy] = []
        for size in plan.sizes:
            studies = corpus.plan(size)
            if not loaded:
                log("checking the direct load against a real ingest of the first study")
                results["verify"] = verify_direct_load(archive.db_uri, corpus, studies[0])
                log(f"  -> {results['verify']}")
            with_orthanc = plan.orthanc_up_to is None or size <= plan.orthanc_up_to
            step: dict[str, Any] = {"target_instances": size, **describe(studies)}
            new = studies[len(loaded) :]
            step["load"] = load_increment(systems, corpus, new, plan, home, with_orthanc)
            loaded = studies
            step["counts"] = archive_counts(systems, home)
            paths = queries(corpus, studies[0])
            results["sizes"].append(step)
            step["qido"] = {}
            for name in ("cloudpacs", "orthanc")[: 2 if with_orthanc else 1]:
                # saved as they come: a 100k step is long
                step["qido"][name] = measure_system(ctx, systems, name, paths, plan)
                step["loadavg_end"] = os.getloadavg()
                out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        orthanc.stop()
        archive.stop()


def describe(studies: list[ScaleStudy]) -> dict[str, Any]:
    """The archive's shape, from the plan (no files read or written)."""
    return {
        "instances": sum(s.instances for s in studies),
        "studies": len(studies),
        "series": sum(len(s.plan.series) for s in studies),
        "patients": len({s.plan.patient.patient_id for s in studies}),
    }


def header(plan: ScalePlan) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "perf/bench_scale.py", *sys.argv[1:]]),
        "git_commit": commit,
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "plan": asdict(plan),
        "notes": [
            "cloudpacs: `cloudpacs serve`, embedded FerretDB (SQLite) with its _id lookup "
            "indexes; loaded metadata-only by perf/scale_load.py (no GridFS bytes), so its "
            "load rate is not comparable to Orthanc's full ingest",
            "cloudpacs: CLOUDPACS_SWEEP_INTERVAL_SECONDS=86400 (the sweep scans every "
            "instance on FerretDB; it would otherwise run every 300 s during measurements)",
            "Orthanc: the same files over REST POST /instances; stores files and its index",
            "levels marked `skipped` would have taken longer than level_cap_seconds",
        ],
        "sizes": [],
    }


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_ints, default=ScalePlan.sizes)
    parser.add_argument("--clients", type=parse_ints, default=ScalePlan.clients)
    parser.add_argument("--level-cap-seconds", type=int, default=ScalePlan.level_cap_seconds)
    parser.add_argument("--ab-seconds", type=int, default=ScalePlan.ab_seconds)
    parser.add_argument("--seed", type=int, default=ScalePlan.seed)
    parser.add_argument(
        "--orthanc-up-to",
        type=lambda text: parse_ints(text)[0],
        default=None,
        help="load and measure Orthanc only at sizes up to this one (larger: cloudpacs alone)",
    )
    parser.add_argument("--keep", action="store_true", help="keep perf/out/scale-run-*")
    parser.add_argument("--out", type=Path, default=OUT / "results-scale.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    requests = dict(zip(ScalePlan.clients, ScalePlan.requests, strict=True))
    plan = ScalePlan(
        sizes=args.sizes,
        seed=args.seed,
        clients=args.clients,
        requests=tuple(requests.get(c, 10 * c) for c in args.clients),
        ab_seconds=args.ab_seconds,
        level_cap_seconds=args.level_cap_seconds,
        orthanc_up_to=args.orthanc_up_to,
    )
    run_dir = OUT / f"scale-run-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = header(plan)
    started = time.perf_counter()
    try:
        run_sizes(plan, run_dir, results, args.out)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    for path in plot_results(results, args.out.with_suffix("")):
        print(f"plot: {path}")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
