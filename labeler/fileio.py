"""File plumbing shared by every writer and reader in densepref: one policy, one place.

* Atomic writes: a unique temporary name in the same folder, then ``os.replace``. A killed writer
  never leaves a half-written file under the real name, and two concurrent writers of the same file
  never share a temporary (the last one to finish wins, whole).
* JSONL is split on ``\\n`` only. ``str.splitlines`` also splits on U+2028, U+2029, U+0085, \\v, \\f
  and others that JSON strings may carry raw, so it must never be used to read JSONL.
* A crash-safe tail: appenders flush one whole line at a time, so a ``kill -9`` leaves at worst one
  cut-off last line, which :func:`repair_jsonl_tail` removes before the next append.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary keeps ``path``'s suffix by default so writers that pick a format by extension
    (video muxers, image encoders) still work. On an exception the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, and ending in the real suffix: ".clip.k3j9x2.tmp.mp4".
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if suffix is None else suffix), dir=path.parent
    )
    os.close(fd)
    real_tmp = Path(name)
    os.chmod(real_tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like open()'s
    try:
        yield real_tmp
        os.replace(real_tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            real_tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (newlines are written as given, never translated)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_lines(path: str | Path, lines: list[str]) -> None:
    """Write JSONL (or any line file) atomically: each line followed by ``\\n``."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (and drop a ``\\r`` before it); never on U+2028 and friends."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, split on ``\\n`` only; a leading BOM is dropped."""
    return split_lines(Path(path).read_text(encoding="utf-8-sig"))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, split on ``\\n`` only.

    Lines are decoded one by one, so a line with bytes that are not UTF-8 raises
    :class:`UnicodeDecodeError` naming that line only (callers report it and go on).
    """
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            text = raw.decode("utf-8").rstrip("\r\n")
            if text.strip():
                yield lineno, text


def repair_jsonl_tail(path: str | Path) -> None:
    """Drop a last line that a killed writer left incomplete (no newline and not valid JSON).

    A last line that is complete JSON but lacks only its newline gets the newline.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            fh.truncate(cut)
        else:
            fh.write(b"\n")


class JsonlWriter:
    """Append JSON lines, flushing each so a killed process loses at most the line being written."""

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._fh: IO[bytes] | None = None

    def write_line(self, line: str) -> None:
        if "\n" in line:
            raise ValueError("a JSONL line cannot contain a raw newline")
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        self._fh.write(line.encode("utf-8") + b"\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def write_json(self, obj: Any) -> None:
        self.write_line(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
