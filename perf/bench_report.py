"""The text report of perf/bench_core.py, from its results dict."""

from __future__ import annotations

from typing import Any

from benchlib import fmt
from comparison import GROUPS


def resources_line(resources: dict[str, Any]) -> str:
    parts = []
    for name, r in resources.items():
        if name in ("wall_seconds", "other_processes"):
            continue
        parts.append(
            f"{name} {r['cpu_seconds']} CPU-s ({r['cpu_percent_of_one_core']}%), "
            f"peak RSS {r['peak_rss_mb']} MB"
        )
    others = resources.get("other_processes", {})
    if others.get("cpu_seconds", 0) >= 1:
        parts.append(f"OTHER USERS' processes {others['cpu_seconds']} CPU-s")
    return "; ".join(parts)


def report(results: dict[str, Any]) -> str:
    lines = report_header(results)
    lines += ["", "=== CLOUDPACS, 1 NODE (embedded FerretDB, `cloudpacs run`/`serve`) ==="]
    lines += report_ingest(results)
    lines += report_qido(results["qido"])
    lines += report_wado(results["wado"])
    lines += report_disk(results.get("disk"))
    lines += report_ceiling(results["ceiling"])
    if "cluster" in results:
        c = results["cluster"]
        title = f"CLOUDPACS, {c['nodes']} NODES (one FerretDB, HAProxy {c['haproxy']})"
        lines += report_target(title, c)
    if "orthanc" in results:
        o = results["orthanc"]
        title = (
            f"ORTHANC {o['versions']['orthanc']} + DICOMweb plugin "
            f"{o['versions']['dicomweb_plugin']} (SQLite index, files on disk)"
        )
        lines += report_target(title, o)
    for key in ("sqs_ingest_error", "cluster_error", "orthanc_error"):
        if key in results:
            lines.append(f"\n{key}: {results[key]}")
    lines += report_comparison(results["comparison"])
    lines += report_commands(results)
    lines.append(f"\ntotal wall time {results['total_seconds']} s")
    return "\n".join(lines)


def report_header(results: dict[str, Any]) -> list[str]:
    m, c = results["machine"], results["corpus"]
    return [
        f"command: {results['command']}",
        f"commit: {results['git_commit']} ({results['git_dirty_files']} changed files in "
        f"cloudpacs/), started {results['started_at']}",
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['mem_total_gb']} GB, kernel "
        f"{m['kernel']}, Python {m['python']}, FerretDB {m['ferretdb']} (SQLite)",
        f"corpus: {c['instances']} instances ({c['modalities']}), {c['series']} series, "
        f"{c['studies']} studies, {c['patients']} patients, {c['bytes'] / 1e6:.0f} MB",
    ]


def report_stow(levels: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in levels:
        lines.append(
            f"STOW-RS {s['clients']:>2} client(s) x{s['instances_per_request']}/req "
            f"{s['instances_per_s']:>11} {s['mb_per_s']:>9} {s['seconds']:>9}  "
            f"{s['stored']} stored, req p50 {s['request_p50_ms']} ms "
            f"p99 {s['request_p99_ms']} ms"
        )
        lines.append(f"    {resources_line(s['resources'])}")
    return lines


def report_ingest(results: dict[str, Any]) -> list[str]:
    f = results["folder_ingest"]
    lines = [
        "",
        "INGEST                         instances/s      MB/s   seconds  notes",
        f"folder (watched inbox)         {f['instances_per_s']:>11} {f['mb_per_s']:>9} "
        f"{f['seconds']:>9}  {f['instances']} files, {f['failed_files']} failed",
        f"    {resources_line(f['resources'])}",
    ]
    for r in results.get("sqs_ingest", []):
        lines.append(
            f"SQS ({r['daemons']} daemon, moto)       {r['objects_per_s']:>11} "
            f"{r['mb_per_s']:>9} {r['seconds']:>9}  {r['objects']} objects, event to stored "
            f"p50 {r['latency_p50_s']} s p99 {r['latency_p99_s']} s"
        )
    return lines + report_stow(results["stow"])


def report_target(title: str, section: dict[str, Any]) -> list[str]:
    """Another target's sections: STOW-RS levels, the whole corpus, QIDO-RS, WADO-RS, disk."""
    load = section["load"]
    lines = [
        "",
        f"=== {title} ===",
        "",
        "INGEST                         instances/s      MB/s   seconds  notes",
        f"whole corpus, STOW-RS {load['clients']:>2} cl.  {load['instances_per_s']:>11} "
        f"{load['mb_per_s']:>9} {load['seconds']:>9}  {load['stored']} stored",
        f"    {resources_line(load['resources'])}",
        *report_stow(section["stow"]),
    ]
    lines += report_qido(section["qido"])
    lines += report_wado(section["wado"])
    if "times_taken_down" in section:
        lines.append(
            f"    HAProxy took nodes out (failed /readyz checks): {section['times_taken_down']}"
        )
    return lines + report_disk(section.get("disk"))


def report_disk(disk: dict[str, Any] | None) -> list[str]:
    if not disk:
        return []
    return [
        "",
        f"DISK: {disk['bytes_on_disk'] / 1e6:,.1f} MB on disk ({disk['files']} files) for "
        f"{disk['dicom_bytes'] / 1e6:,.1f} MB of DICOM: "
        f"{disk['disk_bytes_per_gb_stored'] / 1e9:.3f} GB per GB stored",
    ]


def report_comparison(comparison: dict[str, Any]) -> list[str]:
    targets = comparison["targets"]
    others = [t for t in targets if t != "orthanc"]
    short = {t: SHORT_NAMES.get(t, t) for t in targets}
    head = f"{'figure [unit]':<66}" + "".join(f"{short[t]:>12}" for t in targets)
    if "orthanc" in targets:
        head += "".join(f"{short[t] + '/Orth.':>15}" for t in others)
    names = ", ".join(f"{short[t]} = {label}" for t, label in targets.items())
    lines = [
        "",
        "=== SIDE BY SIDE, ratios cloudpacs/Orthanc: for rates > 1 means cloudpacs is faster; "
        "for ms, CPU-s, RSS and disk > 1 means cloudpacs uses more (worse) ===",
        f"({names}; '-': not measured)",
        head,
    ]
    group = ""
    for row in comparison["rows"]:
        if row["group"] != group:
            group = row["group"]
            lines.append(f"-- {GROUPS[group][0]}")
        name = f"{row['label']} [{row['panel']}]"
        cells = "".join(
            f"{fmt(row['values'][t], 2) if t in row['values'] else '-':>12}" for t in targets
        )
        if "orthanc" in targets:
            cells += "".join(f"{ratio_text(row['ratios_to_orthanc'].get(t)):>15}" for t in others)
        lines.append(f"{name[:65]:<66}{cells}")
    return lines


SHORT_NAMES = {"cloudpacs": "1 node", "cluster": "N nodes", "orthanc": "Orthanc"}


def ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def report_commands(results: dict[str, Any]) -> list[str]:
    """The commands that started each server, and one ab command line per target."""
    lines = ["", "=== COMMANDS ===", f"bench: {results['command']}"]
    for name, section in (("cloudpacs 1 node", results), *other_sections(results)):
        for command in section.get("commands", []):
            lines.append(f"{name}: {command}")
        if "haproxy_config" in section:
            lines.append(f"{name}, HAProxy config: {section['haproxy_config']}")
        if section.get("qido"):
            lines.append(f"{name}, ab (e.g.): {section['qido'][-1]['command']}")
    return lines


def other_sections(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, results[name]) for name in ("cluster", "orthanc") if name in results]


def report_qido(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "QIDO-RS                         matches  clients   p50 ms   p99 ms    req/s  fail",
    ]
    for r in rows:
        lines.append(
            f"{r['query']:<31} {r['matches']:>7} {r['concurrency']:>8} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8} {fmt(r['rps']):>8} "
            f"{r['failed'] + r['non_2xx']:>5}"
        )
    return lines


def report_wado(wado: dict[str, Any]) -> list[str]:
    lines = ["", "WADO-RS                         clients    req/s     MB/s   p50 ms   p99 ms"]
    for r in wado["instance"]:
        lines.append(
            f"instance ({r['instance_bytes'] // 1024} KB, as stored)    "
            f"{r['concurrency']:>7} {fmt(r['rps']):>8} {fmt(r['mb_per_s']):>8} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8}"
        )
    for r in wado["series"]:
        rps = r["series"] / r["seconds"] if r["seconds"] else 0.0
        lines.append(
            f"series ({r['series']} distinct)          {r['clients']:>7} {fmt(rps):>8} "
            f"{fmt(r['mb_per_s']):>8} {fmt(r['series_p50_ms']):>8} "
            f"{fmt(r['series_p99_ms']):>8}"
        )
    for r in wado["series_metadata"]:
        lines.append(
            f"series metadata ({r['series_instances']} instances)  {r['concurrency']:>7} "
            f"{fmt(r['rps']):>8} {fmt(r['mb_per_s']):>8} {fmt(r['p50_ms']):>8} "
            f"{fmt(r['p99_ms']):>8}"
        )
    lines.append(f"    {resources_line(wado['resources'])}")
    return lines


def report_ceiling(ceiling: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"FERRETDB CEILING (pymongo, {ceiling['document_bytes']} B documents, 512 KB GridFS files)",
        "threads   docs/s   files/s   file MB/s   file+doc/s",
    ]
    for key, value in ceiling.items():
        if key.startswith("threads_"):
            lines.append(
                f"{key[8:]:>7} {value['insert_one_docs_per_s']:>8} "
                f"{value['gridfs_512k_files_per_s']:>9} {value['gridfs_512k_mb_per_s']:>11} "
                f"{value['file_plus_doc_per_s']:>12}"
            )
    return lines
