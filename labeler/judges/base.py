"""The judge interface, declared in one place.

A judge compares two aligned segments. It knows nothing of caching, swapping, retries or files:
the engine does those (docs/contracts.md, "Judges"). Every capability the engine, the service, dry
runs or the Batch API may use is a member of :class:`Judge` with a default here, so callers call it
directly and never probe a judge with ``getattr``/``hasattr``: a misspelt override is caught by the
type checker, and a capability a judge lacks has one documented behaviour.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Protocol

from labeler.errors import BatchApiUnsupported
from labeler.schemas import JudgeEstimate, Judgment, SegmentRequest


class UsageMeter(Protocol):
    """What a judge that sends several HTTP requests per judgment (re-asks, fallbacks) reports,
    request by request, so budgets and bills count what the endpoint really received."""

    def before_request(self) -> None:
        """Called before every HTTP request; raises when a budget is spent (nothing is sent)."""

    def billed(self, input_tokens: int, output_tokens: int, *, cached_tokens: int = 0) -> None:
        """Tokens of one answered HTTP request, usable or not (``cached_tokens``: of the input,
        those served from the prompt cache)."""


class Judge(abc.ABC):
    """Base class of every judge.

    Required: ``name``, ``model``, ``prompt_id``, :meth:`fingerprint` and :meth:`judge`.
    Optional capabilities, with their defaults:

    ========================  ==============================================================
    ``uses_reference``        False: the engine neither decodes nor checks reference videos
    :meth:`prepare`           nothing to do before a request slot is taken
    :meth:`ready`             True: in-process judges are ready once built
    :meth:`aclose`            nothing to release
    :meth:`estimate`          no images, no tokens (a model-free judge costs nothing)
    ``supports_batch_api``    False; then :meth:`build_body` / :meth:`parse_body` /
                              :meth:`batch_client` raise :class:`BatchApiUnsupported`
    ``meters_usage``          False: the engine counts one request and the judgment's tokens
                              per call; True: the judge reports each HTTP request and its
                              tokens to the :class:`UsageMeter` given to :meth:`attach_meter`
    :meth:`cost_usd`          0.0: an in-process judge spends no API money
    ========================  ==============================================================

    **What the engine promises a judge** (and nothing more):

    - With ``swap`` on (the default) the engine asks both orders of a segment *concurrently*:
      the "ab" request shows A first, the "ba" request shows B first, and it maps the "ba"
      answer back itself (``Judgment.swapped``). A judge answers about what it was shown only.
    - Both requests of a segment carry the same ``SegmentRequest.segment_key`` and their own
      ``order``; equal keys mean the same two frame arrays (pixel for pixel) and the same
      reference. A judge whose answer mirrors exactly under a swap may measure once and answer
      the other order with the answer swapped (the metrics judge does); it must not rely on
      object identity of the arrays, nor on the two requests arriving in any particular order.
    - A request with ``segment_key=None`` (a direct caller) promises nothing: judge it alone.
    - Judgments are cached by the engine under a key that includes the order, so a judge is never
      asked the same (segment, order) twice in one run unless the first attempt failed.
    """

    name: ClassVar[str]
    model: str | None = None
    prompt_id: str | None = None
    #: Whether the judge reads ``SegmentRequest.reference``. When True the engine probes, checks
    #: (fps, frame count, aspect ratio) and decodes a pair's reference video, and the reference's
    #: content hash enters the cache key; a missing or mismatched reference fails that pair.
    uses_reference: bool = False
    #: The order of a text answer's fields, "label-first" or "rationale-first" (None: the judge
    #: writes no such answer). Recorded in each record's labeler block: it changes what p_* mean.
    answer_order: str | None = None
    supports_batch_api: ClassVar[bool] = False
    meters_usage: ClassVar[bool] = False

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything besides the frames that changes the answer (model, prompt id, sampling
        parameters, image layout...). It enters the cache key, so two judges with equal
        fingerprints must answer alike."""

    @abc.abstractmethod
    async def judge(self, request: SegmentRequest) -> Judgment:
        """Compare ``request.frames_first`` with ``request.frames_second``."""

    async def prepare(self, request: SegmentRequest) -> None:  # noqa: B027 - optional hook
        """CPU work (encoding frames) done before the engine takes a request slot, so slots are
        held only by requests on the wire."""

    async def ready(self) -> bool:
        """Whether the judge can answer now (the service's ``/readyz``)."""
        return True

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Raise ``labeler.preflight.PreflightError`` naming the flag or variable to fix when the
        judge cannot work as configured (no key, endpoint down); the batch CLI calls it before any
        work, so such a run is one line, not a failure per pair."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients, models and threads."""

    def endpoint_fallbacks(self) -> list[str]:
        """Parameters the endpoint refused and the judge stopped sending (``logprobs``,
        ``response_format``...), for each record's labeler block and the run summary: they change
        how ``p_*`` were obtained. Empty for judges without an endpoint."""
        return []

    def attach_meter(self, meter: UsageMeter) -> None:  # noqa: B027 - optional hook
        """Receive the engine's meter (used only when ``meters_usage`` is True)."""

    def cost_usd(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, cached_tokens: int = 0
    ) -> float | None:
        """USD billed for these tokens (``batch``: through the Batch API; ``cached_tokens``: of the
        input, those served from the prompt cache), or None when the price is unknown (then
        ``--max-cost`` cannot limit the judge)."""
        return 0.0

    def estimate(self, request: SegmentRequest) -> JudgeEstimate:
        """What one request would send and cost, for ``--dry-run`` (frames may be blank)."""
        return JudgeEstimate()

    # ---------------------------------------------------------------- OpenAI Batch API

    def build_body(self, request: SegmentRequest) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body of one Batch API line."""
        raise BatchApiUnsupported(f"the {self.name!r} judge cannot use the Batch API")

    def parse_body(self, response: dict[str, Any]) -> Judgment:
        """Read one Batch API answer body into a judgment."""
        raise BatchApiUnsupported(f"the {self.name!r} judge cannot use the Batch API")

    def batch_client(self) -> Any:
        """The OpenAI client whose Files and Batches APIs run a batch job."""
        raise BatchApiUnsupported(f"the {self.name!r} judge cannot use the Batch API")
