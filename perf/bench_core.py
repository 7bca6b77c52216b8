"""The whole benchmark in one command: cloudpacs on its embedded default (folder ingest,
STOW-RS, QIDO-RS, WADO-RS, SQS ingest, FerretDB's raw write ceiling), cloudpacs on N app
nodes behind HAProxy, and Orthanc + DICOMweb on the same corpus, one after the other, with
ratios cloudpacs/Orthanc for every figure and one plot per figure.

    .venv/bin/python perf/bench_core.py --with-orthanc   # all of it (`make bench`)
    .venv/bin/python perf/bench_core.py --quick          # smoke run (200 instances)
    .venv/bin/python perf/bench_core.py --nodes 0        # no multi-node phase

Every server (cloudpacs, FerretDB, HAProxy, Orthanc) runs on a free loopback port under
perf/out/run-*/ and is stopped by PID. Results: perf/out/results-core.json (or --out), a
report on stdout and PNGs in perf/out/plots/ (`--publish`: also perf/results/ and perf/plots/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench_context import QUICK, Context, Plan, Target, log
from bench_report import report
from bench_sqs import sqs_ingest
from benchlib import OUT, REPO, command_line, machine, start_archive, start_ferretdb
from comparison import comparison
from corpus import Corpus, ensure_corpus
from phase_ceiling import ceiling_phase, sample_document
from phase_cluster import cluster_phase
from phase_ingest import (
    check_archive,
    disk_usage,
    folder_ingest,
    id_lookup_indexes,
    sqlite_files,
    storage_facts,
    stored_files,
    stow_phase,
)
from phase_orthanc import orthanc_phase
from phase_reads import qido_phase, wado_phase

PUBLISHED_RESULTS = REPO / "perf" / "results" / "results-core.json"
PUBLISHED_PLOTS = REPO / "perf" / "plots"


# ---- orchestration ----------------------------------------------------------------------
def folder_and_reads(ctx: Context) -> None:
    home = ctx.run_dir / "home-folder"
    log(
        f"folder ingest: {len(ctx.corpus.instances)} instances, "
        f"{ctx.corpus.total_bytes / 1e6:.0f} MB -> {home / 'inbox'}"
    )
    archive = start_archive("run", home, "folder", ctx.ferretdb)
    ctx.results["commands"] = [command_line(archive.server, {"CLOUDPACS_DATABASE": "folder"})]
    try:
        ctx.results["folder_ingest"] = folder_ingest(ctx, archive, home)
        log(f"  -> {ctx.results['folder_ingest']['instances_per_s']} instances/s")
        target = Target("cloudpacs", f"{archive.server.base}/dicomweb", archive.pids)
        ctx.results["archive_check"] = check_archive(target.root, ctx.corpus)
        ctx.results["storage"] = storage_facts(archive.db_uri, archive.database)
        ctx.results["storage"]["id_lookup_indexes"] = id_lookup_indexes(home, archive)
        ctx.sample_doc = sample_document(archive.db_uri, archive.database)
        log(f"  storage: {ctx.results['storage']}")
        ctx.results["qido"] = qido_phase(ctx, target)
        ctx.results["wado"] = wado_phase(ctx, target)
    finally:
        archive.stop()
    db_dir = home / "db" if archive.embedded else ctx.run_dir / "ferretdb"
    files = sqlite_files(db_dir, "folder") + stored_files(home / "store")
    ctx.results["disk"] = disk_usage(files, ctx.corpus.total_bytes)
    log(f"  disk: {ctx.results['disk']}")


def sqs_phase(ctx: Context) -> list[dict[str, Any]]:
    """The first corpus files through S3 -> SQS -> one `cloudpacs ingest` (perf/bench_sqs.py)."""
    files = ctx.corpus.files[: ctx.plan.sqs_instances]
    log(f"SQS ingest: {len(files)} instances through moto S3 + SQS, 1 daemon")
    runs = sqs_ingest(files, [1], ctx.run_dir / "sqs")
    log(f"  -> {runs[0]['objects_per_s']} instances/s")
    return runs


def optional_phase(ctx: Context, key: str, phase: Callable[[], Any]) -> None:
    """A phase that must not cost the others its figures: its error is recorded instead."""
    try:
        ctx.results[key] = phase()
    except Exception as exc:  # noqa: BLE001 - reported in the results instead
        log(f"{key} phase failed: {exc!r}")
        ctx.results[f"{key}_error"] = repr(exc)


def run_all(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    corpus = ensure_corpus(plan.corpus_params)
    run_dir = OUT / f"run-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    ferretdb = start_ferretdb(run_dir / "ferretdb") if args.external_ferretdb else None
    ctx = Context(plan, corpus, run_dir, ferretdb)
    ctx.results.update(header(plan, corpus, args))
    try:
        folder_and_reads(ctx)
        ctx.results["stow"] = stow_phase(ctx)
        optional_phase(ctx, "sqs_ingest", lambda: sqs_phase(ctx))
        log("FerretDB ceiling: raw inserts and GridFS uploads with pymongo")
        assert ctx.sample_doc is not None
        ctx.results["ceiling"] = ceiling_phase(ctx, ctx.sample_doc)
        if args.nodes:
            optional_phase(ctx, "cluster", lambda: cluster_phase(ctx, args.nodes))
        if args.with_orthanc:
            optional_phase(ctx, "orthanc", lambda: orthanc_phase(ctx))
    finally:
        if ferretdb is not None:
            ferretdb.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    ctx.results["total_seconds"] = round(time.perf_counter() - started, 1)
    ctx.results["comparison"] = comparison(ctx.results)
    return ctx.results


def dirty_files() -> int:
    """Files changed in the working tree (what is measured is the tree, not just HEAD)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "cloudpacs"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    return len(status.splitlines())


def header(plan: Plan, corpus: Corpus, args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "perf/bench_core.py", *sys.argv[1:]]),
        "git_commit": commit,
        "git_dirty_files": dirty_files(),
        "database_mode": "external FerretDB via CLOUDPACS_MONGO_URI"
        if args.external_ferretdb
        else "embedded FerretDB (cloudpacs default, one per cloudpacs process)",
        "machine": machine(),
        "plan": asdict(plan),
        "corpus": {
            "folder": str(corpus.folder.relative_to(REPO)),
            "instances": len(corpus.instances),
            "series": len({i["series"] for i in corpus.instances}),
            "studies": len({i["study"] for i in corpus.instances}),
            "patients": len({i["patient_id"] for i in corpus.instances}),
            "bytes": corpus.total_bytes,
            "modalities": dict(Counter(i["modality"] for i in corpus.instances)),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 instances")
    parser.add_argument("--instances", type=int, help="corpus size (default 1000; quick 200)")
    parser.add_argument("--stow-instances", type=int, help="instances per STOW-RS level")
    parser.add_argument("--with-orthanc", action="store_true", help="Orthanc side by side")
    parser.add_argument(
        "--external-ferretdb",
        action="store_true",
        help="one FerretDB started here for all phases, via CLOUDPACS_MONGO_URI "
        "(default: each cloudpacs runs its embedded FerretDB, as `make run` does)",
    )
    parser.add_argument(
        "--nodes", type=int, default=2, help="app nodes behind HAProxy (0: no multi-node phase)"
    )
    parser.add_argument("--keep", action="store_true", help="keep perf/out/run-* afterwards")
    parser.add_argument("--out", type=Path, default=OUT / "results-core.json")
    parser.add_argument("--plots", type=Path, default=OUT / "plots", help="PNG folder")
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"also copy the results to {PUBLISHED_RESULTS.relative_to(REPO)} "
        f"and the plots to {PUBLISHED_PLOTS.relative_to(REPO)}/",
    )
    args = parser.parse_args(argv)
    # Clean up (servers stopped by PID) on Ctrl-C and on SIGTERM, even when started with
    # SIGINT ignored (nohup, background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = QUICK if args.quick else Plan()
    if args.instances:
        plan = replace(plan, instances=args.instances)
    if args.stow_instances:
        plan = replace(plan, stow_instances=args.stow_instances)
    plan = replace(plan, stow_instances=min(plan.stow_instances, plan.instances))
    results = run_all(plan, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plots = draw_plots(results, args.plots)
    print(report(results))
    print(f"\nresults: {args.out}")
    print(f"plots: {', '.join(str(p) for p in plots) or 'none (matplotlib missing)'}")
    if args.publish:
        publish(args.out, plots)
    return 0


def draw_plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per figure; none, with a warning, when matplotlib (`.[perf]`) is missing."""
    try:
        from plot_results import plot_all
    except ImportError as exc:
        log(f"no plots: {exc} (pip install -e '.[perf]')")
        return []
    return plot_all(results, folder)


def publish(results: Path, plots: list[Path]) -> None:
    """Copy the results and plots where they are committed."""
    PUBLISHED_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, PUBLISHED_RESULTS)
    PUBLISHED_PLOTS.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        shutil.copyfile(plot, PUBLISHED_PLOTS / plot.name)
    print(
        f"published: {PUBLISHED_RESULTS.relative_to(REPO)}, {len(plots)} plots in "
        f"{PUBLISHED_PLOTS.relative_to(REPO)}/"
    )


if __name__ == "__main__":
    raise SystemExit(main())
