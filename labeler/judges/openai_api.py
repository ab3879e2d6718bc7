"""The ``openai`` judge: any OpenAI-compatible chat endpoint — OpenAI's GPT models or an open VLM
behind ``vllm serve`` (``base_url="http://host:8000/v1"``).

It only builds the request and reads the answer (docs/design.md §2.4): caching, order swapping and
retries belong to the engine, so the client is created with ``max_retries=0`` and every failure
is mapped to TransientJudgeError (worth retrying), FatalJudgeError or JudgeParseError.

Endpoint quirks. Some servers reject ``logprobs`` or ``response_format`` (or, for reasoning
models, ``temperature``/``max_tokens``). On a 400 naming such a parameter the judge drops or
adapts it once, remembers that in ``self.fallbacks`` for the rest of its life, and logs a
warning. ``fingerprint()`` deliberately keeps describing the *requested* settings: the fallback
is a fixed property of the (model, endpoint) pair, so two judges with the same fingerprint still
answer alike, and a cache key that changed after the first request would make a resumed run miss
its own cache. What actually happened is visible per answer (``Judgment.prob_source`` is "vote"
instead of "logprobs") and per run (``fallbacks``, for the labeler info of the output).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any
from urllib.parse import urlparse

from labeler.judges.base import Judge, UsageMeter
from labeler.judges.composite import LOW_DETAIL_SIDE, plan_composite, seen_size
from labeler.judges.openai_answer import read_completion
from labeler.judges.openai_errors import server_message, status_error
from labeler.judges.openai_request import AnswerOrder, RequestSettings
from labeler.judges.pricing import chat_input_tokens, estimate_cost
from labeler.judges.prompts import LAYOUTS, load_prompt
from labeler.judges.usage import ImpossibleUsage, read_usage
from labeler.judges.video_parts import (
    INPUT_MODES,
    InputMode,
    media_io_kwargs,
    presentation_id,
    qwen_image_tokens_of,
    timing_of,
    video_tokens_of,
    video_url_part,
    without_videos,
)
from labeler.judges.video_tokens import rule_for
from labeler.media.images import JpegUriCache
from labeler.schemas import (
    EndpointUnreachable,
    FatalJudgeError,
    InputError,
    JudgeEstimate,
    JudgeParseError,
    Judgment,
    SegmentRequest,
    TransientJudgeError,
)

__all__ = ["OpenAIJudge"]

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: How endpoints name the structured-output parameter in a refusal: OpenAI's and vLLM's names, and
#: Gemini's OpenAI layer, which reports the field it maps it to (``generation_config.response_schema``).
SCHEMA_PARAMETER_NAMES = ("response_format", "json_schema", "response_schema", "response_mime_type")
#: A typical answer: one or two sentences of rationale plus the label, in tokens.
EXPECTED_ANSWER_TOKENS = 60


class OpenAIJudge(Judge):
    """Judge one segment with a chat model over the OpenAI API (see the module docstring)."""

    name = "openai"
    supports_batch_api = True
    meters_usage = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        prompt: str = "conservative",
        layout: str = "separate",
        detail: str = "low",
        jpeg_quality: int = 90,
        temperature: float = 0.0,
        max_tokens: int = 300,
        logprobs: bool = True,
        top_logprobs: int = 5,
        strict_schema: bool = True,
        timeout: float = 60.0,
        max_parse_retries: int = 2,
        extra_body: dict[str, Any] | None = None,
        reasoning_effort: str | None = None,
        reasoning_budget: int | None = None,
        answer_order: AnswerOrder = "label-first",
        price: tuple[float, float] | None = None,
        input_mode: InputMode = "frames",
        show_reference: bool = False,
        default_query: dict[str, Any] | None = None,
        default_headers: dict[str, Any] | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        if input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input {input_mode!r}; choose one of {', '.join(INPUT_MODES)}")
        if input_mode == "video" and layout != "separate":
            raise ValueError("--input video sends each video as one clip: drop --layout side-by-side")
        if detail not in ("low", "high", "auto"):
            raise ValueError(f"detail must be 'low', 'high' or 'auto', got {detail!r}")
        if not 0 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {top_logprobs}")
        if max_parse_retries < 0:
            raise ValueError(f"max_parse_retries must be >= 0, got {max_parse_retries}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self._prompt = load_prompt(prompt)
        self.input_mode: InputMode = input_mode
        self.show_reference = show_reference
        #: The engine decodes, checks and hashes a pair's reference only for a judge that shows it.
        self.uses_reference = show_reference
        self.prompt_id = presentation_id(self._prompt.prompt_id, input_mode, show_reference)
        self.layout = layout
        self.detail = detail
        self.jpeg_quality = jpeg_quality
        self.settings = RequestSettings(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            strict=strict_schema,
            reasoning_effort=reasoning_effort,
            reasoning_budget=reasoning_budget,
            answer_order=answer_order,
            extra_body=dict(extra_body or {}),
        )
        self.answer_order = answer_order
        self.price = price
        # Transport, not content: Azure's legacy api-version, a gateway's headers. Not in the
        # fingerprint (the same model answers alike whatever the route).
        self.default_query = {str(k): str(v) for k, v in (default_query or {}).items()}
        self.default_headers = {str(k): str(v) for k, v in (default_headers or {}).items()}
        self.is_openai = urlparse(self.base_url).hostname == "api.openai.com"
        if input_mode == "video" and self.is_openai:
            raise ValueError(
                "--input video: OpenAI's Chat Completions API takes images, not video parts; use "
                "--input frames with OpenAI, or --input video with a server that takes video "
                "(vllm serve / SGLang with Qwen2.5-VL, Qwen3-VL; docs/endpoints.md)"
            )
        self.timeout = timeout
        self.max_parse_retries = max_parse_retries
        # Side-by-side composites are fitted to what a low-detail image keeps (composite module).
        self.composite_fit = LOW_DETAIL_SIDE if detail == "low" else None
        self._meter: UsageMeter | None = None
        #: parameter -> server message, for each parameter this endpoint refused (see module doc).
        self.fallbacks: dict[str, str] = {}
        self._async_client: Any = None
        self._client_loop: Any = None
        self._jpeg = JpegUriCache()
        # Messages built by prepare(), until judge() takes them; weak, so a request dropped between
        # the two (a cancelled pair, a spent budget) takes its encoded frames with it.
        self._prepared: weakref.WeakKeyDictionary[SegmentRequest, list[dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> dict[str, Any]:
        """Everything besides the frames that changes the answer. base_url is left out on purpose:
        the same model behind another URL answers alike. Fallbacks are left out too (module doc)."""
        fp = {
            "judge": self.name,
            "model": self.model,
            "prompt_id": self.prompt_id,
            "layout": self.layout,
            "detail": self.detail,
            "jpeg_quality": self.jpeg_quality,
            **self.settings.fingerprint(),
        }
        if self.input_mode != "frames" or self.show_reference:  # the default's keys stay as they were
            fp.update(input=self.input_mode, show_reference=self.show_reference)
        return fp

    # ------------------------------------------------------------------ request building

    def _messages(self, request: SegmentRequest) -> list[dict[str, Any]]:
        out = []
        for message in self._render(request):
            parts = []
            for part in message["content"]:
                if part["type"] == "text":
                    parts.append({"type": "text", "text": part["text"]})
                elif part["type"] == "video":
                    parts.append(video_url_part(part["frames"], self._jpeg, self.jpeg_quality))
                else:
                    url = self._jpeg.data_uri(part["image"], self.jpeg_quality)
                    parts.append({"type": "image_url", "image_url": {"url": url, "detail": self.detail}})
            if all(p["type"] == "text" for p in parts):
                # Plain strings for text-only messages: every server's chat template accepts them.
                out.append({"role": message["role"], "content": "\n".join(p["text"] for p in parts)})
            else:
                out.append({"role": message["role"], "content": parts})
        return out

    def _render(self, request: SegmentRequest) -> list[dict[str, Any]]:
        if self.show_reference and request.reference is None:
            raise InputError("--show-reference: this pair has no reference video in the manifest")
        return self._prompt.render(
            request,
            layout=self.layout,
            answer_order=self.settings.answer_order,
            composite_fit=self.composite_fit,
            input_mode=self.input_mode,
            show_reference=self.show_reference,
        )

    def _request_fields(self, request: SegmentRequest) -> dict[str, Any]:
        """Body fields that depend on the request: the frames' timing for video parts."""
        if self.input_mode != "video":
            return {}
        return {"media_io_kwargs": media_io_kwargs(timing_of(request))}

    def _params(self) -> dict[str, Any]:
        """Sampling and format parameters, after any fallbacks this endpoint forced."""
        return self.settings.params(self.fallbacks)

    def build_body(self, request: SegmentRequest) -> dict[str, Any]:
        """The exact chat.completions JSON body this judge sends (Batch API lines, cost benchmarks)."""
        return {
            "model": self.model,
            "messages": self._messages(request),
            **self._params(),
            **self._request_fields(request),
        }

    def estimate(self, request: SegmentRequest) -> JudgeEstimate:
        """Images and tokens of one request before it is sent, without encoding any JPEG. Output
        tokens include the reasoning a reasoning model is assumed to spend (billed as output)."""
        rendered = self._render(request)
        qwen_images = qwen_image_tokens_of(rendered, self.settings.model)
        input_tokens, images = chat_input_tokens(
            without_videos(rendered, images=qwen_images is not None),
            self.settings.model,
            default_detail=self.detail,
        )
        if qwen_images is not None:  # a Qwen VL family: its processor's grid, not OpenAI's tiles
            input_tokens, images = input_tokens + qwen_images[0], qwen_images[1]
        video_tokens, videos = video_tokens_of(rendered, self.settings.model)
        input_tokens += video_tokens
        reasoning = self.settings.expected_reasoning_tokens
        output_tokens = min(self.settings.max_tokens, EXPECTED_ANSWER_TOKENS) + reasoning
        return JudgeEstimate(
            images=images,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            extra={
                "layout": self.layout,
                "detail": self.detail,
                "frames": self._frames_text(request, videos),
                "cost_usd": self.cost_usd(input_tokens, output_tokens),
                "batch_cost_usd": self.cost_usd(input_tokens, output_tokens, batch=True),
                "reasoning_effort": self.settings.effort,
                "reasoning_tokens": reasoning,
            },
        )

    def _frames_text(self, request: SegmentRequest, videos: int = 0) -> str:
        """What each video's frames will be, as sent and as a low-detail image is seen."""
        height, width = request.frames_first.shape[1:3]
        if videos:
            rule, known = rule_for(self.settings.model)
            family = rule.family if known else f"{rule.family} rule (model family unknown: a rough guess)"
            k = request.frames_first.shape[0]
            return (
                f"{videos} videos a request, each {k} frames {width}x{height} as one video_url part; "
                f"video tokens counted by the {family} processor rule"
            )
        rule, known = rule_for(self.settings.model)
        if known and self.layout == "separate":
            return (
                f"each video's frames {width}x{height} decoded, sent as separate images; image tokens "
                f"counted by the {rule.family} processor rule"
            )
        if self.layout == "separate":
            sent, seen = (width, height), seen_size(width, height, self.detail)
            where = "separate images"
        else:
            plan = plan_composite(width, height, self.composite_fit)
            sent = (plan.frame_width, plan.frame_height)
            scale = seen_size(plan.width, plan.height, self.detail)[0] / plan.width
            seen = (round(plan.frame_width * scale), round(plan.frame_height * scale))
            where = f"{plan.arrangement} composite {plan.width}x{plan.height}"
        return (
            f"each video's frames {width}x{height} decoded, {sent[0]}x{sent[1]} sent ({where}), "
            f"{seen[0]}x{seen[1]} seen by OpenAI at detail {self.detail}"
        )

    def cost_usd(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, cached_tokens: int = 0
    ) -> float | None:
        return estimate_cost(
            self.settings.model,
            input_tokens,
            output_tokens,
            batch=batch,
            price=self.price,
            cached_tokens=cached_tokens,
        )

    def endpoint_fallbacks(self) -> list[str]:
        return sorted(self.fallbacks)

    def attach_meter(self, meter: UsageMeter) -> None:
        self._meter = meter

    # ------------------------------------------------------------------ answer reading

    def _read(self, response: dict[str, Any]) -> tuple[Judgment | None, str, JudgeParseError | None]:
        """(judgment or None, raw text, parse error or None) of one chat.completion JSON."""
        return read_completion(response, self.model or "")

    def parse_body(self, response: dict[str, Any]) -> Judgment:
        """A Judgment from a chat.completion JSON (e.g. a Batch API output line's ``response.body``)."""
        judgment, raw, error = self._read(response)
        if judgment is None:
            assert error is not None
            exc = JudgeParseError(f"{error} Raw answer: {raw[:300]!r}")
            exc.raw = raw  # type: ignore[attr-defined]
            raise exc
        return judgment

    # ------------------------------------------------------------------ calling the endpoint

    def batch_client(self) -> Any:
        return self._client()

    def _client(self) -> Any:
        """One AsyncOpenAI per event loop: its connection pool belongs to the loop that made it."""
        try:
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient
        except ImportError as exc:  # pragma: no cover - openai is a declared extra
            raise FatalJudgeError(
                "the openai judge needs the 'openai' package: pip install -e '.[openai]' (in the densepref checkout)"
            ) from exc
        loop = asyncio.get_running_loop()
        if self._client_loop is loop and self._async_client is not None:
            return self._async_client
        api_key = self._api_key
        if not api_key:
            if self.is_openai:
                raise FatalJudgeError(
                    "no OpenAI API key: set OPENAI_API_KEY (or give --base-url for a self-hosted server)"
                )
            api_key = "EMPTY"  # vLLM and most self-hosted servers accept any key
        # A client made on a loop that has since finished cannot be reused; replace it. The plain
        # DefaultAsyncHttpxClient (not the SDK's default wrapper) because the wrapper's __del__
        # schedules aclose() on whatever loop runs next, which fails noisily for a dead loop.
        self._async_client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            max_retries=0,
            timeout=self.timeout,
            http_client=DefaultAsyncHttpxClient(timeout=self.timeout),
            default_query=self.default_query or None,
            default_headers=self.default_headers or None,
        )
        self._client_loop = loop
        return self._async_client

    def _detect_reasoning(self, response: dict[str, Any]) -> bool:
        """True (once) when an answer shows a reasoning model the settings did not expect: cut at
        the token limit after hidden reasoning tokens. From then on every request gets a reasoning
        budget and no temperature/logprobs, instead of each paying for fallbacks and a cut-off."""
        if self.settings.reasoning_model or "reasoning" in self.fallbacks:
            return False
        choices = response.get("choices") or [{}]
        details = (response.get("usage") or {}).get("completion_tokens_details") or {}
        first = choices[0] if isinstance(choices[0], dict) else {}
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if first.get("finish_reason") != "length" or not isinstance(reasoning, int) or reasoning <= 0:
            return False
        self.fallbacks["reasoning"] = (
            f"the answer was cut at the token limit after {reasoning} hidden reasoning tokens: "
            "a reasoning model; sending max_completion_tokens with a reasoning budget from now on"
        )
        log.warning("%s (%s): %s", self.base_url, self.model, self.fallbacks["reasoning"])
        return True

    def _apply_fallback(self, message: str) -> bool:
        """Adapt to a 400 that names an unsupported parameter; True if a retry is worth it."""
        text = message.lower()
        settings = self.settings
        if "logprobs" in text and settings.logprobs and "logprobs" not in self.fallbacks:
            self.fallbacks["logprobs"] = message
        elif any(name in text for name in SCHEMA_PARAMETER_NAMES) and (
            "response_format" not in self.fallbacks
        ):
            if settings.strict and "strict" not in self.fallbacks:
                self.fallbacks["strict"] = message
            else:
                self.fallbacks["response_format"] = message
        elif "max_tokens" in text and "max_tokens" not in self.fallbacks and not settings.reasoning_model:
            self.fallbacks["max_tokens"] = message
        elif "temperature" in text and "temperature" not in self.fallbacks and settings.sampling:
            self.fallbacks["temperature"] = message
        else:
            return False
        log.warning(
            "%s (%s) refused a parameter; retrying without it from now on: %s",
            self.base_url,
            self.model,
            message,
        )
        return True

    async def _create(
        self, messages: list[dict[str, Any]], fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        import openai

        client = self._client()
        while True:
            params = self._params()
            body = {"model": self.model, "messages": messages, **params, **(fields or {})}
            if self._meter is not None:
                self._meter.before_request()  # every HTTP request counts against --max-requests
            try:
                # The body goes out as it is (the SDK's documented client.post): chat.completions.create
                # would first walk every message part through the SDK's TypedDict transform, about
                # 4 ms of CPU per 16-image request, and parse the answer into a pydantic model only
                # for us to dump it back to a dict (benchmarks/throughput.py measures both). Errors
                # are raised exactly as create() raises them.
                response = await client.post("/chat/completions", body=body, cast_to=object)
                if not isinstance(response, dict):
                    raise TransientJudgeError(
                        f"{self.base_url} answered with something other than a JSON object: {str(response)[:200]!r}"
                    )
                try:
                    usage = read_usage(response.get("usage"))
                except ImpossibleUsage as exc:
                    # Counting it would corrupt the budgets (a negative count lowers the spend).
                    raise FatalJudgeError(f"{self.base_url} reported impossible token usage: {exc}") from exc
                if self._meter is not None:  # billed whether or not the answer turns out usable
                    self._meter.billed(
                        usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens
                    )
                if self._detect_reasoning(response):
                    continue  # the same request again, with room to think
                return response
            except openai.BadRequestError as exc:
                message = server_message(exc)
                if self._apply_fallback(message):
                    continue
                if self._params() != params:
                    # Refused for a parameter another request has dropped since this body was
                    # built (concurrent requests meet the same refusal): resend without it.
                    continue
                raise FatalJudgeError(
                    f"{self.model} at {self.base_url} rejected the request (400): {message}"
                ) from exc
            except openai.APIStatusError as exc:  # RateLimitError (429) included
                raise status_error(exc, f"{self.model} at {self.base_url}") from exc
            except openai.APITimeoutError as exc:
                raise TransientJudgeError(f"no answer from {self.base_url} within {self.timeout} s") from exc
            except openai.APIConnectionError as exc:
                raise EndpointUnreachable(f"cannot reach {self.base_url}: {exc}") from exc

    async def judge(self, request: SegmentRequest) -> Judgment:
        """Ask once; re-ask with the parse error (at most ``max_parse_retries`` times) if the answer
        is unusable. Token usage is summed over all asks."""
        messages = self._prepared.pop(request, None)
        if messages is None:
            messages = await asyncio.to_thread(self._messages, request)  # JPEG encoding off the event loop
        in_total = out_total = cached_total = 0
        error: JudgeParseError | None = None
        raw = ""
        fields = self._request_fields(request)
        for _ in range(self.max_parse_retries + 1):
            response = await self._create(messages, fields)
            judgment, raw, error = self._read(response)
            usage = read_usage(response.get("usage"))  # checked by _create
            in_total += usage.prompt_tokens
            out_total += usage.completion_tokens
            cached_total += usage.cached_tokens
            if judgment is not None:
                totals = {
                    "input_tokens": in_total,
                    "output_tokens": out_total,
                    "cached_input_tokens": cached_total,
                }
                return judgment.model_copy(update=totals)
            assert error is not None
            messages = [
                *messages,
                {"role": "assistant", "content": raw or "(empty answer)"},
                {"role": "user", "content": self._prompt.reask(str(error), self.settings.answer_order)},
            ]
        exc = JudgeParseError(
            f"{self.model} gave no usable answer after {self.max_parse_retries + 1} attempts: {error} "
            f"Last answer: {raw[:300]!r}"
        )
        exc.raw = raw  # type: ignore[attr-defined]
        raise exc

    async def prepare(self, request: SegmentRequest) -> None:
        """Encode the request's frames ahead of ``judge`` (the engine calls this before it takes one
        of its request slots, so a slot is held only while the request is on the wire)."""
        if request not in self._prepared:
            self._prepared[request] = await asyncio.to_thread(self._messages, request)

    def preflight(self) -> None:
        from labeler.preflight import check_openai_endpoint

        check_openai_endpoint(self.base_url, self._api_key, official=self.is_openai, model=self.model)

    async def ready(self) -> bool:
        """Whether GET /models answers (the server is up and the key is accepted)."""
        try:
            await self._client().models.list()
        except Exception:  # any failure means "not ready"; the caller reports it
            return False
        return True

    async def aclose(self) -> None:
        client, self._async_client, self._client_loop = self._async_client, None, None
        if client is not None:
            await client.close()
