"""The stdout tables of perf/bench_scale.py, from its results JSON.

.venv/bin/python perf/scale_report.py perf/results/scale-*.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib import fmt

SYSTEMS = ("cloudpacs", "orthanc")


def rows_by_key(step: dict[str, Any], system: str) -> dict[tuple[str, int], dict[str, Any]]:
    rows = step["qido"].get(system, {}).get("rows", [])
    return {(r["query"], r["concurrency"]): r for r in rows}


def measured(row: dict[str, Any] | None) -> bool:
    return row is not None and "skipped" not in row and row.get("requests", 0) > 0


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if not measured(row):
        return "skipped" if "skipped" in row else "no answer"
    return f"{fmt(row['p50_ms'])} / {fmt(row['p99_ms'])}"


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    if not (measured(a) and measured(b)) or not b or not b[key]:
        return "-"
    assert a is not None
    return f"{a[key] / b[key]:.3g}"


def report_loads(results: dict[str, Any]) -> Iterator[str]:
    yield "LOAD (increment)        studies  instances   cloudpacs inst/s   Orthanc inst/s"
    for step in results["sizes"]:
        load = step["load"]
        c, o = load["cloudpacs"], load.get("orthanc", {})  # none: cloudpacs alone
        yield (
            f"to {step['instances']:>9,}       {c['studies']:>7} {c['instances']:>10,} "
            f"{c['instances_per_s']:>18} {o.get('instances_per_s', 'not run'):>16}"
            f"   loadavg {load['loadavg_before'][0]:.1f} -> {load['loadavg_after'][0]:.1f}"
        )


def report_qido(step: dict[str, Any]) -> Iterator[str]:
    mine, theirs = rows_by_key(step, "cloudpacs"), rows_by_key(step, "orthanc")
    yield ""
    yield (
        f"QIDO-RS at {step['instances']:,} instances ({step['studies']} studies; "
        f"loadavg at end {step['loadavg_end'][0]:.1f}); ms"
    )
    yield (
        f"{'query':<38} {'c':>3} {'match':>6}  {'cloudpacs p50 / p99':>22}  "
        f"{'Orthanc p50 / p99':>20}  {'p50 x':>7} {'p99 x':>7}"
    )
    for key, row in mine.items():
        other = theirs.get(key)
        yield (
            f"{key[0]:<38} {key[1]:>3} {row['matches']:>6}  {cell(row):>22}  "
            f"{cell(other):>20}  {ratio(row, other, 'p50_ms'):>7} "
            f"{ratio(row, other, 'p99_ms'):>7}"
        )


def report_growth(results: dict[str, Any]) -> Iterator[str]:
    steps = results["sizes"]
    if len(steps) < 2:
        return
    first, last = steps[0], steps[-1]
    yield ""
    yield (
        f"GROWTH of p99 from {first['instances']:,} to {last['instances']:,} instances "
        "(target: within 2x)"
    )
    yield f"{'query':<38} {'c':>3}  {'cloudpacs':>10} {'Orthanc':>10}"
    before = {s: rows_by_key(first, s) for s in SYSTEMS}
    after = {s: rows_by_key(last, s) for s in SYSTEMS}
    for key in before["cloudpacs"]:
        cells = [ratio(after[s].get(key), before[s].get(key), "p99_ms") for s in SYSTEMS]
        yield f"{key[0]:<38} {key[1]:>3}  {cells[0]:>10} {cells[1]:>10}"


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['mem_total_gb']} GB; FerretDB "
        f"{m['ferretdb']}; Orthanc {results.get('orthanc_versions', {})}",
        f"direct load vs real ingest: {results.get('verify', {})}",
        "",
        *report_loads(results),
    ]
    for step in results["sizes"]:
        lines += report_qido(step)
    lines += report_growth(results)
    lines.append("x = cloudpacs / Orthanc (> 1: cloudpacs slower)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    print(report(json.loads(args.results.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
