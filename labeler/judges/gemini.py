"""The ``gemini`` judge: Google's Gemini models through Google's own SDK (``google-genai``,
``pip install 'densepref[gemini]'``), each segment's videos sent as inline ``video/mp4``.

Like the ``openai`` judge it only builds the request and reads the answer (labeler.judges.
gemini_request): the engine swaps, caches, retries and keeps budgets, so the SDK's own retries are
off and every failure maps to TransientJudgeError (429, 5xx, timeouts), FatalJudgeError or
JudgeParseError. A model that refuses ``response_logprobs`` is asked without them from then on
(``fallbacks``; answers become votes, ``prob_source == "vote"``), as the openai judge does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from labeler.judges.base import Judge, UsageMeter
from labeler.judges.gemini_request import (
    BATCH_DISCOUNT,
    MAX_INLINE_BYTES,
    api_key_from_env,
    estimate_tokens,
    gemini_price,
    read_response,
    segment_mp4,
    video_fps,
)
from labeler.judges.parsing import answer_json_schema
from labeler.judges.pricing import text_tokens
from labeler.judges.prompts import load_prompt
from labeler.judges.video_parts import presentation_id
from labeler.schemas import (
    FatalJudgeError,
    InputError,
    JudgeEstimate,
    JudgeParseError,
    Judgment,
    SegmentRequest,
    TransientJudgeError,
)

__all__ = ["GeminiJudge"]

log = logging.getLogger(__name__)
EXPECTED_ANSWER_TOKENS = 60


class GeminiJudge(Judge):
    """Judge one segment with a Gemini model (see the module docstring)."""

    name = "gemini"
    meters_usage = True

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        prompt: str = "conservative",
        temperature: float = 0.0,
        max_tokens: int = 300,
        logprobs: bool = True,
        top_logprobs: int = 5,
        timeout: float = 60.0,
        max_parse_retries: int = 2,
        show_reference: bool = False,
        answer_order: str = "label-first",
        price: tuple[float, float] | None = None,
        http_options: Any = None,
    ) -> None:
        if not 0 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {top_logprobs}")
        if max_parse_retries < 0:
            raise ValueError(f"max_parse_retries must be >= 0, got {max_parse_retries}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        answer_json_schema(answer_order)  # refuses an unknown order
        self.model = model
        self._model: str = model  # typed str (the base class allows None)
        self._order: str = answer_order
        self._api_key = api_key or api_key_from_env()
        self.base_url = base_url
        self._prompt = load_prompt(prompt)
        self.show_reference = show_reference
        self.uses_reference = show_reference
        # Gemini always sees video: the prompt id says so, like the openai judge's --input video.
        self.prompt_id = presentation_id(self._prompt.prompt_id, "video", show_reference)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.timeout = timeout
        self.max_parse_retries = max_parse_retries
        self.answer_order = answer_order
        self.price = price
        self._http_options = http_options
        #: parameter -> server message, for each parameter this model refused.
        self.fallbacks: dict[str, str] = {}
        self._meter: UsageMeter | None = None
        self._client: Any = None

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "model": self.model,
            "prompt_id": self.prompt_id,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs if self.logprobs else None,
            "answer_order": self.answer_order,
            "show_reference": self.show_reference,
        }

    # ------------------------------------------------------------------ request

    def _render(self, request: SegmentRequest) -> list[dict[str, Any]]:
        if self.show_reference and request.reference is None:
            raise InputError("--show-reference: this pair has no reference video in the manifest")
        return self._prompt.render(
            request, answer_order=self._order, input_mode="video", show_reference=self.show_reference
        )

    def build_request(self, request: SegmentRequest) -> tuple[list[Any], Any]:
        """(contents, GenerateContentConfig) of one segment: google.genai.types objects."""
        from google.genai import types

        system, user = self._render(request)
        fps = video_fps(request.frames_first.shape[0], request.start_s, request.end_s)
        parts = []
        for part in user["content"]:
            if part["type"] == "text":
                parts.append(types.Part(text=part["text"]))
            else:
                parts.append(
                    types.Part(
                        inline_data=types.Blob(data=segment_mp4(part["frames"], fps), mime_type="video/mp4"),
                        video_metadata=types.VideoMetadata(fps=fps),
                    )
                )
        inline = sum(len(p.inline_data.data or b"") for p in parts if p.inline_data is not None)
        if inline > MAX_INLINE_BYTES:
            # This segment alone is too big: fail it (InputError), not the run (FatalJudgeError).
            raise InputError(
                f"the segment's videos are {inline / 2**20:.1f} MiB, over Gemini's 20 MiB of inline "
                "data a request: lower --max-side or --frames-per-segment"
            )
        contents = [types.Content(role="user", parts=parts)]
        return contents, self._config(system["content"][0]["text"])

    def _config(self, system: str) -> Any:
        from google.genai import types

        logprobs = self.logprobs and "response_logprobs" not in self.fallbacks
        return types.GenerateContentConfig(
            system_instruction=system,
            temperature=self.temperature,
            max_output_tokens=self.max_tokens,
            response_mime_type="application/json",
            response_json_schema=answer_json_schema(self._order),
            response_logprobs=True if logprobs else None,
            logprobs=self.top_logprobs if logprobs and self.top_logprobs else None,
        )

    # ------------------------------------------------------------------ estimates and prices

    def estimate(self, request: SegmentRequest) -> JudgeEstimate:
        messages = self._render(request)
        text = "\n".join(p["text"] for m in messages for p in m["content"] if p["type"] == "text")
        videos = sum(1 for p in messages[1]["content"] if p["type"] == "video")
        k = request.frames_first.shape[0]
        fps = video_fps(k, request.start_s, request.end_s)
        video = estimate_tokens(k, videos, fps, request.end_s - request.start_s)
        input_tokens = text_tokens(text) + video
        output_tokens = min(self.max_tokens, EXPECTED_ANSWER_TOKENS)
        return JudgeEstimate(
            images=0,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            extra={
                "frames": f"{videos} inline video/mp4 parts a request, {k} frames each at {fps:g} fps "
                f"({video} video tokens at {video // max(videos * k, 1)} a frame)",
                "cost_usd": self.cost_usd(input_tokens, output_tokens),
                "batch_cost_usd": self.cost_usd(input_tokens, output_tokens, batch=True),
            },
        )

    def cost_usd(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, cached_tokens: int = 0
    ) -> float | None:
        # No cached rate in gemini's price table: cached tokens are billed as input (an upper bound).
        price = self.price or gemini_price(self._model)
        if price is None:
            return None
        cost = (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
        return cost * BATCH_DISCOUNT if batch else cost

    def attach_meter(self, meter: UsageMeter) -> None:
        self._meter = meter

    # ------------------------------------------------------------------ calling Gemini

    def _sdk(self) -> Any:
        try:
            from google import genai
            from google.genai import types
        except ImportError as exc:  # pragma: no cover - google-genai is a declared extra
            raise FatalJudgeError(
                "the gemini judge needs the 'google-genai' package: pip install 'densepref[gemini]'"
            ) from exc
        if self._client is None:
            if not self._api_key:
                raise FatalJudgeError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
            options = self._http_options or types.HttpOptions()
            options = options.model_copy(
                update={
                    "timeout": round(self.timeout * 1000),
                    "retry_options": types.HttpRetryOptions(attempts=1),  # the engine retries
                    **({"base_url": self.base_url} if self.base_url else {}),
                }
            )
            self._client = genai.Client(api_key=self._api_key, http_options=options)
        return self._client

    def _apply_fallback(self, message: str) -> bool:
        if "logprobs" in message.lower() and self.logprobs and "response_logprobs" not in self.fallbacks:
            self.fallbacks["response_logprobs"] = message
            log.warning("%s refused logprobs; asking without them from now on: %s", self.model, message)
            return True
        return False

    async def _generate(self, contents: list[Any], config: Any) -> Any:
        import httpx
        from google.genai import errors

        client = self._sdk()
        while True:
            if self._meter is not None:
                self._meter.before_request()
            try:
                response = await client.aio.models.generate_content(
                    model=self.model, contents=contents, config=config
                )
            except errors.APIError as exc:
                message = exc.message or str(exc)
                where = f"{self.model} (Gemini API)"
                if exc.code == 400 and self._apply_fallback(message):
                    config = config.model_copy(update={"response_logprobs": None, "logprobs": None})
                    continue
                if exc.code in (408, 429) or exc.code >= 500:
                    raise TransientJudgeError(f"{where}: HTTP {exc.code}: {message}") from exc
                raise FatalJudgeError(f"{where} rejected the request (HTTP {exc.code}): {message}") from exc
            except httpx.TimeoutException as exc:
                raise TransientJudgeError(f"no answer from Gemini within {self.timeout} s") from exc
            except httpx.TransportError as exc:
                raise TransientJudgeError(f"cannot reach the Gemini API: {exc}") from exc
            if self._meter is not None:
                meta = response.usage_metadata
                out = ((meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)) if meta else 0
                self._meter.billed((meta.prompt_token_count or 0) if meta else 0, out)
            return response

    async def judge(self, request: SegmentRequest) -> Judgment:
        """Ask once; re-ask with the parse error (at most ``max_parse_retries`` times)."""
        from google.genai import types

        contents, config = await asyncio.to_thread(self.build_request, request)
        in_total = out_total = 0
        error: JudgeParseError | None = None
        raw = ""
        for _ in range(self.max_parse_retries + 1):
            if "response_logprobs" in self.fallbacks:
                config = config.model_copy(update={"response_logprobs": None, "logprobs": None})
            response = await self._generate(contents, config)
            judgment, raw, error = read_response(response, self._model)
            in_total += judgment.input_tokens if judgment else 0
            out_total += judgment.output_tokens if judgment else 0
            if judgment is not None:
                return judgment.model_copy(update={"input_tokens": in_total, "output_tokens": out_total})
            meta = response.usage_metadata
            if meta is not None:
                in_total += meta.prompt_token_count or 0
                out_total += (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
            assert error is not None
            contents = [
                *contents,
                types.Content(role="model", parts=[types.Part(text=raw or "(empty answer)")]),
                types.Content(
                    role="user", parts=[types.Part(text=self._prompt.reask(str(error), self._order))]
                ),
            ]
        exc = JudgeParseError(
            f"{self.model} gave no usable answer after {self.max_parse_retries + 1} attempts: {error} "
            f"Last answer: {raw[:300]!r}"
        )
        exc.raw = raw  # type: ignore[attr-defined]
        raise exc

    async def ready(self) -> bool:
        try:
            await self._sdk().aio.models.get(model=self.model)
        except Exception:  # any failure means "not ready"; the caller reports it
            return False
        return True

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()
