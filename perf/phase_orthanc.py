"""Orthanc + its DICOMweb plugin under the same load as cloudpacs (perf/bench_core.py
--with-orthanc): STOW-RS levels, the whole corpus loaded over STOW-RS, QIDO-RS, WADO-RS, and
the disk its storage and index take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_context import Context, Target, log
from benchlib import command_line, running
from orthanc_server import DICOMWEB_ROOT, orthanc_versions, start_orthanc
from phase_ingest import check_archive, disk_usage, stow_level
from phase_reads import qido_phase, wado_phase


def orthanc_stow(ctx: Context) -> list[dict[str, Any]]:
    files = ctx.corpus.files[: ctx.plan.stow_instances]
    levels = []
    for clients in ctx.plan.stow_clients:
        log(f"Orthanc STOW-RS: {len(files)} instances, {clients} client(s), fresh storage")
        with running(start_orthanc(ctx.run_dir / f"orthanc-stow-c{clients}")) as server:
            url = f"{server.base}{DICOMWEB_ROOT}/studies"
            levels.append(stow_level(url, {"orthanc": server.pid}, files, clients, ctx.plan))
        log(f"  -> {levels[-1]['instances_per_s']} instances/s")
    return levels


def orthanc_phase(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"stow": orthanc_stow(ctx)}
    work = ctx.run_dir / "orthanc-main"
    clients = ctx.plan.load_clients
    with running(start_orthanc(work)) as server:
        out["versions"] = orthanc_versions(server)
        out["commands"] = [command_line(server)]
        target = Target("orthanc", f"{server.base}{DICOMWEB_ROOT}", {"orthanc": server.pid})
        log(f"Orthanc: the whole corpus over STOW-RS ({clients} clients), {out['versions']}")
        out["load"] = stow_level(
            f"{target.root}/studies", dict(target.pids), ctx.corpus.files, clients, ctx.plan
        )
        out["archive_check"] = check_archive(target.root, ctx.corpus)
        out["qido"] = qido_phase(ctx, target)
        out["wado"] = wado_phase(ctx, target)
    out["disk"] = disk_usage(orthanc_files(work), ctx.corpus.total_bytes)
    log(f"Orthanc disk: {out['disk']}")
    return out


def orthanc_files(work: Path) -> list[Path]:
    """Orthanc's storage (one file per instance) and its SQLite index, once it has stopped."""
    return [p for folder in ("storage", "index") for p in (work / folder).rglob("*")]
