"""Result files written whole or not at all, append-only JSONL for rows as they finish, the one
JSON reader and the one salvage of ``requests.jsonl``.

Every file cotenant writes into a run directory goes through here: write to a
temporary name in the same folder, fsync, then rename over the final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from rundir.errors import RunDirError
from rundir.schema import empty_requests_frame, rows_to_frame

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _file_mode() -> int:
    """What ``open()`` would give a new file (0o666 less the umask): mkstemp's temporary
    files are 0o600, and a result file should not be private because of how it was written."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


_MODE = _file_mode()


def _named(e: BaseException, path: Path) -> BaseException:
    """An OSError that names ``path`` for an error writing it (a full disk says which file),
    also where the writer (Polars) wrapped the system's error in its own; else ``e``."""
    if isinstance(e, OSError):
        if e.filename is None and e.errno is not None:
            return OSError(e.errno, e.strerror or str(e), str(path))
        return e
    m = _OS_ERROR.search(str(e)) if isinstance(e, Exception) else None
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code) if code in errno.errorcode else str(e), str(path))
    return e


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """A temporary file beside ``path`` (yielded by name, empty, closed) that the caller
    fills; on success it gets the usual file mode, is fsynced and renamed over ``path``.
    An error (a full disk: ENOSPC) leaves ``path`` as it was and no temporary file; it is
    raised as an OSError naming ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fchmod(f.fileno(), _MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = _named(e, path)
        if named is e:
            raise
        raise named from e


def sweep_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files that writes killed mid-way (SIGKILL, a crash) left in
    ``run_dir`` and its experiment folders (``.<name>.<random>.tmp``, never a result: the
    result they were to replace is whole); returns what was removed."""
    root = Path(run_dir)
    gone = []
    for p in [*root.glob(".*.tmp"), *root.glob("*/.*.tmp")]:
        with contextlib.suppress(OSError):
            p.unlink()
            gone.append(p)
    return gone


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).
    An error (a full disk: ENOSPC) leaves ``path`` as it was and no temporary file; it is
    raised as an OSError naming ``path``."""
    with _replacing(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_parquet(path: str | Path, df: pl.DataFrame) -> None:
    """Write a Polars frame as Parquet atomically (errors as in ``atomic_write_bytes``:
    Polars' own "IO error ... (os error 28)" becomes an OSError naming ``path``)."""
    with _replacing(Path(path)) as tmp:
        df.write_parquet(tmp, compression="zstd")


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path`` (campaign.json, a manifest): the one JSON reader of a run
    directory. A file that cannot be read, is not JSON or holds no object is a
    ``RunDirError`` naming the file (and the line)."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as e:
        raise RunDirError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return data


class JsonlAppender:
    """Appends one JSON object a line and flushes each line, so a crash loses nothing written.

    A write that fails (a full disk) is remembered, not raised: rows are written from many
    tasks at once, and an error raised in one of them would die with it. Later rows are not
    written (the file may end in a torn line, which ``read_jsonl_rows`` skips); ``close()``
    raises the error, naming the file, and ``error`` holds it meanwhile.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO | None = open(self.path, "a", buffering=1)  # noqa: SIM115
        self.error: OSError | None = None

    def write(self, row: Mapping[str, Any]) -> None:
        if self._f is None:
            raise ValueError(f"{self.path} is closed")
        if self.error is not None:
            return
        try:
            self._f.write(json.dumps(row, default=str) + "\n")
        except OSError as e:
            self.error = OSError(e.errno, e.strerror or str(e), str(self.path))

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> None:
        """Flush, fsync and close; raise the first write error (once, on the first close)."""
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            self.error = self.error or OSError(e.errno, e.strerror or str(e), str(self.path))
        finally:
            with contextlib.suppress(OSError):  # what is still buffered is lost with the disk
                f.close()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by ``JsonlAppender``; a torn last line (crash) is skipped."""
    rows: list[dict[str, Any]] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _jsonl_frame(jsonl: Path) -> pl.DataFrame:
    return rows_to_frame(read_jsonl_rows(jsonl)) if jsonl.exists() else empty_requests_frame()


def compact_jsonl(jsonl: str | Path, parquet: str | Path) -> pl.DataFrame:
    """Turn the append-only ``requests.jsonl`` into ``requests.parquet`` (atomically)."""
    df = _jsonl_frame(Path(jsonl))
    atomic_write_parquet(parquet, df)
    return df


def salvage_requests(exp_dir: str | Path, *,
                     keep: bool = False) -> tuple[pl.DataFrame, OSError | None]:
    """Compact an experiment's ``requests.jsonl`` into ``requests.parquet`` (written whole or
    not at all) and return its rows: the one salvage of what an experiment measured, whether
    it completed, failed or was interrupted (a torn last line is skipped; no jsonl: no rows,
    an empty requests.parquet).

    An OSError (a full disk) is returned, not raised, with the rows the jsonl holds (none
    where it cannot be read either): the caller records why requests.parquet is missing.
    ``keep``, for an experiment that stopped early: a requests.parquet already there stands
    (the experiment wrote it from the same rows before it stopped), and without a jsonl
    nothing is written; the rows are then not read back (an empty frame is returned).
    """
    exp_dir = Path(exp_dir)
    jsonl, parquet = exp_dir / "requests.jsonl", exp_dir / "requests.parquet"
    if keep and (parquet.exists() or not jsonl.exists()):
        return empty_requests_frame(), None
    try:
        df = _jsonl_frame(jsonl)
    except OSError as e:
        return empty_requests_frame(), e
    try:
        atomic_write_parquet(parquet, df)
    except OSError as e:  # written whole or not at all: nothing half-written is left
        return df, e
    return df, None


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a (log) file, read from its last 64 KiB; "" if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
