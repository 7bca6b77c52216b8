"""The reconciliation report of a migration: per study, the source's instance count against
the archive's, and the source's sha256 of each instance against the `sha256` the archive
stored for it. Written as JSON, summarised on stdout."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudpacs.storage.instances import InstanceStore
from cloudpacs.storage.schema import STUDIES

COPIED = "copied"
ALREADY_COMPLETE = "already-complete"
INCOMPLETE = "incomplete"
SHOWN_PROBLEMS = 20  # on stdout; the JSON report lists them all


@dataclass
class StudyReport:
    study: str
    status: str = INCOMPLETE
    source_instances: int = 0
    archive_instances: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # stored, duplicate, rejected, failed
    source_digest: str = ""
    archive_digest: str = ""
    problems: list[dict[str, str]] = field(default_factory=list)

    def problem(self, sop: str | None, text: str) -> None:
        self.problems.append({"sop": sop or "", "problem": text})

    def as_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "status": self.status,
            "source_instances": self.source_instances,
            "archive_instances": self.archive_instances,
            "counts": dict(self.counts),
            "source_digest": self.source_digest,
            "archive_digest": self.archive_digest,
            "problems": self.problems,
        }


def digest(pairs: Iterable[tuple[str, str]]) -> str:
    """One checksum for a study: sha256 over the sorted "SOP-UID sha256" lines."""
    lines = "".join(f"{sop} {sha}\n" for sop, sha in sorted(pairs))
    return hashlib.sha256(lines.encode()).hexdigest()


async def reconcile(store: InstanceStore, report: StudyReport, source: dict[str, str]) -> None:
    """Check each source instance (SOP UID -> source sha256) against the archive.

    Every lookup is by `_id` (the only lookup FerretDB answers from an index); the archive's
    count is the study rollup's `instance_count`."""
    archived: dict[str, str] = {}
    for sop, sha in sorted(source.items()):
        doc = await store.existing(sop)
        if doc is None:
            report.problem(sop, "missing from the archive")
            continue
        archived[sop] = str(doc.get("sha256"))
        if archived[sop] != sha:
            report.problem(sop, f"checksum differs: source {sha}, archive {archived[sop]}")
        elif doc.get("study") != report.study:
            report.problem(sop, f"archived in another study ({doc.get('study')})")
    studies = await store.find(STUDIES, {"_id": report.study}, projection={"instance_count": 1})
    report.source_instances = len(source)
    report.archive_instances = int(studies[0].get("instance_count", 0)) if studies else 0
    report.source_digest = digest(source.items())
    report.archive_digest = digest(archived.items())


@dataclass
class MigrationReport:
    source: str
    project: str | None
    started_at: str
    seconds: float = 0.0
    studies_in_source: int = 0
    limited: bool = False
    interrupted: bool = False
    aborted: str = ""  # why the migration gave up early, if it did
    fetched_bytes: int = 0
    studies: list[StudyReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.interrupted
            and not self.aborted
            and all(s.status != INCOMPLETE and not s.problems for s in self.studies)
        )

    def totals(self) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        status: Counter[str] = Counter()
        for study in self.studies:
            counts.update(study.counts)
            status[study.status] += 1
        fetched = counts["stored"] + counts["duplicate"]
        problems = [p["problem"] for s in self.studies for p in s.problems]
        return {
            "studies_in_source": self.studies_in_source,
            "studies": {key: status[key] for key in (COPIED, ALREADY_COMPLETE, INCOMPLETE)},
            "instances_in_source": sum(s.source_instances for s in self.studies),
            "instances_in_archive": sum(s.archive_instances for s in self.studies),
            **{key: counts[key] for key in ("stored", "duplicate", "rejected", "failed")},
            "missing": sum(p.startswith("missing") for p in problems),
            "checksum_mismatches": sum(p.startswith("checksum") for p in problems),
            "fetched_bytes": self.fetched_bytes,
            "instances_per_s": round(fetched / self.seconds, 1) if self.seconds else 0.0,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "project": self.project,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
            "limited": self.limited,
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "totals": self.totals(),
            "studies": [s.as_json() for s in self.studies],
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        tmp.replace(path)

    def render(self) -> str:
        t = self.totals()
        s = t["studies"]
        lines = [
            f"source: {self.source}" + (f"  project: {self.project}" if self.project else ""),
            f"studies: {len(self.studies)} of {t['studies_in_source']}  copied: {s[COPIED]}  "
            f"already complete: {s[ALREADY_COMPLETE]}  incomplete: {s[INCOMPLETE]}",
            f"instances: {t['instances_in_source']} in source  stored: {t['stored']}  "
            f"duplicate: {t['duplicate']}  rejected: {t['rejected']}  failed: {t['failed']}",
            f"reconciliation: {t['missing']} missing, {t['checksum_mismatches']} checksum "
            f"mismatches, {t['instances_in_archive']} instances in the archive for these studies",
            f"took {self.seconds:.1f} s: {t['instances_per_s']} instances/s, "
            f"{t['fetched_bytes'] / 1e6:.1f} MB fetched",
        ]
        if self.limited:
            lines.append("stopped at --limit-studies: rerun without it to copy the rest")
        if self.interrupted:
            lines.append("interrupted: rerun the same command to resume")
        if self.aborted:
            lines.append(f"gave up: {self.aborted}; fix the cause, then rerun to resume")
        problems = [(s.study, p) for s in self.studies for p in s.problems]
        for study, p in problems[:SHOWN_PROBLEMS]:
            lines.append(f"  study {study} instance {p['sop'] or '-'}: {p['problem']}")
        if len(problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... {len(problems) - SHOWN_PROBLEMS} more in the report")
        lines.append("result: " + ("OK" if self.ok else "INCOMPLETE"))
        return "\n".join(lines)
