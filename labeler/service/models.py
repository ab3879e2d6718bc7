"""Request and response models of the HTTP labeling service, apart from the serving logic (as in
vLLM's entrypoints): they define the OpenAPI schema at ``/docs`` and the 422 answers.

Structural rules live here (types, unknown fields, finite numbers, time order); limits that an
operator configures (segments, frames, pixels...) are checked by the service against its
``ServiceSettings``, so they can change without changing the schema.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    StringConstraints,
    Tag,
    TypeAdapter,
    model_validator,
)

from labeler.schemas import DensePreferenceRecord

__all__ = [
    "HealthResponse",
    "InlineSegment",
    "LabelBatchRequest",
    "LabelByPathRequest",
    "LabelInlineRequest",
    "LabelRequest",
    "ReadyResponse",
]

_PATH_DOC = "Path relative to the service's --media-root. URLs and absolute paths are refused."


def _utf8(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot become a path, a cache key or a response.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogate code points)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
# Length rules sit before the Unicode check: after it, pydantic would count "items", not characters.
PathText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_utf8)]
PairId = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_utf8)]
#: Longest time the API accepts anywhere (segment length, segment bounds): one day.
MAX_SECONDS = 86400.0


class _Strict(BaseModel):
    # Unknown fields are errors: a misspelt "segment_second" must not be silently ignored. Strict
    # types: "1" is not a number and 1 is not a text (a JSON integer still counts as a float).
    model_config = ConfigDict(extra="forbid", strict=True)


class CascadeOptions(_Strict):
    """Label every segment with a cheap judge first and ask the service's judge only about the least
    confident (labeler.cascade); each segment of the answer records ``decided_by`` and the cheap
    verdict. A share is of this pair's segments."""

    cheap_judge: Literal["metrics"] = Field("metrics", description="The judge that labels every segment.")
    escalate_share: FiniteFloat | None = Field(
        None, ge=0, le=1, description="Escalate the least-confident share of the pair's segments."
    )
    escalate_below: FiniteFloat | None = Field(
        None, ge=0, le=1, description="Escalate every segment whose cheap confidence (max p_*) is below it."
    )

    @model_validator(mode="after")
    def _one_rule(self) -> CascadeOptions:
        if (self.escalate_share is None) == (self.escalate_below is None):
            raise ValueError("give exactly one of escalate_share or escalate_below")
        return self


class LabelByPathRequest(_Strict):
    """Label two aligned videos the service reads from its media root."""

    prompt: Text = Field(description="The text prompt both videos were generated from.")
    video_a: PathText = Field(description=_PATH_DOC)
    video_b: PathText = Field(description=_PATH_DOC)
    reference: PathText | None = Field(None, description="Ground-truth video. " + _PATH_DOC)
    segment_seconds: FiniteFloat | None = Field(
        None, gt=0, le=MAX_SECONDS, description="Segment length (default: the service's)."
    )
    pair_id: PairId | None = Field(None, description="Echoed in the record (default: a hash of the paths).")
    align_to_latent: int | None = Field(
        None,
        ge=1,
        description="Place every segment boundary on a frame 1 + k·r (r: a causal video VAE's temporal "
        "compression, 4 for Wan), so no latent frame straddles two segments (default: the service's "
        "--align-to-latent). Recorded in the record's labeler block.",
    )
    cascade: CascadeOptions | None = Field(
        None, description="Spend the service's judge only on the segments a cheap judge is unsure of."
    )

    def effective_pair_id(self) -> str:
        if self.pair_id:
            return self.pair_id
        blob = "\0".join([self.video_a, self.video_b, self.reference or ""]).encode()
        return "pair-" + hashlib.sha256(blob).hexdigest()[:16]


class InlineSegment(_Strict):
    """One aligned segment: the same number of frames of A and B, base64 JPEG/PNG each (a bare
    base64 string or a ``data:image/...;base64,`` URI)."""

    frames_a: list[str] = Field(min_length=1, description="Frames of video A, in time order.")
    frames_b: list[str] = Field(min_length=1, description="Frames of video B at the same times.")
    start_s: FiniteFloat = Field(ge=0, le=MAX_SECONDS, description="Segment start in seconds.")
    end_s: FiniteFloat = Field(gt=0, le=MAX_SECONDS, description="Segment end in seconds (after start_s).")

    @model_validator(mode="after")
    def _check(self) -> InlineSegment:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s {self.end_s} must be after start_s {self.start_s}")
        if len(self.frames_a) != len(self.frames_b):
            raise ValueError(
                f"frames_a has {len(self.frames_a)} frames but frames_b has {len(self.frames_b)}; "
                "A and B must be aligned frame by frame"
            )
        return self


class LabelInlineRequest(_Strict):
    """Label segments whose frames the caller already holds in memory."""

    prompt: Text = Field(description="The text prompt both videos were generated from.")
    segments: list[InlineSegment] = Field(min_length=1, description="Aligned segments, in time order.")
    pair_id: PairId | None = Field(None, description="Echoed in the record.")

    @model_validator(mode="after")
    def _in_order(self) -> LabelInlineRequest:
        for i in range(1, len(self.segments)):
            if self.segments[i].start_s < self.segments[i - 1].end_s:
                raise ValueError(
                    f"segments {i - 1} and {i} overlap or are out of order: segment {i} starts at "
                    f"{self.segments[i].start_s} s, before segment {i - 1} ends at {self.segments[i - 1].end_s} s"
                )
        return self


def _request_form(body: Any) -> str:
    # The inline form is the one with "segments"; everything else is validated as the by-path form,
    # so its errors name the by-path fields.
    if isinstance(body, dict):
        return "inline" if "segments" in body else "path"
    return "inline" if isinstance(body, LabelInlineRequest) else "path"


LabelRequest = Annotated[
    Annotated[LabelByPathRequest, Tag("path")] | Annotated[LabelInlineRequest, Tag("inline")],
    Discriminator(_request_form),
]


class LabelBatchRequest(_Strict):
    """Several by-path pairs; the answer streams one NDJSON line per pair as each completes."""

    pairs: list[LabelByPathRequest] = Field(
        min_length=1, description="Pairs to label (see the service's limit)."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> LabelBatchRequest:
        seen: dict[str, int] = {}
        for i, pair in enumerate(self.pairs):
            pid = pair.effective_pair_id()
            if pid in seen:
                raise ValueError(
                    f"pairs {seen[pid]} and {i} share pair_id {pid!r}; stream lines would be ambiguous"
                )
            seen[pid] = i
        return self


class HealthResponse(_Strict):
    status: Literal["ok"] = "ok"


class ReadyResponse(_Strict):
    status: Literal["ready", "not ready"]
    judge: str
    model: str | None = None
    detail: str | None = None


#: The dense preference record (docs/contracts.md), re-exported for the OpenAPI schema.
LabelResponse = DensePreferenceRecord

LABEL_REQUEST: TypeAdapter[LabelByPathRequest | LabelInlineRequest] = TypeAdapter(LabelRequest)
LABEL_BATCH_REQUEST = TypeAdapter(LabelBatchRequest)
