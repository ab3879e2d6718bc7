"""A segment's frames handed to the metrics judge's worker processes through shared memory.

Pickling the frames into a worker's pipe costs both processes several copies and many small reads
and writes per segment (measured: about 15% of the workers' CPU and most of the main process's
dispatch work). Instead the main process copies the arrays into a block of shared memory and sends
the block's name and the arrays' layout (a few hundred bytes); the worker measures read-only views
of the block, without a copy.

Blocks are reused, not made per request: a new block's pages are allocated and zeroed at first
touch, which costs some 40 times the copy itself (measured: 6.6 ms against 0.16 ms for a segment's
3 MB, in this project's virtual machines). :class:`SharedSlots` lends at most ``count`` blocks at
a time (the judge bounds the requests in flight to match), each sized to the largest request it
carried; a worker keeps the blocks it has seen mapped, the ``count`` most recent ones. ``close``
unlinks every block, including those still lent (when they come back).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import sys
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import TypeVar

import numpy as np

from labeler.errors import SharedMemoryFull

__all__ = ["NAME_PREFIX", "SharedFrames", "SharedMemoryFull", "SharedSlots", "call_with_frames", "shareable"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Names of this module's blocks start so (under /dev/shm on Linux), then the creating process's id
#: (whose blocks they are, if one outlives a crash) and a random part: ``densepref_<pid>_<12 hex>``,
#: under the 31 characters macOS allows.
NAME_PREFIX = "densepref_"
_ALIGN = 64  # each array starts on a cache line
_GRAIN = 1 << 20  # block sizes are whole MiB, so slightly larger segments reuse a block too

_Place = tuple[tuple[int, ...], str, int]  # shape, dtype, byte offset
#: Where Linux keeps POSIX shared memory (a tmpfs: Docker gives containers 64 MiB by default).
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class SharedFrames:
    """Where a request's arrays lie in a shared memory block: what crosses to the worker."""

    name: str
    layout: tuple[_Place | None, ...]  # None where the request has no such array
    keep: int  # how many blocks a worker keeps mapped (the number of blocks lent at once)


def shareable(arrays: Sequence[np.ndarray | None]) -> bool:
    """Whether plain memory can carry these arrays (not arrays of Python objects)."""
    return not any(a is not None and a.dtype.hasobject for a in arrays)


class SharedSlots:
    """Shared memory blocks lent to requests, at most ``count`` at a time (main process)."""

    def __init__(self, count: int):
        if count < 1:
            raise ValueError(f"shared slots: count must be at least 1, got {count}")
        self.count = count
        self._free: list[SharedMemory] = []
        self._lent = 0
        self._closed = False
        self._warned = False

    @contextmanager
    def lend(self, arrays: Sequence[np.ndarray | None]) -> Iterator[SharedFrames | None]:
        """A block holding a copy of ``arrays`` (``shareable`` ones) while the context lasts; None
        when the shared memory file system has no room for one (the caller sends the arrays
        another way; a warning is logged once).

        A call cancelled while a worker may still read the block does not give the block back:
        it is unlinked (the worker's mapping stays valid) and another is made when needed."""
        layout: list[_Place | None] = []
        size = 0
        for a in arrays:
            layout.append(None if a is None else (a.shape, a.dtype.str, size))
            size += 0 if a is None else -(-a.nbytes // _ALIGN) * _ALIGN
        try:
            block = self._take(size)
        except SharedMemoryFull as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s; the metrics judge sends frames to its workers through pipes instead "
                    "(slower). Give the machine or container more shared memory (docker run "
                    "--shm-size), or use --judge-processes 0",
                    exc,
                )
            yield None
            return
        reusable = False
        try:
            for a, place in zip(arrays, layout, strict=True):
                if a is not None and place is not None:
                    np.copyto(_view(block, place, writeable=True), a, casting="no")
            yield SharedFrames(block.name, tuple(layout), self.count)
            reusable = True
        except Exception:
            reusable = True  # the worker answered (with an error), or never got the call
            raise
        finally:
            self._lent -= 1
            if reusable and not self._closed:
                self._free.append(block)
            else:
                _unlink(block)

    def close(self) -> None:
        """Unlink the free blocks now, and the lent ones as they come back."""
        self._closed = True
        while self._free:
            _unlink(self._free.pop())

    @property
    def names(self) -> list[str]:
        """The free blocks' names (for tests)."""
        return [b.name for b in self._free]

    def _take(self, size: int) -> SharedMemory:
        if self._closed:
            raise RuntimeError("shared slots: used after close()")
        if self._lent >= self.count:
            raise RuntimeError(f"shared slots: all {self.count} blocks are lent")
        fits = [b for b in self._free if b.size >= size]
        if fits:
            block = min(fits, key=lambda b: b.size)
            self._free.remove(block)
        else:
            if len(self._free) + self._lent >= self.count:  # make room: a smaller block gives way
                _unlink(self._free.pop())
            block = _create(-(-max(size, 1) // _GRAIN) * _GRAIN)
        self._lent += 1
        return block


#: The blocks a worker process has mapped, most recently used last.
_MAPPED: OrderedDict[str, SharedMemory] = OrderedDict()


def call_with_frames(frames: SharedFrames, measure: Callable[..., T]) -> T:
    """``measure(*arrays)`` on read-only views of the arrays in ``frames``' block (in a worker)."""
    block = _mapped(frames.name, frames.keep)
    views = [None if place is None else _view(block, place, writeable=False) for place in frames.layout]
    try:
        return measure(*views)
    except BaseException as exc:
        # The exception goes back to the main process as its class, message and formatted
        # traceback; the finished frames' locals (views of the block among them) are not needed,
        # and would keep the block from being unmapped when it leaves ``_MAPPED``.
        seen: BaseException | None = exc
        while seen is not None:
            traceback.clear_frames(seen.__traceback__)
            seen = seen.__cause__ or seen.__context__
        raise
    finally:
        views.clear()  # this frame is in the traceback too


def _mapped(name: str, keep: int) -> SharedMemory:
    block = _MAPPED.pop(name, None)
    if block is None:
        block = SharedMemory(name)
    _MAPPED[name] = block
    while len(_MAPPED) > keep:  # an older block, most likely one the main process replaced
        _, old = _MAPPED.popitem(last=False)
        with suppress(BufferError):  # a view kept elsewhere: unmapped when it is collected
            old.close()
    return block


def _create(size: int) -> SharedMemory:
    while True:
        try:
            block = SharedMemory(f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(6)}", create=True, size=size)
        except FileExistsError:  # pragma: no cover - 48 random bits within one process
            continue
        try:
            _reserve(block)
        except OSError as exc:
            _unlink(block)
            raise SharedMemoryFull(
                exc.errno,
                f"shared memory ({SHM_DIR}) has no room for a {size / 2**20:.0f} MiB block: {exc.strerror}",
            ) from exc
        return block


def _reserve(block: SharedMemory) -> None:
    """Allocate the block's pages now, on Linux. A block is a sparse file on a tmpfs: if the tmpfs
    fills up, the first write to a page it cannot back kills the writing process with SIGBUS
    (the main process, in the middle of a run). ``posix_fallocate`` fails cleanly with ENOSPC
    instead. Elsewhere, or where the file system cannot reserve, nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    try:
        fd = os.open(os.path.join(SHM_DIR, block.name), os.O_RDWR)
    except FileNotFoundError:  # shared memory kept somewhere else: nothing to reserve with
        return
    try:
        os.posix_fallocate(fd, 0, block.size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            return  # EOPNOTSUPP, EINVAL: this file system cannot reserve; write as before
        raise
    finally:
        os.close(fd)


def _unlink(block: SharedMemory) -> None:
    block.close()
    block.unlink()


def _view(block: SharedMemory, place: _Place, *, writeable: bool) -> np.ndarray:
    shape, dtype, offset = place
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:  # nothing to read (and frombuffer wants at least one item)
        view = np.empty(shape, np.dtype(dtype))
    else:
        assert block.buf is not None  # open until closed, and closed only after its views are gone
        view = np.frombuffer(block.buf, dtype=np.dtype(dtype), count=count, offset=offset).reshape(shape)
    view.flags.writeable = writeable
    return view
