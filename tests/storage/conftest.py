"""Fixtures of the storage tests."""

from __future__ import annotations

import pytest

from cloudpacs.storage import study_searches


@pytest.fixture
def index_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Study searches use the study index whatever the plan says (the archives of these
    tests are small enough for a scan to be cheaper)."""
    monkeypatch.setattr(study_searches, "SCANS_PER_CHECK", 0)
