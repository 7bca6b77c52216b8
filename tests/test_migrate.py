"""`cloudpacs migrate --from-dicomweb` against a real Orthanc (Debian packages `orthanc` and
`orthanc-dicomweb`) holding a few hundred instances: everything arrives byte-exact, a rerun
copies nothing, an interrupted run resumes, a conflicting archive is reported, and a source
that is unreachable, refuses us or is not DICOMweb is one clear line and a non-zero exit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gridfs
import pytest
from pydicom.data import get_testdata_file
from pymongo import MongoClient
from pymongo.database import Database

from cloudpacs.embedded import add_id_lookup_indexes
from tests.conftest import FerretServer, free_port
from tests.factory import Spec, make_dataset, write_study

PERF = Path(__file__).resolve().parents[1] / "perf"
if str(PERF) not in sys.path:
    sys.path.insert(0, str(PERF))

from benchlib import Server  # noqa: E402
from orthanc_server import (  # noqa: E402
    DICOMWEB_ROOT,
    basic_auth,
    orthanc_get,
    orthanc_post_file,
    start_orthanc,
)

CLOUDPACS = Path(sys.executable).with_name("cloudpacs")
AUTH = basic_auth("migrator", "s3cret")
# studies of 2 to 30 instances in 1 to 3 series: 286 synthetic instances in all
STUDY_SHAPES = [(1 + i % 3, 2 + i % 9) for i in range(24)]
# compressed files that ship with pydicom: proof that nothing is transcoded on the way
COMPRESSED = ("JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_RLE.dcm")


@dataclass
class Source:
    """The Orthanc the tests migrate from, and what it holds: SOP UID -> sha256, study."""

    server: Server
    sha: dict[str, str]
    study_of: dict[str, str]
    orthanc_id: dict[str, str]

    @property
    def url(self) -> str:
        return f"{self.server.base}{DICOMWEB_ROOT}"

    def studies(self) -> set[str]:
        return set(self.study_of.values())


def have_orthanc() -> bool:
    return subprocess.run(["dpkg", "-s", "orthanc-dicomweb"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    not have_orthanc(), reason="scripts/install-system-deps.sh orthanc orthanc-dicomweb"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A real Orthanc with HTTP basic authentication, loaded over its REST API."""
    work = tmp_path_factory.mktemp("orthanc")
    files: list[Path] = []
    for n, (series, per_series) in enumerate(STUDY_SHAPES):
        files += [path for path, _ in write_study(work / "in" / f"{n}", series, per_series)]
    files += [Path(str(get_testdata_file(name, download=False))) for name in COMPRESSED]
    server = start_orthanc(work / "server", users={"migrator": "s3cret"})
    try:
        held = Source(server, {}, {}, {})
        for path in files:
            data = path.read_bytes()
            answer = orthanc_post_file(server, data, AUTH)
            assert answer["Status"] == "Success", answer
            tags = json.loads(orthanc_get(server, f"/instances/{answer['ID']}/tags?simplify", AUTH))
            sop = tags["SOPInstanceUID"]
            held.sha[sop] = hashlib.sha256(data).hexdigest()
            held.study_of[sop] = tags["StudyInstanceUID"]
            held.orthanc_id[sop] = answer["ID"]
        yield held
    finally:
        server.stop()


@pytest.fixture
def env(ferretdb: FerretServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for a unique database on the session FerretDB (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    out = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPACS_")}
    out.update(
        CLOUDPACS_MONGO_URI=ferretdb.uri,
        CLOUDPACS_DATABASE=name,
        CLOUDPACS_HOME=str(tmp_path / "home"),
    )
    # what the embedded mode does for its own FerretDB: `_id` lookups through an index
    created = run([str(CLOUDPACS), "db", "init"], out, timeout=60)
    assert created.returncode == 0, created.stderr
    add_id_lookup_indexes(ferretdb.data_dir, name)
    yield out
    with MongoClient(ferretdb.uri) as client:
        client.drop_database(name)


@pytest.fixture
def db(env: dict[str, str]) -> Iterator[Database[dict[str, Any]]]:
    with MongoClient(env["CLOUDPACS_MONGO_URI"]) as client:
        yield client[env["CLOUDPACS_DATABASE"]]


PROJECT = ("--project", "from-orthanc")


def migrate_argv(source: Source, report: Path, *extra: str) -> list[str]:
    return [
        str(CLOUDPACS),
        "migrate",
        "--from-dicomweb",
        source.url,
        "--header",
        f"Authorization: {AUTH}",
        "--report",
        str(report),
        "--no-progress",
        *extra,
    ]


def run(
    argv: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def load(report: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def archived_bytes(db: Database[dict[str, Any]]) -> dict[str, str]:
    """SOP UID -> sha256 of the bytes in GridFS, read with pymongo's standard GridFS reader."""
    bucket = gridfs.GridFSBucket(db)
    return {
        doc["_id"]: hashlib.sha256(bucket.open_download_stream(doc["file_id"]).read()).hexdigest()
        for doc in db.instances.find({}, {"file_id": 1})
    }


def status_of(report: dict[str, Any]) -> dict[str, str]:
    return {s["study"]: s["status"] for s in report["studies"]}


# ---- the tests --------------------------------------------------------------------------
def test_everything_arrives_byte_exact_and_a_rerun_copies_nothing(
    source: Source, env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    total = len(source.sha)
    assert total == 289  # a few hundred
    started = time.monotonic()
    first = run(migrate_argv(source, tmp_path / "first.json", *PROJECT), env)
    seconds = time.monotonic() - started

    assert first.returncode == 0, first.stdout + first.stderr
    studies = len(source.studies())
    assert f"studies: {studies} of {studies}  copied: {studies}" in first.stdout
    assert "result: OK" in first.stdout
    report = load(tmp_path / "first.json")
    totals = report["totals"]
    assert report["ok"] is True
    assert (totals["stored"], totals["duplicate"], totals["failed"]) == (total, 0, 0)
    assert (totals["missing"], totals["checksum_mismatches"]) == (0, 0)
    assert totals["instances_in_source"] == totals["instances_in_archive"] == total
    for study in report["studies"]:
        assert study["source_digest"] == study["archive_digest"]
        assert study["source_instances"] == study["archive_instances"]
    print(f"\nmigrated {total} instances in {seconds:.1f} s: {totals['instances_per_s']}/s")

    # byte-exact: Orthanc's stored file = the file we gave it = cloudpacs' GridFS bytes
    for sop in source.sha:
        stored = orthanc_get(source.server, f"/instances/{source.orthanc_id[sop]}/file", AUTH)
        assert hashlib.sha256(stored).hexdigest() == source.sha[sop]
    assert archived_bytes(db) == source.sha
    assert {d["_id"]: d["sha256"] for d in db.instances.find({}, {"sha256": 1})} == source.sha
    assert set(db.instances.distinct("project")) == {"from-orthanc"}  # --project
    for study_uid in source.studies():
        expected = sum(1 for s in source.study_of.values() if s == study_uid)
        assert db.studies.find_one({"_id": study_uid})["instance_count"] == expected  # type: ignore[index]

    again = run(migrate_argv(source, tmp_path / "again.json", *PROJECT), env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"copied: 0  already complete: {studies}  incomplete: 0" in again.stdout
    report = load(tmp_path / "again.json")
    totals = report["totals"]
    assert (totals["stored"], totals["duplicate"], totals["fetched_bytes"]) == (0, 0, 0)
    assert totals["instances_in_source"] == totals["instances_in_archive"] == total
    assert set(status_of(report).values()) == {"already-complete"}
    assert db.instances.count_documents({}) == total

    # an instance lost from the archive afterwards: reported, and the next run copies it again
    lost = min(source.sha)
    db.instances.delete_one({"_id": lost})
    broken = run(migrate_argv(source, tmp_path / "broken.json", *PROJECT), env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"instance {lost}: missing from the archive" in broken.stdout
    assert load(tmp_path / "broken.json")["totals"]["missing"] == 1
    repaired = run(migrate_argv(source, tmp_path / "repaired.json", *PROJECT), env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    totals = load(tmp_path / "repaired.json")["totals"]
    assert totals["stored"] == 1
    assert totals["studies"]["copied"] == 1
    assert db.instances.find_one({"_id": lost})["sha256"] == source.sha[lost]  # type: ignore[index]


def test_an_interrupted_migration_resumes_without_fetching_finished_studies_again(
    source: Source, env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    # a first run stopped by --limit-studies: exactly 4 studies, recorded as finished
    limited = run(migrate_argv(source, tmp_path / "limited.json", "--limit-studies", "4"), env)
    assert limited.returncode == 0, limited.stdout + limited.stderr
    assert "stopped at --limit-studies" in limited.stdout
    first = set(status_of(load(tmp_path / "limited.json")))
    assert len(first) == 4
    assert db.checkpoints.count_documents({"job": {"$exists": True}}) == 4

    # a second run, signalled in the middle: it says so, keeps what it finished
    process = subprocess.Popen(
        migrate_argv(source, tmp_path / "stopped.json", "--concurrency", "2"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while db.checkpoints.count_documents({"job": {"$exists": True}}) < 8:
            assert process.poll() is None, "finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, out + err
    assert "interrupted: rerun the same command to resume" in out
    stopped = load(tmp_path / "stopped.json")
    assert stopped["interrupted"] is True
    statuses = status_of(stopped)
    assert {s for s, v in statuses.items() if v == "already-complete"} == first
    finished = {d["item"] for d in db.checkpoints.find({"job": {"$exists": True}})}
    assert 8 <= len(finished) < len(source.studies())

    # the rerun fetches only the studies not finished before, and completes the archive
    resumed = run(migrate_argv(source, tmp_path / "resumed.json"), env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = load(tmp_path / "resumed.json")
    statuses = status_of(report)
    assert {s for s, v in statuses.items() if v == "already-complete"} == finished
    assert {s for s, v in statuses.items() if v == "copied"} == source.studies() - finished
    fetched = report["totals"]["stored"] + report["totals"]["duplicate"]
    assert fetched == sum(1 for s in source.study_of.values() if s not in finished)
    assert report["ok"] is True
    assert archived_bytes(db) == source.sha


def test_a_conflicting_archive_is_reported_and_fails(
    source: Source, env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    """The archive already holds other bytes under one of the source's SOP UIDs."""
    request = urllib.request.Request(
        f"{source.url}/studies?limit=1", headers={"Accept": "application/dicom+json"}
    )
    request.add_header("Authorization", AUTH)
    with urllib.request.urlopen(request, timeout=30) as answer:
        first_study = json.loads(answer.read())[0]["0020000D"]["Value"][0]
    sop = min(s for s, study in source.study_of.items() if study == first_study)
    ds = make_dataset(Spec(study_uid=first_study, sop_uid=sop, patient_name="Other^Bytes"))
    ds.save_as(tmp_path / "conflict.dcm", enforce_file_format=True)
    imported = run([str(CLOUDPACS), "import", str(tmp_path / "conflict.dcm"), "--no-progress"], env)
    assert imported.returncode == 0, imported.stderr

    result = run(migrate_argv(source, tmp_path / "report.json", "--limit-studies", "1"), env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "result: INCOMPLETE" in result.stdout
    assert f"instance {sop}: rejected:" in result.stdout
    report = load(tmp_path / "report.json")
    assert report["ok"] is False
    [study] = report["studies"]
    assert study["status"] == "incomplete"
    problems = {p["sop"]: p["problem"] for p in study["problems"]}
    assert problems[sop].startswith("checksum differs") or "rejected" in problems[sop]
    assert db.checkpoints.count_documents({"job": {"$exists": True}}) == 0


@pytest.mark.parametrize(
    ("url", "header", "expected"),
    [
        ("http://127.0.0.1:{free}/dicom-web", True, "cannot reach http://127.0.0.1:"),
        ("{base}/dicom-web", False, "refused access (401): give credentials with --header"),
        ("{base}/no-such-root", True, "answered 404: is the URL the DICOMweb service root?"),
        ("{base}", True, "answered 400 Bad Request: is this the DICOMweb service root?"),
        ("ftp://example.org/dicom-web", True, "must be an http:// or https:// URL"),
    ],
    ids=["unreachable", "no-credentials", "404", "orthanc-rest-not-dicomweb", "not-http"],
)
def test_a_source_that_cannot_be_used_is_one_clear_line_and_a_non_zero_exit(
    source: Source, env: dict[str, str], tmp_path: Path, url: str, header: bool, expected: str
) -> None:
    target = url.format(free=free_port(), base=source.server.base)
    argv = [str(CLOUDPACS), "migrate", "--from-dicomweb", target, "--no-progress"]
    if header:
        argv += ["--header", f"Authorization: {AUTH}"]
    result = run(argv, env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cloudpacs: ") and expected in last, result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def test_a_malformed_header_is_refused_before_start_up(env: dict[str, str]) -> None:
    argv = [str(CLOUDPACS), "migrate", "--from-dicomweb", "http://x/dw", "--header", "nocolon"]
    result = run(argv, env, timeout=60)
    assert result.returncode == 1
    assert "--header must be 'Name: value'" in result.stderr


def test_credentials_in_the_url_are_used_and_never_shown(
    source: Source, env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    url = source.url.replace("http://", "http://migrator:s3cret@")
    argv = [str(CLOUDPACS), "migrate", "--from-dicomweb", url, "--limit-studies", "1"]
    result = run([*argv, "--report", str(tmp_path / "r.json"), "--no-progress"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = load(tmp_path / "r.json")
    assert report["source"] == source.url
    assert report["totals"]["studies"]["copied"] == 1
    assert "s3cret" not in result.stdout + result.stderr + json.dumps(report)
    assert all("s3cret" not in d["_id"] for d in db.checkpoints.find({}, {"_id": 1}))
