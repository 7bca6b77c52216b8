"""Kept series metadata as files (storage.kept_metadata.KeptInFiles), on a real directory:
names that are not plain UIDs are never used as paths, and a torn file reads as not kept."""

from __future__ import annotations

from pathlib import Path

from cloudpacs.storage.kept_metadata import KeptInFiles

DOC = {"study": "1.2", "project": "default", "parts": ['[{"a":"', '"}]']}


async def test_saved_loaded_replaced_and_dropped(tmp_path: Path) -> None:
    kept = KeptInFiles(tmp_path / "kept")
    assert await kept.load("1.2.3") is None
    await kept.save("1.2.3", DOC)
    assert await kept.load("1.2.3") == DOC
    await kept.save("1.2.3", {**DOC, "project": "other"})
    assert await kept.load("1.2.3") == {**DOC, "project": "other"}
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["1.2.3.json"]  # no leftovers
    await kept.drop("1.2.3")
    await kept.drop("1.2.3")  # already gone: fine
    assert await kept.load("1.2.3") is None


async def test_odd_series_uids_are_never_paths(tmp_path: Path) -> None:
    kept = KeptInFiles(tmp_path / "kept")
    (tmp_path / "secret.json").write_text('{"study": "x", "parts": []}')
    for odd in ("../secret", "1.2/../../secret", "", "1.2.3 ", "x" * 65):
        await kept.save(odd, DOC)
        assert await kept.load(odd) is None
    assert not (tmp_path / "kept").exists()
    assert (tmp_path / "secret.json").read_text() == '{"study": "x", "parts": []}'


async def test_a_torn_file_reads_as_not_kept(tmp_path: Path) -> None:
    kept = KeptInFiles(tmp_path / "kept")
    await kept.save("1.2.3", DOC)
    (tmp_path / "kept" / "1.2.3.json").write_text('{"study": "1.2", "par')
    assert await kept.load("1.2.3") is None
    (tmp_path / "kept" / "1.2.3.json").write_text("[1, 2]")
    assert await kept.load("1.2.3") is None
