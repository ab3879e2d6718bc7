"""How a label file names its videos: one convention for every file densepref writes.

A path the manifest gave relative stays relative, now to the folder of the file that holds the
record (``labeler.batch``'s OUT, the annotation page's export), so a project folder moved or copied
elsewhere keeps working; an absolute path stays as given. Every reader resolves a relative path
against the folder of the file it reads (``trainer.data.resolve_video``; ``--video-root`` overrides
that folder). The service's HTTP records are no files: they name videos as the client sent them.
"""

from __future__ import annotations

import os
from pathlib import Path

from labeler.schemas import DensePreferenceRecord

__all__ = ["ROLES", "portable", "written_path"]

ROLES = ("video_a", "video_b", "reference")


def written_path(given: str, resolved: str, folder: Path) -> str:
    """The name a record kept in ``folder`` gives a video the manifest named ``given`` (and that
    resolved to ``resolved``): ``given`` when absolute, else relative to ``folder``."""
    if Path(given).expanduser().is_absolute():
        return given
    return Path(os.path.relpath(resolved, Path(folder).resolve())).as_posix()


def portable(record: DensePreferenceRecord, given: dict[str, str], folder: Path) -> DensePreferenceRecord:
    """``record`` with each video path the manifest gave (``given``: role -> path as written)
    named as a record kept in ``folder`` names it (:func:`written_path`)."""
    update = {
        role: written_path(given[role], value, folder)
        for role in ROLES
        if role in given and (value := getattr(record, role)) is not None
    }
    return record.model_copy(update=update) if update else record
