"""One PNG per figure of a perf/bench_core.py run (cloudpacs 1 node, cloudpacs N nodes behind
HAProxy and Orthanc side by side), redrawn from its results JSON without rerunning anything.

    .venv/bin/python perf/plot_results.py                       # perf/out/results-core.json
    .venv/bin/python perf/plot_results.py perf/results/results-core.json --out perf/plots

Needs matplotlib: `pip install -e '.[perf]'` (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from benchlib import OUT
from comparison import GROUPS, comparison
from matplotlib.axes import Axes

COLORS = {"cloudpacs": "#1f77b4", "cluster": "#2ca02c", "orthanc": "#ff7f0e"}
# a panel whose values span more than this factor gets a log scale
LOG_SCALE_SPAN = 30


def panels(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of one group by panel, in the order they come."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["panel"], []).append(row)
    return out


def draw_panel(ax: Axes, title: str, rows: list[dict[str, Any]], targets: dict[str, str]) -> None:
    present = [t for t in targets if any(t in r["values"] for r in rows)]
    width = 0.8 / max(len(present), 1)
    values = [v for r in rows for v in r["values"].values() if v > 0]
    for i, target in enumerate(present):
        xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(rows))]
        heights = [r["values"].get(target, 0.0) for r in rows]
        bars = ax.bar(xs, heights, width, label=targets[target], color=COLORS.get(target))
        labels = [
            bar_text(h) if target in r["values"] else "" for h, r in zip(heights, rows, strict=True)
        ]
        ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=2)
    if values and max(values) / min(values) > LOG_SCALE_SPAN:
        ax.set_yscale("log")
    ax.margins(y=0.25)
    better = rows[0]["better"]
    ax.set_title(f"{title} ({better} is better)", fontsize=10)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def bar_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot_group(group: str, rows: list[dict[str, Any]], info: dict[str, Any], folder: Path) -> Path:
    title, stem = GROUPS[group]
    by_panel = panels(rows)
    fig, axes = plt.subplots(
        1, len(by_panel), figsize=(4.2 * len(by_panel) + 1.5, 5.2), squeeze=False
    )
    for ax, (panel, panel_rows) in zip(axes[0], by_panel.items(), strict=True):
        draw_panel(ax, panel, panel_rows, info["targets"])
    legend = {}  # label -> handle, over all panels (a target may miss from some)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    ordered = [label for label in info["targets"].values() if label in legend]
    handles = [legend[label] for label in ordered]
    fig.legend(handles, ordered, loc="lower center", ncol=len(ordered), fontsize=9)
    fig.suptitle(f"{title}\n{info['subtitle']}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = folder / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def subtitle(results: dict[str, Any]) -> str:
    m, c = results["machine"], results["corpus"]
    return (
        f"{c['instances']} instances, {c['bytes'] / 1e6:.0f} MB; {m['nproc']} vCPU, "
        f"commit {results['git_commit']}, {results['started_at']}"
    )


def plot_all(results: dict[str, Any], folder: Path) -> list[Path]:
    """Draw every figure of `results` into `folder`; the PNG paths."""
    folder.mkdir(parents=True, exist_ok=True)
    table = comparison(results)
    info = {"targets": table["targets"], "subtitle": subtitle(results)}
    by_group: dict[str, list[dict[str, Any]]] = {}
    for row in table["rows"]:
        by_group.setdefault(row["group"], []).append(row)
    return [plot_group(group, rows, info, folder) for group, rows in by_group.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=OUT / "results-core.json")
    parser.add_argument("--out", type=Path, default=OUT / "plots", help="PNG folder")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in plot_all(results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
