"""The figures of issue #6 side by side: cloudpacs on one node, cloudpacs on N nodes behind
HAProxy and Orthanc, each figure as one row with its value per target and the ratios
cloudpacs/Orthanc. The report (bench_report.py) prints these rows and plot_results.py draws
one PNG per group of them, both from a results JSON of perf/bench_core.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

REFERENCE = "orthanc"

# group -> (title, file name of its plot)
GROUPS = {
    "stow": ("STOW-RS ingest", "stow"),
    "ingest_doors": ("Ingest by front door (folder, STOW-RS, SQS)", "ingest-doors"),
    "ingest_cost": ("Ingest cost per 1,000 instances", "ingest-cost"),
    "qido_p50": ("QIDO-RS latency p50 (ms)", "qido-p50"),
    "qido_p99": ("QIDO-RS latency p99 (ms)", "qido-p99"),
    "wado": ("WADO-RS retrieval", "wado"),
    "wado_metadata": ("WADO-RS series metadata latency (ms)", "wado-metadata"),
    "disk": ("Bytes on disk per GB of DICOM stored", "disk"),
}


@dataclass
class Row:
    """One figure: its plot group and panel, its label, and a value per target."""

    group: str
    panel: str
    label: str
    better: str  # "higher" or "lower"
    values: dict[str, float] = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float | None]:
        """target/Orthanc for every other target (None when Orthanc has no value)."""
        base = self.values.get(REFERENCE)
        return {
            name: float(f"{value / base:.3g}") if base else None
            for name, value in self.values.items()
            if name != REFERENCE
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios_to_orthanc": self.ratios}


def target_labels(results: dict[str, Any]) -> dict[str, str]:
    labels = {"cloudpacs": "cloudpacs 1 node"}
    if "cluster" in results:
        labels["cluster"] = f"cloudpacs {results['cluster']['nodes']} nodes + HAProxy"
    if "orthanc" in results:
        labels["orthanc"] = "Orthanc"
    return labels


def sections(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's results in one shape: stow, load, qido, wado, disk."""
    out = {"cloudpacs": {**results, "load": results.get("folder_ingest")}}
    for name in ("cluster", "orthanc"):
        if name in results:
            out[name] = results[name]
    return out


def process_totals(resources: dict[str, Any]) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB, sum of each process's peak) of the measured processes."""
    procs = [v for k, v in resources.items() if k not in ("wall_seconds", "other_processes")]
    return sum(p["cpu_seconds"] for p in procs), sum(p["peak_rss_mb"] for p in procs)


def per_thousand(level: dict[str, Any]) -> float:
    """CPU seconds per 1,000 instances ingested in one ingest run."""
    stored = level.get("stored", level.get("instances", 0))
    return round(1000 * process_totals(level["resources"])[0] / stored, 2)


class RowBuilder:
    """Collects rows; a target without the figure (a phase skipped or failed) is left out."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.sections = sections(results)
        self.rows: list[Row] = []

    def add(
        self, group: str, panel: str, label: str, better: str, pick: Callable[[Any], Any]
    ) -> None:
        values = {}
        for name, section in self.sections.items():
            try:
                values[name] = pick(section)
            except (KeyError, IndexError, TypeError, ZeroDivisionError):
                continue
        self.add_values(group, panel, label, better, values)

    def add_values(
        self, group: str, panel: str, label: str, better: str, values: dict[str, Any]
    ) -> None:
        # 0 is no measurement (e.g. every request of an ab run failed): left out, not plotted
        known = {name: float(v) for name, v in values.items() if v is not None and v > 0}
        if known:
            self.rows.append(Row(group, panel, label, better, known))


def clients_label(count: int) -> str:
    return f"{count} client{'s' if count > 1 else ''}"


def stow_rows(b: RowBuilder, plan: dict[str, Any]) -> None:
    for i, clients in enumerate(plan["stow_clients"]):
        label = clients_label(clients)
        b.add(
            "stow", "instances/s", label, "higher", lambda s, i=i: s["stow"][i]["instances_per_s"]
        )
        b.add("stow", "MB/s", label, "higher", lambda s, i=i: s["stow"][i]["mb_per_s"])
        b.add(
            "ingest_cost",
            "CPU-s per 1,000 instances",
            f"STOW-RS, {label}",
            "lower",
            lambda s, i=i: per_thousand(s["stow"][i]),
        )
        b.add(
            "ingest_cost",
            "peak RSS MB, sum of processes",
            f"STOW-RS, {label}",
            "lower",
            lambda s, i=i: process_totals(s["stow"][i]["resources"])[1],
        )


def ingest_rows(b: RowBuilder, results: dict[str, Any]) -> None:
    """Whole-corpus ingest (1 node: folder; N nodes and Orthanc: STOW-RS) and SQS."""
    clients = results["plan"]["load_clients"]
    whole = f"whole corpus (1 node: folder; others: STOW-RS x{clients})"
    for panel, key in (("instances/s", "instances_per_s"), ("MB/s", "mb_per_s")):
        b.add("ingest_doors", panel, whole, "higher", lambda s, key=key: s["load"][key])
        if clients in results["plan"]["stow_clients"]:
            level = results["plan"]["stow_clients"].index(clients)
            label = f"STOW-RS x{clients}, {results['plan']['stow_instances']} instances"
            b.add("ingest_doors", panel, label, "higher", lambda s, i=level, k=key: s["stow"][i][k])
        for run in results.get("sqs_ingest", []):
            value = run["objects_per_s" if key == "instances_per_s" else key]
            label = f"SQS, {run['objects']} objects, {run['daemons']} daemon(s)"
            b.add_values("ingest_doors", panel, label, "higher", {"cloudpacs": value})
    b.add(
        "ingest_cost",
        "CPU-s per 1,000 instances",
        whole,
        "lower",
        lambda s: per_thousand(s["load"]),
    )
    b.add(
        "ingest_cost",
        "peak RSS MB, sum of processes",
        whole,
        "lower",
        lambda s: process_totals(s["load"]["resources"])[1],
    )


def qido_rows(b: RowBuilder, results: dict[str, Any]) -> None:
    for row_index, row in enumerate(results["qido"]):
        panel = clients_label(row["concurrency"])
        for stat in ("p50", "p99"):
            b.add(
                f"qido_{stat}",
                panel,
                row["query"],
                "lower",
                lambda s, i=row_index, k=f"{stat}_ms": s["qido"][i][k],
            )


def wado_rows(b: RowBuilder, results: dict[str, Any]) -> None:
    wado = results["wado"]
    for i, row in enumerate(wado["instance"]):
        label = f"instance, {clients_label(row['concurrency'])}"
        b.add("wado", "req/s", label, "higher", lambda s, i=i: s["wado"]["instance"][i]["rps"])
        b.add("wado", "MB/s", label, "higher", lambda s, i=i: s["wado"]["instance"][i]["mb_per_s"])
    for i, row in enumerate(wado["series"]):
        b.add(
            "wado",
            "MB/s",
            f"series, {clients_label(row['clients'])}",
            "higher",
            lambda s, i=i: s["wado"]["series"][i]["mb_per_s"],
        )
    for i, row in enumerate(wado["series_metadata"]):
        for stat in ("p50", "p99"):
            b.add(
                "wado_metadata",
                f"{stat} ms",
                clients_label(row["concurrency"]),
                "lower",
                lambda s, i=i, k=f"{stat}_ms": s["wado"]["series_metadata"][i][k],
            )


def comparison(results: dict[str, Any]) -> dict[str, Any]:
    """Every figure as a row (values per target, ratios to Orthanc), and the target labels."""
    b = RowBuilder(results)
    stow_rows(b, results["plan"])
    ingest_rows(b, results)
    qido_rows(b, results)
    wado_rows(b, results)
    b.add(
        "disk",
        "GB on disk per GB of DICOM",
        "whole corpus stored",
        "lower",
        lambda s: s["disk"]["disk_bytes_per_gb_stored"] / 1e9,
    )
    rows = sorted(b.rows, key=lambda row: list(GROUPS).index(row.group))  # stable
    return {"targets": target_labels(results), "rows": [row.as_dict() for row in rows]}
