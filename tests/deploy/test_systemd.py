"""systemd/cloudpacs@.service: `systemd-analyze verify` finds nothing, the offline security
review scores it <= 2.0, and it has the settings the deployment relies on.

systemd-analyze comes with the Debian package systemd (installed by `make test`); when it is
missing, the test tries the project's installer and is skipped only if that fails.
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.harness import CLOUDPACS, REPO

UNIT = REPO / "systemd" / "cloudpacs@.service"
ENV_EXAMPLE = REPO / "systemd" / "cloudpacs.env.example"
INSTANCES = ("serve", "ingest")
MAX_EXPOSURE = 2.0


def parse_unit(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given, in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert match, value
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[match.group(2)]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    if shutil.which("systemd-analyze") is None:
        installer = REPO / "scripts" / "install-system-deps.sh"
        subprocess.run([str(installer), "systemd"], capture_output=True, timeout=600, check=False)
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze missing and the Debian package systemd cannot be installed")
    return path


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this checkout's cloudpacs (verify checks that it
    exists and is executable; /opt/cloudpacs is where the deployment puts it)."""
    text = UNIT.read_text()
    assert "ExecStart=/opt/cloudpacs/.venv/bin/cloudpacs " in text
    text = text.replace("ExecStart=/opt/cloudpacs/.venv/bin/cloudpacs ", f"ExecStart={CLOUDPACS} ")
    (tmp_path / UNIT.name).write_text(text)
    return tmp_path


def missing_user_message(line: str) -> bool:
    """verify may object that User=/Group= cloudpacs does not exist on this machine (the
    installer creates it); that is the one message tolerated, and only while it is true."""
    try:
        pwd.getpwnam("cloudpacs")
        return False
    except KeyError:
        return bool(
            re.search(r"\b(user|group)\b.*\bcloudpacs\b.*(not found|exist|resolve)", line, re.I)
        )


@pytest.mark.parametrize("instance", INSTANCES)
def test_verify_finds_nothing(systemd_analyze: str, unit_dir: Path, instance: str) -> None:
    result = subprocess.run(
        [systemd_analyze, "verify", f"./cloudpacs@{instance}.service"],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify reports most problems (unknown keys, bad values) with exit code 0: read it all
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    complaints = [line for line in lines if not missing_user_message(line)]
    assert complaints == [], "\n".join(complaints)
    assert result.returncode == 0 or lines, "verify failed without saying why"


@pytest.mark.parametrize("instance", INSTANCES)
def test_security_exposure(systemd_analyze: str, unit_dir: Path, instance: str) -> None:
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=true", f"./cloudpacs@{instance}.service"],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_required_settings() -> None:
    unit = parse_unit(UNIT.read_text())

    def only(key: str) -> str:
        values = unit.get(f"Service.{key}", [])
        assert len(values) == 1, (key, values)
        return values[0]

    assert only("Type") == "notify"
    assert only("Restart") == "on-failure"
    assert only("EnvironmentFile") == "/etc/cloudpacs/cloudpacs.env"  # no "-": must exist
    assert only("NoNewPrivileges") == "yes"
    assert only("ProtectSystem") == "strict"
    assert only("ProtectHome") == "yes"
    assert only("PrivateTmp") == "yes"
    assert only("CapabilityBoundingSet") == ""
    assert only("User") == "cloudpacs"
    families = set(only("RestrictAddressFamilies").split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert set(only("ReadWritePaths").split()) == {"/var/lib/cloudpacs", "/srv/cloudpacs/inbox"}
    assert "--home /var/lib/cloudpacs" in only("ExecStart")


def test_stop_timeout_outlasts_the_drain() -> None:
    """systemd must not SIGKILL a node still draining for CLOUDPACS_DRAIN_SECONDS."""
    unit = parse_unit(UNIT.read_text())
    env = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert env["CLOUDPACS_WATCH"] in unit["Service.ReadWritePaths"][0].split()
    (stop_timeout,) = unit["Service.TimeoutStopSec"]
    assert seconds(stop_timeout) >= float(env["CLOUDPACS_DRAIN_SECONDS"]) + 5
