"""Worker processes that end with their parent.

A ``ProcessPoolExecutor`` worker whose parent is killed (``kill -9``, or a ``SIGTERM`` that does not
run the parent's clean-up) is re-parented and lives on, holding its memory, the pool's semaphores
and, for the metrics judge, the parent's shared memory blocks (#24: workers alive minutes later,
4 MiB of ``/dev/shm/densepref_*`` left per killed run). Each worker therefore runs a small thread
that watches its parent's pid; when the parent is gone it removes the files the parent named for
it (its shared memory blocks, by their name prefix) and exits at once.

A thread that polls rather than ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal when the
*thread* that started the worker ends, and a pool may start workers from a thread that ends long
before the process does.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from contextlib import suppress

__all__ = ["POLL_SECONDS", "exit_with_parent"]

#: How often a worker looks for its parent: an orphan lives at most this long.
POLL_SECONDS = 0.5


def exit_with_parent(parent_pid: int, leftovers: str | None = None) -> None:
    """Start the watch in this (worker) process. ``leftovers``: a glob of files the parent made and
    would have removed (``/dev/shm/densepref_<pid>_*``), removed when it is gone.

    Meant as (part of) a pool's ``initializer``, with ``initargs=(os.getpid(), ...)`` in the parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_SECONDS)
        if leftovers is not None:
            for path in glob.glob(leftovers):
                with suppress(OSError):  # another worker of the same parent removed it first
                    os.unlink(path)
        os._exit(1)  # no clean-up of our own to wait for: the parent that wanted answers is gone

    if os.getppid() != parent_pid:  # it died before this worker got here
        watch()
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
