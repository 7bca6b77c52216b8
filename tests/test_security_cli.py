"""`cloudpacs tokens`, `cloudpacs audit` and `serve` with and without authentication, as an
operator runs them: real processes on a real FerretDB."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudpacs.cli_admin import AUDIT_COLUMNS
from tests.conftest import free_port
from tests.factory import Spec, write_instance
from tests.test_cli import CLOUDPACS, cloudpacs, db_env, spawned, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def request(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def serve(
    env: dict[str, str], host: str, port: int, tmp_path: Path, pids: list[int], *extra: str
) -> subprocess.Popen[bytes]:
    with (tmp_path / f"serve-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [str(CLOUDPACS), "serve", "--http", f"{host}:{port}", *extra],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
    pids.append(process.pid)
    wait_for(lambda: request(f"http://127.0.0.1:{port}/healthz") == 200, 60, "/healthz")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(30) == 0


def test_tokens_gate_the_api_and_every_request_is_in_the_audit_export(
    db_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    spawned: list[int],  # noqa: F811
) -> None:
    created = cloudpacs(
        "tokens",
        "create",
        "--subject",
        "ann",
        "--grant",
        "*=reader",
        "--days",
        "1",
        env=db_env,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("cpt_") and "shown once" in created.stderr
    _, token_id, secret = token.split("_", 2)
    listed = cloudpacs("tokens", "list", env=db_env, cwd=tmp_path)
    assert f"{token_id}\tann\t*=reader\tactive" in listed.stdout
    assert secret not in listed.stdout  # the secret is never shown again

    port = free_port()
    env = {**db_env, "CLOUDPACS_AUTH_REQUIRED": "true"}
    process = serve(env, "127.0.0.1", port, tmp_path, spawned)
    url = f"http://127.0.0.1:{port}/dicomweb/studies"
    assert request(url) == 401
    assert request(url, token) == 204
    assert request(url, "cpt_0000_wrong") == 401
    revoked = cloudpacs("tokens", "revoke", token_id, env=db_env, cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    # the server caches a token for token_cache_seconds (5): the revocation, made by another
    # process, takes effect within that
    wait_for(lambda: request(url, token) == 401, 10, "the revocation to take effect")
    stop(process)  # writes the audit buffer out

    out = tmp_path / "audit.csv"
    exported = cloudpacs(
        "audit",
        "--action",
        "search",
        "--format",
        "csv",
        "--output",
        str(out),
        env=db_env,
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    outcomes = [(r["user"], r["outcome"], r["status"]) for r in rows]
    assert outcomes[:3] == [("-", "denied", "401"), ("ann", "ok", "204"), ("-", "denied", "401")]
    assert outcomes[-1] == ("-", "denied", "401")  # the revoked token
    assert set(outcomes[3:-1]) <= {("ann", "ok", "204")}  # while the revocation propagated
    assert all(r["client"] == "127.0.0.1" and r["path"] == "/dicomweb/studies" for r in rows)
    mine = cloudpacs("audit", "--user", "ann", "--format", "jsonl", env=db_env, cwd=tmp_path)
    assert mine.stdout.count("\n") >= 1 and '"credential": "token:' in mine.stdout
    later = cloudpacs("audit", "--since", "2999-01-01", env=db_env, cwd=tmp_path)
    assert later.stdout.strip().splitlines() == [later.stdout.splitlines()[0]]  # header only
    bad = cloudpacs("audit", "--since", "yesterday", env=db_env, cwd=tmp_path)
    assert bad.returncode == 1 and "not an ISO date" in bad.stderr


def test_off_loopback_the_api_needs_credentials_unless_insecure(
    db_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    spawned: list[int],  # noqa: F811
) -> None:
    port = free_port()
    process = serve(db_env, "0.0.0.0", port, tmp_path, spawned)
    assert request(f"http://127.0.0.1:{port}/dicomweb/studies") == 401
    stop(process)
    port = free_port()
    process = serve(db_env, "0.0.0.0", port, tmp_path, spawned, "--insecure")
    assert request(f"http://127.0.0.1:{port}/dicomweb/studies") == 204
    stop(process)
    log = (tmp_path / f"serve-{port}.log").read_text()
    assert "WITHOUT AUTHENTICATION" in log and '"event": "http.insecure"' in log


def test_tokens_create_refuses_a_default_project_that_is_not_one_project_name(
    db_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    grant = ("tokens", "create", "--subject", "ann", "--grant", "lab=contributor")
    for bad, message in (
        ("Lab Two", "is not one project name"),
        ("lab,other", "is not one project name"),
        ("other", "is not among the grants"),
    ):
        refused = cloudpacs(*grant, "--default-project", bad, env=db_env, cwd=tmp_path)
        assert refused.returncode == 1, refused.stdout
        assert message in refused.stderr and "Traceback" not in refused.stderr
        assert "cpt_" not in refused.stdout
    assert cloudpacs("tokens", "list", env=db_env, cwd=tmp_path).stdout == ""
    made = cloudpacs(*grant, "--default-project", "lab", env=db_env, cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.startswith("cpt_")


def test_audit_export_by_study_and_time_range_as_csv(
    db_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    first, second = Spec(), Spec()
    write_instance(tmp_path / "one" / "a.dcm", first)
    write_instance(tmp_path / "two" / "b.dcm", second)
    imported = cloudpacs("import", str(tmp_path / "one"), "--no-progress", env=db_env, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    between = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    imported = cloudpacs("import", str(tmp_path / "two"), "--no-progress", env=db_env, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr

    def export(*args: str) -> list[dict[str, str]]:
        out = tmp_path / "audit.csv"
        done = cloudpacs("audit", *args, "--output", str(out), env=db_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        text = out.read_text()
        assert text.splitlines()[0] == ",".join(AUDIT_COLUMNS)  # CSV, header first
        rows = list(csv.DictReader(text.splitlines()))
        assert f"{len(rows)} audit records" in done.stderr
        return rows

    rows = export("--study", first.study_uid, "--format", "csv")
    assert [
        (r["action"], r["outcome"], r["project"], r["study"], r["series"], r["instance"])
        for r in rows
    ] == [("store.instance", "stored", "default", first.study_uid, first.series_uid, first.sop_uid)]
    assert rows[0]["user"] == f"import:{tmp_path / 'one' / 'a.dcm'}"
    assert datetime.fromisoformat(rows[0]["at"]) < datetime.fromisoformat(between)
    assert [r["instance"] for r in export("--until", between)] == [first.sop_uid]  # exclusive
    assert [r["instance"] for r in export("--since", between)] == [second.sop_uid]
    assert export("--study", second.study_uid, "--until", between) == []
