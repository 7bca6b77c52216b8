"""PNG plots of a perf/bench_scale.py results JSON: QIDO p50/p99 against archive size per
query and client count, and the load rates, for cloudpacs and Orthanc (log-log axes).

    .venv/bin/python perf/scale_plot.py perf/results/scale-*.json   # PNGs beside the JSON
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from scale_report import SYSTEMS, measured, rows_by_key

COLORS = {"cloudpacs": "tab:blue", "orthanc": "tab:orange"}
STYLES = {"p50_ms": "-", "p99_ms": "--"}


def series_of(results: dict[str, Any], system: str, key: tuple[str, int], stat: str) -> list:
    points = []
    for step in results["sizes"]:
        row = rows_by_key(step, system).get(key)
        if row is not None and measured(row):
            points.append((step["instances"], row[stat]))
    return points


def plot_qido(results: dict[str, Any], path: Path) -> Path:
    first = results["sizes"][0]
    queries = list(dict.fromkeys(r["query"] for r in first["qido"]["cloudpacs"]["rows"]))
    clients = list(results["plan"]["clients"])
    fig, axes = plt.subplots(
        len(queries), len(clients), figsize=(4.2 * len(clients), 3.0 * len(queries)), squeeze=False
    )
    for i, query in enumerate(queries):
        for j, c in enumerate(clients):
            ax = axes[i][j]
            for system in SYSTEMS:
                for stat, style in STYLES.items():
                    points = series_of(results, system, (query, c), stat)
                    if points:
                        xs, ys = zip(*points, strict=True)
                        label = f"{system} {stat[:3]}"
                        ax.plot(xs, ys, style, marker="o", color=COLORS[system], label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{query}, {c} client(s)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(queries) - 1:
                ax.set_xlabel("instances in the archive")
            if j == 0:
                ax.set_ylabel("latency (ms)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("QIDO-RS latency vs archive size (missing points: level skipped)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_load(results: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for system in SYSTEMS:
        points = [
            (step["instances"], step["load"][system]["instances_per_s"])
            for step in results["sizes"]
            if system in step["load"]
        ]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", color=COLORS[system], label=system)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("instances in the archive after the increment")
    ax.set_ylabel("load rate of the increment (instances/s)")
    ax.set_title("Load rate (cloudpacs: metadata only, direct)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_results(results: dict[str, Any], stem: Path) -> list[Path]:
    """Two PNGs named after `stem`: <stem>-qido.png and <stem>-load.png."""
    if not results["sizes"]:
        return []
    return [
        plot_qido(results, stem.with_name(f"{stem.name}-qido.png")),
        plot_load(results, stem.with_name(f"{stem.name}-load.png")),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    for path in plot_results(json.loads(args.results.read_text()), args.results.with_suffix("")):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
