"""What names one version of a file without reading it, and the one memo keyed by it.

Hashing a video reads every byte and probing opens it; both are asked again and again for the same
files (every rerun, every annotation page load). :class:`IdentityMemo` remembers a value computed
from a file by the file's identity, so a file rewritten in place (new bytes, even with its size and
mtime restored) is computed again and an unchanged one never is.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from labeler.errors import VideoReadError

__all__ = ["NOT_REGULAR", "IdentityMemo", "file_identity"]

NOT_REGULAR = "not a regular file (a device, FIFO or socket); give a video file"

T = TypeVar("T")


def file_identity(path: str | os.PathLike[str]) -> str:
    """Real path, size, mtime, inode and ctime of a file: VideoReadError if it cannot be stat'ed.

    A user can restore a rewritten file's size and mtime (``touch -d``), but not its ctime, which
    the kernel sets on every write: so a file with the same identity has the same bytes, and a
    memo keyed by it never serves a value computed from older content.
    """
    path = str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise VideoReadError(path, f"cannot stat: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: reading or probing it would never end
        raise VideoReadError(path, NOT_REGULAR)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"


class IdentityMemo(Generic[T]):
    """``compute(path)`` remembered by :func:`file_identity` (at most ``size`` files, least
    recently used dropped first); thread-safe. A file that cannot be stat'ed is computed directly,
    so ``compute`` raises the error that says why (missing, unreadable...)."""

    def __init__(self, compute: Callable[[str], T], size: int = 4096):
        self._compute = compute
        self._size = size
        self._values: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, path: str | os.PathLike[str]) -> T:
        path = str(path)
        try:
            key = file_identity(path)
        except VideoReadError:
            return self._compute(path)
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = self._compute(path)  # outside the lock: two threads may compute one file twice
        with self._lock:
            self._values[key] = value
            while len(self._values) > self._size:
                self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
