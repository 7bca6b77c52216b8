"""The `cloudpacs` console command, run as a real process: import, db init|sweep, config and
its errors, and `run` on the embedded FerretDB from start to SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from cloudpacs.storage.clock import utcnow
from tests.conftest import FERRETDB_BINARY, FerretServer, free_port
from tests.factory import Spec, make_dataset, write_instance, write_study

CLOUDPACS = Path(sys.executable).with_name("cloudpacs")
NOT_DICOM = (
    "not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble "
    "or no File Meta Information"
)


# ---- helpers ----------------------------------------------------------------------------
def base_env(**settings: str) -> dict[str, str]:
    """This environment without any CLOUDPACS_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPACS_")}
    env.update(settings)
    return env


def cloudpacs(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLOUDPACS), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def db_env(ferretdb: FerretServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for a unique database on the session FerretDB (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield base_env(
        CLOUDPACS_MONGO_URI=ferretdb.uri,
        CLOUDPACS_DATABASE=name,
        CLOUDPACS_HOME=str(tmp_path / "home"),
    )
    with MongoClient(ferretdb.uri) as client:
        client.drop_database(name)


@pytest.fixture
def db(db_env: dict[str, str]) -> Iterator[Database[dict[str, Any]]]:
    """The test's database, read directly."""
    with MongoClient(db_env["CLOUDPACS_MONGO_URI"]) as client:
        yield client[db_env["CLOUDPACS_DATABASE"]]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---- import, db, config -----------------------------------------------------------------
def test_import_prints_exact_counts_and_reasons_and_leaves_files(
    db_env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    study = write_study(folder / "study", n_series=1, per_series=3)
    (folder / "copies").mkdir()
    shutil.copy(study[0][0], folder / "copies" / "same-bytes.dcm")
    (folder / "notes.txt").write_text("not an image\n" * 30)
    ds = make_dataset(Spec())
    del ds.StudyInstanceUID
    ds.save_as(folder / "no-study.dcm", enforce_file_format=True)
    before = digests(folder)

    first = cloudpacs("import", str(folder), "--no-progress", env=db_env, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == "stored: 3  duplicate: 1  rejected: 2  failed: 0"
    assert sorted(lines[1:]) == [
        f"  rejected {folder / 'no-study.dcm'}: StudyInstanceUID is missing or empty",
        f"  rejected {folder / 'notes.txt'}: {NOT_DICOM}",
    ]
    assert digests(folder) == before, "import must leave the files untouched"
    assert "Doe^Jane" not in first.stderr + first.stdout  # patient data never logged
    assert set(db.instances.distinct("_id")) == {spec.sop_uid for _, spec in study}
    assert db.studies.find_one({"_id": study[0][1].study_uid})["instance_count"] == 3  # type: ignore[index]

    again = cloudpacs("import", str(folder), "--no-progress", env=db_env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "stored: 0  duplicate: 4  rejected: 2  failed: 0"
    assert db.instances.count_documents({}) == 3


def test_import_of_a_missing_path_is_a_rejection_not_a_crash(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    result = cloudpacs(
        "import", str(tmp_path / "nope.dcm"), "--no-progress", env=db_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stored: 0  duplicate: 0  rejected: 1  failed: 0",
        f"  rejected {tmp_path / 'nope.dcm'}: cannot read file: No such file or directory",
    ]


def test_db_init_says_server_side_validation_is_unavailable(
    db_env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    for _ in range(2):  # idempotent
        result = cloudpacs("db", "init", env=db_env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("server-side validation is unavailable on FerretDB ")
        assert lines[0].endswith(": relying on the application's validation")
        assert lines[-2:] == ["indexes ready", "original files kept in GridFS"]
    assert {"instances", "series", "studies", "uploads"} <= set(db.list_collection_names())


def test_db_sweep_deletes_an_abandoned_upload(
    db_env: dict[str, str], db: Database[dict[str, Any]], tmp_path: Path
) -> None:
    assert cloudpacs("db", "init", env=db_env, cwd=tmp_path).returncode == 0
    entry = ObjectId()
    db.uploads.insert_one({"_id": entry, "name": "1.2.3", "started_at": utcnow()})
    db["fs.chunks"].insert_one({"files_id": entry, "n": 0, "data": Binary(b"x" * 100)})

    kept = cloudpacs("db", "sweep", env=db_env, cwd=tmp_path)  # default grace: one hour
    assert kept.returncode == 0, kept.stderr
    assert "orphans_deleted=0" in kept.stdout
    assert db.uploads.count_documents({}) == 1

    env = {**db_env, "CLOUDPACS_ORPHAN_GRACE_SECONDS": "0"}
    swept = cloudpacs("db", "sweep", env=env, cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.strip() == (
        "SweepReport(orphans_deleted=1, uploads_settled=0, studies_repaired=0, "
        "unjournaled_deleted=0)"
    )
    assert db.uploads.count_documents({}) == 0
    assert db["fs.chunks"].count_documents({}) == 0


def test_config_prints_the_settings_with_the_password_masked(tmp_path: Path) -> None:
    env = base_env(
        CLOUDPACS_MONGO_URI="mongodb://user:secret@127.0.0.1:1/",
        CLOUDPACS_INGEST_CONCURRENCY="3",
    )
    result = cloudpacs("config", "--home", str(tmp_path / "h"), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["mongo_uri"] == "mongodb://user:***@127.0.0.1:1/"
    assert shown["ingest_concurrency"] == 3
    assert shown["home"] == str(tmp_path / "h")
    assert shown["conflict_policy"] == "keep-first"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"CLOUDPACS_CONFLICT_POLICY": "bogus"},
            ["config"],
            "conflict_policy must be one of keep-first, overwrite (not 'bogus')",
        ),
        ({}, ["run", "--http", "badvalue"], "--http must be HOST:PORT, not 'badvalue'"),
        ({}, ["serve", "--http", "127.0.0.1:70000"], "http_port must be between 1 and 65535"),
        (
            {"CLOUDPACS_HTTP_PORT": "eighty"},
            ["config"],
            "setting http_port: 'eighty' is not a valid int",
        ),
        (
            {"CLOUDPACS_LOG_LEVEL": "loud"},
            ["config"],
            "log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (not 'LOUD')",
        ),
        (
            {"CLOUDPACS_MONGO_URI": "postgres://127.0.0.1/"},
            ["ingest"],
            "mongo_uri must start with mongodb:// or mongodb+srv://",
        ),
        ({"CLOUDPACS_COLOUR": "blue"}, ["config"], None),  # unknown env vars are not settings
    ],
)
def test_a_bad_setting_is_one_clear_line_and_a_non_zero_exit(
    env: dict[str, str], args: list[str], message: str | None, tmp_path: Path
) -> None:
    result = cloudpacs(*args, env=base_env(**env), cwd=tmp_path, timeout=30)
    if message is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"cloudpacs: {message}\n"


def test_a_bad_config_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("http_port = [1, 2\n")
    (tmp_path / "unknown.toml").write_text('colour = "blue"\n')
    bad = cloudpacs("--config", str(tmp_path / "bad.toml"), "config", env=base_env(), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"cloudpacs: cannot read config file {tmp_path / 'bad.toml'}: ")
    assert bad.stderr.count("\n") == 1
    unknown = cloudpacs(
        "config", env=base_env(CLOUDPACS_CONFIG=str(tmp_path / "unknown.toml")), cwd=tmp_path
    )
    assert (unknown.returncode, unknown.stderr) == (2, "cloudpacs: unknown setting(s): colour\n")


def test_run_without_a_ferretdb_binary_says_what_to_do(tmp_path: Path) -> None:
    """The embedded default needs .tools/bin/ferretdb relative to the working directory."""
    result = cloudpacs("run", "--home", str(tmp_path / "h"), env=base_env(), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "cloudpacs: FerretDB binary not found at .tools/bin/ferretdb; run `make ferretdb` "
        "or set CLOUDPACS_MONGO_URI to use an existing server"
    )
    assert "Traceback" not in result.stderr


def test_ingest_with_an_unreachable_database_fails_with_one_clear_line(tmp_path: Path) -> None:
    env = base_env(CLOUDPACS_MONGO_URI=f"mongodb://user:secret@127.0.0.1:{free_port()}/")
    result = cloudpacs("ingest", "--home", str(tmp_path / "h"), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("cloudpacs: database unreachable")
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr


# ---- run, on the embedded FerretDB --------------------------------------------------------
def children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ferretdb_children(pid: int) -> list[int]:
    return [c for c in children(pid) if cmdline(c)[:1] == [str(FERRETDB_BINARY)]]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {within}s")


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """PIDs a test starts (cloudpacs and FerretDB): any still alive are killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in reversed(pids):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # not our child (FerretDB is cloudpacs' child), or already reaped


def embedded_env() -> dict[str, str]:
    return base_env(
        CLOUDPACS_FERRETDB_BINARY=str(FERRETDB_BINARY),
        CLOUDPACS_FILE_SETTLE_SECONDS="0.2",
        CLOUDPACS_DRAIN_SECONDS="5",
        CLOUDPACS_LOG_LEVEL="INFO",
    )


def start_run(home: Path, port: int, tmp_path: Path, spawned: list[int]) -> subprocess.Popen[bytes]:
    with (tmp_path / "run.log").open("ab") as log:
        process = subprocess.Popen(
            [str(CLOUDPACS), "run", "--home", str(home), "--http", f"127.0.0.1:{port}"],
            env=embedded_env(),
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
    spawned.append(process.pid)
    return process


@pytest.mark.timeout(180)
def test_run_embedded_serves_ingests_survives_its_database_dying_and_stops_on_sigterm(
    tmp_path: Path, spawned: list[int]
) -> None:
    home, port = tmp_path / "home", free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_run(home, port, tmp_path, spawned)

    # its own FerretDB, with its SQLite files under HOME/db
    ferret = wait_for(lambda: ferretdb_children(process.pid), 30, "a FerretDB child")[0]
    spawned.append(ferret)
    assert f"--sqlite-url=file:{(home / 'db').resolve()}/" in cmdline(ferret)
    assert wait_for(lambda: http_get(base + "/healthz")[0] == 200, 60, "/healthz")
    assert http_get(base + "/readyz") == (200, b'{"status": "ready"}')
    assert (home / "db" / "cloudpacs.sqlite").exists()

    # a file dropped in HOME/inbox becomes searchable
    spec = write_instance(tmp_path / "staging" / "a.dcm")
    os.rename(tmp_path / "staging" / "a.dcm", home / "inbox" / "a.dcm")
    query = f"{base}/dicomweb/studies?StudyInstanceUID={spec.study_uid}"
    found = wait_for(lambda: _search(query), 30, "the study in QIDO-RS")
    assert found[0]["0020000D"]["Value"] == [spec.study_uid]
    assert found[0]["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances
    wait_for(lambda: not (home / "inbox" / "a.dcm").exists(), 10, "the file removed")

    # the embedded database dies: it is restarted, and ready again
    os.kill(ferret, signal.SIGKILL)
    restarted = wait_for(
        lambda: [p for p in ferretdb_children(process.pid) if p != ferret and alive(p)],
        30,
        "a restarted FerretDB",
    )[0]
    spawned.append(restarted)
    assert wait_for(lambda: http_get(base + "/readyz")[0] == 200, 30, "ready again")
    assert _search(query), "the data survived the restart"

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(5 + 10) == 0
    assert time.monotonic() - started < 5 + 5
    assert not alive(restarted), "its FerretDB outlived it"
    log = (tmp_path / "run.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in log]  # JSON lines, every one
    assert "cloudpacs.ready" in events
    assert events.count("ferretdb.started") == 2
    assert "ferretdb.stopped" in events
    assert "Doe^Jane" not in "\n".join(log)


def _search(url: str) -> list[dict[str, Any]] | None:
    status, body = http_get(url)
    return json.loads(body) if status == 200 else None


@pytest.mark.timeout(120)
def test_sigterm_during_start_up_stops_cleanly_without_orphaning_ferretdb(
    tmp_path: Path, spawned: list[int]
) -> None:
    home, port = tmp_path / "home", free_port()
    process = start_run(home, port, tmp_path, spawned)
    ferret = wait_for(lambda: ferretdb_children(process.pid), 30, "a FerretDB child")[0]
    spawned.append(ferret)
    process.send_signal(signal.SIGTERM)  # while it is still starting

    assert process.wait(40) == 0
    wait_for(lambda: not alive(ferret), 15, "FerretDB stopped")
    assert all(not alive(p) for p in ferretdb_children(process.pid))
