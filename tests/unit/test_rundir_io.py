"""Result files: whole or not at all, readable by others, and a full disk named clearly."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import polars as pl
import pytest

from rundir import io as fileio
from rundir.io import (
    JsonlAppender,
    atomic_write_json,
    atomic_write_parquet,
    read_jsonl_rows,
)


def test_atomic_files_get_the_usual_mode(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_parquet(tmp_path / "a.parquet", pl.DataFrame({"x": [1]}))
    plain = tmp_path / "plain"
    plain.write_text("")
    for name in ("a.json", "a.parquet"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == stat.S_IMODE(plain.stat().st_mode), oct(mode)  # not mkstemp's 0o600


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                                    monkeypatch) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"v": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_json(target, {"v": 2})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)  # names the file
    monkeypatch.undo()
    assert fileio.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_polars_io_errors_become_oserrors_naming_the_file(tmp_path: Path) -> None:
    err = pl.exceptions.ComputeError(
        "parquet: File out of specification: underlying IO error: No space left on device "
        "(os error 28)")
    named = fileio._named(err, tmp_path / "r.parquet")
    assert isinstance(named, OSError) and named.errno == errno.ENOSPC
    assert str(tmp_path / "r.parquet") in str(named)
    other = ValueError("something else")
    assert fileio._named(other, tmp_path) is other


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_jsonl_appender_remembers_a_full_disk_and_raises_it_on_close() -> None:
    """Rows are written from many tasks: a failed write must not vanish with its task."""
    out = JsonlAppender("/dev/full")  # every write: ENOSPC
    out.write({"a": 1})
    out.write({"a": 2})  # no raise: the first error is kept
    assert out.error is not None and out.error.errno == errno.ENOSPC
    with pytest.raises(OSError, match="No space left on device: '/dev/full'"):
        out.close()
    out.close()  # once


def test_jsonl_torn_last_line_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as out:
        out.write({"a": 1})
    with open(p, "a") as f:
        f.write('{"a": 2, "b"')
    assert read_jsonl_rows(p) == [{"a": 1}]
