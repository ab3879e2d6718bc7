"""Media paths of the service: every path a client names is relative to ``--media-root``, confined
to it, and reported back as the client wrote it (never as the server's absolute or symlink-resolved
path). One dependency, :func:`media_root`, answers "no media root" for every route alike.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import Request

from labeler.media.video import VideoError, VideoInfo
from labeler.media.video import probe as probe_file
from labeler.service.errors import ServiceError

__all__ = ["media_root", "private_paths", "probe_media", "require_media_root", "resolve_media_path"]


def require_media_root(root: Path | None, field: str) -> Path:
    """``root``, or 400 ``NoMediaRoot`` naming ``field`` (the request field that needs it)."""
    if root is None:
        raise ServiceError(400, "NoMediaRoot", f"{field}: paths need the service started with --media-root")
    return Path(root)


def media_root(request: Request) -> Path:
    """FastAPI dependency: the service's media root (400 ``NoMediaRoot`` when it has none)."""
    return require_media_root(request.app.state.settings.media_root, "path")


def private_paths(root: Path | None, given: Mapping[Path, str] | None = None) -> Callable[[str], str]:
    """A rewriter of messages: each resolved path of ``given`` becomes the path the client gave,
    and any other server path under the media root (as configured or symlink-resolved) becomes
    relative to it. Longest first, so a file path wins over its folder."""
    pairs = {str(real): rel for real, rel in (given or {}).items()}
    if root is not None:
        for prefix in {str(root), str(Path(root).absolute()), os.path.realpath(root)}:
            pairs.setdefault(prefix.rstrip("/") + "/", "")
    order = sorted(pairs, key=len, reverse=True)

    def rewrite(message: str) -> str:
        for server in order:
            message = message.replace(server, pairs[server])
        return message

    return rewrite


# "http://", "file:", "data:", "s3://"...: a scheme prefix means a URL, and URLs are never fetched.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _check_relative_text(rel: str, field: str) -> None:
    """400 for a path that is no relative path at all, judged from its text alone."""
    if not isinstance(rel, str) or not rel.strip():
        raise ServiceError(400, "InvalidPath", f"{field}: the path is empty")
    if "\x00" in rel:
        raise ServiceError(400, "InvalidPath", f"{field}: the path contains a NUL byte")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError(400, "InvalidPath", f"{field}: the path is not valid Unicode text") from None
    if _URL.match(rel) or rel.startswith("//"):
        raise ServiceError(
            400,
            "InvalidPath",
            f"{field}: {rel[:80]!r} is a URL; only paths relative to the media root are read",
        )
    if rel.startswith(("/", "\\")) or Path(rel).is_absolute():
        raise ServiceError(
            400, "InvalidPath", f"{field}: {rel[:80]!r} is absolute; give a path relative to the media root"
        )
    if ".." in re.split(r"[/\\]", rel):
        raise ServiceError(
            400, "InvalidPath", f"{field}: {rel[:80]!r} contains '..'; paths must stay in the media root"
        )


def _stat_inside(real: Path, rel: str, field: str) -> os.stat_result:
    try:
        return os.stat(real)
    except FileNotFoundError:
        raise ServiceError(
            404, "MediaNotFound", f"{field}: {rel[:80]!r} does not exist under the media root"
        ) from None
    except PermissionError as exc:
        raise ServiceError(
            403, "MediaUnreadable", f"{field}: {rel[:80]!r} cannot be accessed: {exc.strerror}"
        ) from None
    except OSError as exc:  # name too long, symlink loop, not a folder on the way...
        raise ServiceError(
            400, "InvalidPath", f"{field}: {rel[:80]!r} cannot be used: {exc.strerror}"
        ) from None


def resolve_media_path(root: Path, rel: str, *, field: str = "path") -> Path:
    """The real path of ``rel`` inside ``root``, or a ServiceError naming ``field`` and why not:

    - 400: empty, NUL byte, a URL (``http://``, ``file://``... nothing is ever fetched), an
      absolute path, a ``..`` component, or not a regular file;
    - 403: a symlink (or symlinked folder) leading outside ``root``, or a file the service cannot read;
    - 404: nothing there.

    The returned path is fully resolved, so later opens follow no symlink of the request's.
    """
    _check_relative_text(rel, field)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / rel))
    if real != real_root and real_root not in real.parents:
        raise ServiceError(403, "PathOutsideMediaRoot", f"{field}: {rel[:80]!r} leads outside the media root")
    st = _stat_inside(real, rel, field)
    if not stat.S_ISREG(st.st_mode):
        raise ServiceError(400, "NotARegularFile", f"{field}: {rel[:80]!r} is not a regular file")
    if not os.access(real, os.R_OK):
        raise ServiceError(403, "MediaUnreadable", f"{field}: {rel[:80]!r} is not readable by the service")
    return real


def probe_media(
    path: Path,
    *,
    field: str = "path",
    max_seconds: float | None = None,
    probe: Callable[[str], VideoInfo] | None = None,
    private: Callable[[str], str] = lambda message: message,
) -> VideoInfo:
    """Probe a resolved media path: its ``VideoInfo``, or 400 saying why it is not a usable video
    (unreadable, no video stream, zero frames, longer than ``max_seconds``). ``probe`` defaults to
    ``labeler.media.video.probe``; the service passes the engine's memoised one. Blocking (it may open
    the file): call it in a worker thread from async code. ``private`` (see :func:`private_paths`)
    keeps server paths out of the message."""
    try:
        info = (probe or probe_file)(str(path))
    except VideoError as exc:
        raise ServiceError(400, "InvalidVideo", f"{field}: {private(exc.reason)}") from None
    if max_seconds is not None and info.duration > max_seconds:
        raise ServiceError(
            400,
            "VideoTooLong",
            f"{field}: the video lasts {info.duration:.1f} s, over the limit of {max_seconds:g} s",
        )
    return info
