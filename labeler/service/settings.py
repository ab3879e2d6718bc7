"""Settings of the HTTP labeling service (``python -m labeler.app``): address, media root, auth
token, and every request limit, in one pydantic model.

Each field can come from the environment as ``DENSEPREF_<FIELD NAME IN CAPITALS>`` (for example
``DENSEPREF_MAX_BODY_BYTES=1048576``), so ``uvicorn --factory labeler.app:create_app`` users
configure the service without a command line. The judge and engine options are kept as the batch
CLI's own arguments (``engine_args``), so the service builds its engine exactly as
``python -m labeler.batch`` does.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

__all__ = ["ENV_PREFIX", "TOKEN_ENV", "ServiceSettings"]

ENV_PREFIX = "DENSEPREF_"
TOKEN_ENV = "DENSEPREF_API_TOKEN"


def _token_from_env() -> SecretStr | None:
    value = os.environ.get(TOKEN_ENV)
    return None if value is None else SecretStr(value)  # a set but empty token is refused below


class ServiceSettings(BaseModel):
    """Everything the service needs besides the judge itself. Limits answer with one JSON error
    shape ``{"error": {"type", "message"}}`` and the status named in each field's description."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = Field("127.0.0.1", description="Interface to listen on (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    media_root: Path | None = Field(
        None,
        description="Folder the by-path form may read videos from; unset, the by-path form is refused (400).",
    )
    annotations_dir: Path | None = Field(
        None,
        description="Folder of the annotation page's answer logs and exports "
        "(None: <media_root>/.annotations).",
    )
    api_token: SecretStr | None = Field(
        default_factory=_token_from_env,
        description=f"When set (default: ${TOKEN_ENV}), every endpoint but /healthz needs "
        "'Authorization: Bearer <token>' (401 otherwise).",
    )
    max_body_bytes: int = Field(32 * 2**20, gt=0, description="Request body size limit (413).")
    max_segments: int = Field(
        64, gt=0, description="Segments per request: inline, or cut from the videos (400)."
    )
    max_frames_per_segment: int = Field(32, gt=0, description="Inline frames per side of a segment (400).")
    max_image_side: int = Field(4096, gt=0, description="Longest side of an inline frame, in pixels (400).")
    max_image_pixels: int = Field(
        4096 * 4096, gt=0, description="Pixels of one inline frame, checked before decoding (400)."
    )
    max_request_pixels: int = Field(
        64 * 2**20, gt=0, description="Decoded pixels of all inline frames of one request together (400)."
    )
    max_inflight_pixels: int = Field(
        512 * 2**20,
        gt=0,
        description="Decoded pixels held by all admitted jobs together (inline frames, and by-path frames "
        "resized to --max-side); past it, 503 + Retry-After.",
    )
    max_video_seconds: float = Field(
        600.0, gt=0, description="Duration of a video of the by-path form (400)."
    )
    max_batch_pairs: int = Field(64, gt=0, description="Pairs in one /label/batch request (400).")
    max_queue: int = Field(
        64,
        gt=0,
        description="Label jobs admitted at once (running + waiting for the judge); past it, 503 + Retry-After.",
    )
    retry_after_seconds: int = Field(
        2, ge=0, description="Retry-After sent with a 503 when the queue is full."
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="Time a client has to send a request's headers; past it the connection is closed.",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="Time a client has to send a whole request body (408, connection closed).",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="How long shutdown waits for label jobs still running before closing the engine.",
    )
    engine_args: list[str] = Field(
        default_factory=list,
        description="Judge and engine options exactly as on the batch CLI, e.g. "
        "['--judge', 'openai', '--model', 'gpt-4o-mini', '--cache-dir', '/var/cache/densepref'].",
    )

    @field_validator("api_token")
    @classmethod
    def _usable_token(cls, token: SecretStr | None) -> SecretStr | None:
        # An empty token used to turn auth off silently, and a blank one locked everyone out.
        if token is not None:
            value = token.get_secret_value()
            if not value.strip():
                raise ValueError("the API token is empty or blank; unset it to run without auth")
            if value != value.strip():
                raise ValueError("the API token starts or ends with whitespace")
        return token

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceSettings:
        """Settings from ``DENSEPREF_*`` variables, then ``overrides`` (explicit values win).

        ``DENSEPREF_ENGINE_ARGS`` is split like a shell line. Raises ValueError naming the variable
        that does not validate.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or (raw == "" and name != "api_token"):  # an empty token is refused, not ignored
                continue
            values[name] = shlex.split(raw) if name == "engine_args" else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid service settings: {problems}") from exc

    def token(self) -> str | None:
        """The bearer token in clear text, or None when auth is off."""
        return self.api_token.get_secret_value() if self.api_token is not None else None

    def limits(self) -> dict[str, Any]:
        """The request limits, as documented in the README's table and shown by ``--help``."""
        return self.model_dump(
            exclude={"host", "port", "media_root", "annotations_dir", "api_token", "engine_args"}
        )
