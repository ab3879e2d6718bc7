"""The judgment cache (docs/design.md §2.5): one diskcache entry per (judge settings, content, frames, order).

diskcache stores each entry in one SQLite transaction, so a killed process never leaves a
half-written judgment, and several processes (batch jobs, the HTTP service) can share a directory.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from labeler.errors import CacheUnusableError
from labeler.schemas import Judgment

#: Bump when the meaning of a key part changes, so old entries are never misread.
KEY_VERSION = 1


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("densepref")) / "judgments"


def cache_key(**parts: Any) -> str:
    """A stable sha256 over canonical JSON of the parts (judge, fingerprint, content hashes,
    frame indices, resize setting, order...)."""
    blob = json.dumps({"v": KEY_VERSION, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgmentCache:
    """Judgments by cache key. ``directory=None`` keeps nothing (every lookup misses)."""

    def __init__(self, directory: str | Path | None, *, size_limit_gb: float = 4.0):
        self.directory = Path(directory) if directory is not None else None
        self._cache = None
        self._memo: dict[str, dict[str, Any]] = {}  # meta facts when there is no directory
        if self.directory is not None:
            self._cache = self._open(self.directory, size_limit_gb)

    @staticmethod
    def _open(directory: Path, size_limit_gb: float) -> Any:
        """Open the diskcache and prove it can be written, so a bad folder fails now, not after the
        first judgment was paid for."""
        import diskcache

        where = f"--cache-dir {directory}"
        if directory.exists() and not directory.is_dir():
            raise CacheUnusableError(f"{where} is a file, not a folder")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            cache = diskcache.Cache(str(directory), size_limit=int(size_limit_gb * 2**30))
        except sqlite3.DatabaseError as exc:  # garbage, or another program's SQLite schema
            raise CacheUnusableError(
                f"{where}: cache.db is not a densepref cache ({exc}); use another folder"
            ) from None
        except OSError as exc:
            raise CacheUnusableError(f"{where}: cannot create the cache ({exc.strerror})") from None
        try:
            cache.set("densepref:write-check", 1)  # a read-only folder or file fails here
            cache.delete("densepref:write-check")
        except (sqlite3.Error, OSError) as exc:
            cache.close()
            raise CacheUnusableError(f"{where}: not a writable densepref cache ({exc})") from None
        return cache

    def get(self, key: str) -> Judgment | None:
        if self._cache is None:
            return None
        value = self._cache.get(key)
        if value is None:
            return None
        try:
            return Judgment.model_validate_json(value)
        except ValueError:  # written by an incompatible version: treat as a miss, it will be overwritten
            return None

    def __contains__(self, key: str) -> bool:
        return self._cache is not None and key in self._cache

    def set(self, key: str, judgment: Judgment) -> None:
        if self._cache is not None:
            self._cache.set(key, judgment.model_dump_json())

    def get_meta(self, key: str) -> dict[str, Any] | None:
        """Small JSON facts kept beside the judgments (a video's probe result and content hash)."""
        if self._cache is None:
            return self._memo.get(key)
        value = self._cache.get(key)
        try:
            meta = json.loads(value) if isinstance(value, str) else None
        except ValueError:  # corrupt: a miss, recomputed and overwritten like a corrupt judgment
            return None
        return meta if isinstance(meta, dict) else None

    def set_meta(self, key: str, value: dict[str, Any]) -> None:
        if self._cache is None:
            self._memo[key] = value
        else:
            self._cache.set(key, json.dumps(value))

    def __len__(self) -> int:
        return 0 if self._cache is None else len(self._cache)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
