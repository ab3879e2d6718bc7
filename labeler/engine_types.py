"""The engine's settings (:class:`EngineConfig`), counters (:class:`EngineStats`) and the plans it
makes for a pair before decoding a frame; ``labeler.engine`` re-exports them."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from labeler.errors import BudgetExceeded, UsageError
from labeler.schemas import ManifestEntry, Order, SegmentRequest

__all__ = [
    "BudgetExceeded",
    "EngineConfig",
    "EngineStats",
    "FrameSegment",
    "PairPlan",
    "PendingRequest",
    "SegmentPlan",
]


#: Longest sensible value of a seconds option (a day): 1e308 would overflow timers and frame counts.
MAX_SECONDS = 86400.0


@dataclass
class EngineConfig:
    """The engine's settings, checked when built (UsageError naming the CLI flag): an EngineConfig
    made in code (the service, Ray actors, tests) is held to the same rules as the CLI's."""

    segment_seconds: float = 1.0  # default segment length; a manifest entry may override it
    # Move segment boundaries onto frames 1 + r*k (a causal VAE's latent frames; Wan: r = 4).
    align_to_latent: int | None = None
    frames_per_segment: int = 8  # frames shown per segment (the paper's 8 fps for 1 s segments)
    max_side: int = 448  # long side of the frames shown to the judge
    swap: bool = True  # judge every segment in both orders to cancel position bias
    concurrency: int = 8  # judge requests in flight
    # Videos decoding at once (each on one thread; a pair's A, B and reference go in parallel).
    decode_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    request_timeout: float = 120.0  # seconds per judge call, retried as a transient failure
    max_attempts: int = 6  # per judge call, transient failures included
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    decisive_margin: float = 0.3  # see labeler.aggregate
    max_requests: int | None = None  # budget: stop sending after this many requests
    max_cost: float | None = None  # budget in USD, from token usage and labeler.judges.pricing
    max_retry_after: float = 60.0  # longest Retry-After honoured; a longer one is a failed attempt
    decode_window: int = 16  # segments decoded (and held in memory) at once per pair
    #: Decoded frames kept after their pair is done, for references (from their first read) and for
    #: videos more than one pair reads: MiB, least recently used dropped first; 0 keeps none
    #: (labeler.frame_source).
    frame_memo_mib: float = 64.0

    def __post_init__(self) -> None:
        seconds = {
            "--segment-seconds": self.segment_seconds,
            "--timeout": self.request_timeout,
            "--max-retry-after": self.max_retry_after,
        }
        for flag, value in seconds.items():
            if not math.isfinite(value) or value < 0 or (value == 0 and flag != "--max-retry-after"):
                raise UsageError(f"{flag} must be a positive number of seconds, got {value}")
            if value > MAX_SECONDS:
                raise UsageError(f"{flag} must be at most {MAX_SECONDS:g} s, got {value:g}")
        # 0 is a budget too: label only what the cache already holds, send nothing.
        if self.max_requests is not None and self.max_requests < 0:
            raise UsageError(f"--max-requests must be 0 or more, got {self.max_requests}")
        if self.max_cost is not None and not (math.isfinite(self.max_cost) and self.max_cost >= 0):
            raise UsageError(f"--max-cost must be a finite amount of USD, 0 or more, got {self.max_cost}")
        if self.max_side <= 0:
            raise UsageError("--max-side must be positive")
        counts = {
            "--frames-per-segment": self.frames_per_segment,
            "--concurrency": self.concurrency,
            "--max-attempts": self.max_attempts,
        }
        for flag, count in counts.items():
            if count < 1:
                raise UsageError(f"{flag} must be at least 1")
        if self.align_to_latent is not None and self.align_to_latent < 1:
            raise UsageError(f"--align-to-latent must be at least 1, got {self.align_to_latent}")


@dataclass
class EngineStats:
    pairs: int = 0
    segments: int = 0
    requests: int = 0  # requests sent: HTTP requests (re-asks included) for metering judges, else calls
    retries: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # of input_tokens, served from the provider's prompt cache
    cost_usd: float = 0.0
    swapped_segments: int = 0
    flips: int = 0  # swapped segments whose two votes disagreed
    judge_errors: int = 0
    decode_seconds: float = 0.0  # summed over videos decoding in parallel
    shared_decodes: int = 0  # video reads served by another pair's decode of the same frames

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flip_rate"] = round(self.flips / self.swapped_segments, 4) if self.swapped_segments else None
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


@dataclass(frozen=True)
class FrameSegment:
    """A segment whose frames the caller already holds (the HTTP service's inline form)."""

    frames_a: np.ndarray
    frames_b: np.ndarray
    start_s: float
    end_s: float


@dataclass
class SegmentPlan:
    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    frame_indices: list[int]
    keys: dict[Order, str]  # cache key per presentation order


@dataclass
class PairPlan:
    entry: ManifestEntry
    fps: float
    num_frames: int
    segments: list[SegmentPlan]
    use_reference: bool
    #: Content hash of each video the pair decodes ("a", "b" and "ref" when used): pairs that share a
    #: video (a reference, a candidate compared with several others) share its decoded frames.
    content: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingRequest:
    """One (segment, order) judgment the cache cannot answer: ``key`` is its cache key (what
    ``Engine.record`` stores the answer under), ``request`` what the judge would be shown."""

    pair_id: str
    key: str
    request: SegmentRequest
