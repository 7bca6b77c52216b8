"""Every shell script of the deployment (scripts/, haproxy/, deploy/) passes shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.harness import REPO

SCRIPTS = sorted(
    path.relative_to(REPO)
    for folder in ("scripts", "haproxy", "deploy")
    for path in (REPO / folder).rglob("*.sh")
)


def test_the_known_scripts_are_found() -> None:
    assert Path("haproxy/render-config.sh") in SCRIPTS
    assert Path("scripts/install-system-deps.sh") in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_shellcheck(script: Path) -> None:
    assert shutil.which("shellcheck"), "shellcheck missing: run `make system-deps`"
    result = subprocess.run(
        ["shellcheck", "--external-sources", str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
