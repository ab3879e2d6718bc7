"""The ``hf`` judge: a transformers image-text-to-text model loaded in-process (docs/design.md §2.4).

The model sees the same prompt as every other judge, rendered through its own chat template.
Instead of sampling an answer and parsing it, the judge writes the start of the answer itself
and reads the label from ONE forward pass: the text ends right where the label value begins
(``{"label": "``), so the next-token logits of the three label tokens, softmaxed over just those
three, are ``p_a / p_b / p_tie``. No parsing, no re-asks, and real probabilities for the engine.

With ``rationale_tokens > 0`` the answer follows the prompt's own order: the model first
greedily writes a short rationale (``{"rationale": "...``, at most that many tokens), then the
label is scored after it, so the reasons can inform the verdict; that costs a generation and a
second pass over the images.

One model serves one forward at a time: the engine may call ``judge()`` concurrently, so calls
queue on an asyncio lock and the work itself runs in a worker thread under a threading lock
(which still holds if the engine's timeout cancels the waiting coroutine mid-forward).
torch/transformers are imported on first use, never at module import.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np

from labeler.judges.base import Judge
from labeler.judges.hf_helpers import (
    AFTER_RATIONALE,
    LABEL_PREFIX,
    LABELS,
    RATIONALE_PREFIX,
    checkpoint_identity,
    is_local_path,
    json_string_body,
    json_unescape,
    resolve_label_tokens,
)
from labeler.judges.hf_qwen import VIDEO_FAMILIES, Clip, QwenVLInputs, sampled_fps
from labeler.judges.prompts import Layout, load_prompt
from labeler.judges.video_parts import INPUT_MODES, InputMode, presentation_id, timing_of
from labeler.schemas import FatalJudgeError, InputError, JudgeError, Judgment, Label, SegmentRequest

__all__ = ["HFJudge"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "the hf judge needs torch and transformers: pip install -e '.[hf]'"
_DTYPES = ("auto", "float32", "bfloat16", "float16")


class HFJudge(Judge):
    """An in-process transformers VLM judge, probabilities from the label tokens' logits.

    ``model`` is a checkpoint folder or a hub id (hub ids load through the usual hub cache; only
    folders are exercised in tests). ``device``: "cpu", "cuda", "cuda:1", "mps" or "auto".
    ``dtype``: "auto" (the checkpoint's), "float32", "bfloat16", "float16". ``max_side`` shrinks
    the images further before the processor sees them. ``rationale_tokens``: 0 scores the label
    straight away; N > 0 lets the model write up to N rationale tokens first.
    ``input_mode``: "frames" (each sampled frame an image) or "video" (each segment of A and B one
    clip; Qwen2-VL-family checkpoints only, see labeler.judges.hf_qwen). ``show_reference``: the
    pair's reference goes first, as frames or a clip, with the prompt's note on what it is.
    """

    name = "hf"
    model: str  # a checkpoint folder or a hub id, never None

    def __init__(
        self,
        model: str,
        *,
        prompt: str = "conservative",
        layout: Layout = "separate",
        device: str = "cpu",
        dtype: str = "auto",
        max_side: int | None = None,
        rationale_tokens: int = 0,
        trust_remote_code: bool = False,
        input_mode: InputMode = "frames",
        show_reference: bool = False,
    ) -> None:
        model = str(model)
        if not model.strip():
            raise FatalJudgeError("the hf judge needs a model: a checkpoint folder or a hub id")
        if is_local_path(model) and not Path(model).expanduser().is_dir():
            raise FatalJudgeError(f"hf judge model path {model!r} does not exist or is not a folder")
        if layout not in ("separate", "side-by-side"):
            raise ValueError(f"layout must be 'separate' or 'side-by-side', got {layout!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
        if rationale_tokens < 0:
            raise ValueError(f"rationale_tokens must be >= 0, got {rationale_tokens}")
        if input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input {input_mode!r}; choose one of {', '.join(INPUT_MODES)}")
        if input_mode == "video" and layout != "separate":
            raise ValueError("--input video shows each video as one clip: it needs --layout separate")
        self.model = model
        self._prompt = load_prompt(prompt)
        self.input_mode: InputMode = input_mode
        self.show_reference = show_reference
        self.uses_reference = show_reference
        self.prompt_id = presentation_id(self._prompt.prompt_id, input_mode, show_reference)
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.max_side = max_side
        self.rationale_tokens = rationale_tokens
        self.trust_remote_code = trust_remote_code
        # The label is scored from its logits after whatever text precedes it: with a rationale
        # first, p_* measure agreement with that rationale (docs/endpoints.md, "answer order").
        self.answer_order = "rationale-first" if rationale_tokens > 0 else "label-first"
        self._processor: Any = None
        self._net: Any = None  # the loaded torch model (``model`` is the name, per the Judge protocol)
        self._load_error: FatalJudgeError | None = None
        self._thread_lock = threading.Lock()
        self._queue: asyncio.Lock | None = None

    # ------------------------------------------------------------------ identity

    def _weights_identity(self) -> str | None:
        path = Path(self.model).expanduser()
        if path.is_dir():
            return checkpoint_identity(path)
        try:  # a hub id: identify the snapshot already in the local hub cache, without network
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(self.model, "config.json")
        except Exception:
            cached = None
        return checkpoint_identity(Path(cached).parent) if isinstance(cached, str) else None

    def fingerprint(self) -> dict[str, Any]:
        """Model + weights identity + everything that changes the answer (enters the cache key).

        A hub id not yet downloaded is identified by name only ("weights": None); once it is in the
        hub cache its snapshot's files identify it like a local folder.
        """
        device_type = self.device.split(":")[0]
        if device_type == "auto":  # what "auto" will pick, so CPU and GPU runs never share answers
            try:
                import torch

                device_type = "cuda" if torch.cuda.is_available() else "cpu"
            except ImportError:  # loading will say what to install; the key stays well-defined
                pass
        fp: dict[str, Any] = {
            "judge": self.name,
            "model": self.model,
            "weights": self._weights_identity(),
            "prompt_id": self.prompt_id,
            "layout": self.layout,
            "rationale_tokens": self.rationale_tokens,
            "dtype": self.dtype,
            "device": device_type,  # float results differ slightly between CPU and GPU kernels
            "max_side": self.max_side,
        }
        if self.input_mode != "frames" or self.show_reference:  # the default's keys stay as they were
            fp.update(input=self.input_mode, show_reference=self.show_reference)
        return fp

    # ------------------------------------------------------------------ loading

    @property
    def loaded(self) -> bool:
        return self._net is not None

    def load(self) -> None:
        """Load processor and model now (otherwise the first ``judge()`` does). Idempotent and
        thread-safe; raises FatalJudgeError (missing files, no torch, no chat template...)."""
        with self._thread_lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._net is not None:
            return
        if self._load_error is not None:  # a failed load fails the same way again, cheaply
            raise self._load_error
        try:
            self._processor, self._net = self._load_model()
        except FatalJudgeError as exc:
            self._load_error = exc
            raise

    def _load_model(self) -> tuple[Any, Any]:
        try:
            import torch
            from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise FatalJudgeError(f"{_INSTALL_HINT} ({exc})") from exc
        if is_local_path(self.model) and not Path(self.model).expanduser().is_dir():
            raise FatalJudgeError(f"hf judge model path {self.model!r} does not exist or is not a folder")
        source = str(Path(self.model).expanduser()) if is_local_path(self.model) else self.model
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype: Any = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        except Exception as exc:
            raise FatalJudgeError(
                f"could not load hf judge model {self.model!r}: {type(exc).__name__}: {exc}"
            ) from exc
        family = str(config.model_type)
        if self.input_mode == "video" and family not in VIDEO_FAMILIES:
            raise FatalJudgeError(
                f"--judge hf --input video needs a Qwen2-VL-family model ({', '.join(VIDEO_FAMILIES)}); "
                f"{self.model!r} is {family!r}: use --input frames"
            )
        try:
            # Qwen2-VL's own processor needs torchvision (its video processor); hf_qwen does without.
            processor: Any = (
                QwenVLInputs.from_pretrained(source, config)
                if family in VIDEO_FAMILIES
                else AutoProcessor.from_pretrained(source, trust_remote_code=self.trust_remote_code)
            )
            net: Any = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, trust_remote_code=self.trust_remote_code
            )
            net = net.to(device).eval()
        except Exception as exc:  # missing files, unknown architecture, a processor's missing extra...
            raise FatalJudgeError(
                f"could not load hf judge model {self.model!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not getattr(processor, "chat_template", None):
            raise FatalJudgeError(
                f"hf judge model {self.model!r} has no chat template; use an instruct/chat model"
            )
        if getattr(processor, "tokenizer", None) is None:
            raise FatalJudgeError(f"hf judge model {self.model!r} has a processor without a tokenizer")
        log.info("hf judge loaded %s on %s (%s)", self.model, device, net.dtype)
        return processor, net

    async def ready(self) -> bool:
        """Load the model if needed (in a worker thread); True once it can judge. A load failure
        gives False here and is raised, with its reason, by ``judge()``."""
        try:
            await asyncio.to_thread(self.load)
        except FatalJudgeError as exc:
            log.error("%s", exc)
            return False
        return True

    async def aclose(self) -> None:
        """Free the model (a later ``judge()`` loads it again)."""
        async with self._lock():
            await asyncio.to_thread(self._unload)

    def _unload(self) -> None:
        with self._thread_lock:
            on_cuda = self._net is not None and self._net.device.type == "cuda"
            self._net = self._processor = None
            gc.collect()
            if on_cuda:
                import torch

                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ judging

    def _lock(self) -> asyncio.Lock:
        # Created lazily so it binds to the running loop, not to whichever loop built the judge.
        if self._queue is None:
            self._queue = asyncio.Lock()
        return self._queue

    async def judge(self, request: SegmentRequest) -> Judgment:
        async with self._lock():
            return await asyncio.to_thread(self.judge_sync, request)

    def judge_sync(self, request: SegmentRequest) -> Judgment:
        """The blocking judgment (what ``judge()`` runs in a worker thread)."""
        with self._thread_lock:
            self._load_locked()
            try:
                return self._judge_locked(request)
            except (JudgeError, InputError):  # InputError: this pair cannot be judged (no reference)
                raise
            except Exception as exc:  # e.g. out of memory on a big segment: this request fails, not the run
                raise JudgeError(f"hf judge {self.model!r} failed: {type(exc).__name__}: {exc}") from exc

    def _chat(self, request: SegmentRequest) -> tuple[list[dict[str, Any]], list[Any], list[Clip]]:
        """The prompt's neutral messages in chat-template form, their images (PIL) in order, and
        their videos (PIL frames + sampled rate; only with ``input_mode="video"``) in order."""
        from PIL import Image

        if self.show_reference and request.reference is None:
            raise InputError("--show-reference: this pair has no reference video in the manifest")

        def picture(frame: np.ndarray) -> Any:
            image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
            if self.max_side is not None and max(image.size) > self.max_side:
                image.thumbnail((self.max_side, self.max_side), Image.Resampling.BICUBIC)
            return image

        messages: list[dict[str, Any]] = []
        images: list[Any] = []
        videos: list[Clip] = []
        fps = sampled_fps(timing_of(request)) if self.input_mode == "video" else 0.0
        rendered = self._prompt.render(
            request, layout=self.layout, input_mode=self.input_mode, show_reference=self.show_reference
        )
        for message in rendered:
            content = message["content"]
            if isinstance(content, str):
                messages.append({"role": message["role"], "content": content})
                continue
            parts = []
            for part in content:
                if part["type"] == "image":
                    images.append(picture(part["image"]))
                    parts.append({"type": "image"})
                elif part["type"] == "video":
                    videos.append(Clip([picture(frame) for frame in part["frames"]], fps))
                    parts.append({"type": "video"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            messages.append({"role": message["role"], "content": parts})
        return messages, images, videos

    def _template(self, messages: list[dict[str, Any]]) -> str:
        """The rendered conversation up to the assistant's turn. Templates that reject a system
        role (Mistral, Gemma...) get its text folded into the first user message instead."""
        processor = self._processor
        try:
            return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            if not messages or messages[0]["role"] != "system":
                raise FatalJudgeError(f"the chat template of {self.model!r} failed: {exc}") from exc
            first_error = exc
        system, rest = messages[0], [dict(m) for m in messages[1:]]
        system_parts = (
            [{"type": "text", "text": system["content"]}]
            if isinstance(system["content"], str)
            else system["content"]
        )
        user = next((m for m in rest if m["role"] == "user"), None)
        if user is None:
            raise FatalJudgeError(
                f"the chat template of {self.model!r} failed: {first_error}"
            ) from first_error
        user_parts = (
            [{"type": "text", "text": user["content"]}]
            if isinstance(user["content"], str)
            else user["content"]
        )
        user["content"] = [*system_parts, {"type": "text", "text": "\n\n"}, *user_parts]
        try:
            return processor.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise FatalJudgeError(f"the chat template of {self.model!r} failed: {exc}") from exc

    def _inputs(self, text: str, images: list[Any], videos: list[Clip]) -> Any:
        """Token ids + pixels for ``text`` on the model's device (image and video placeholders
        expanded). Videos only reach a Qwen2-VL-family processor (the load refuses others)."""
        tokenizer = self._processor.tokenizer
        bos = getattr(tokenizer, "bos_token", None)
        # The template usually writes BOS itself; then the tokenizer must not add a second one.
        add_special = not (bos and text.startswith(bos))
        media: dict[str, Any] = {"images": images or None}
        if videos:
            media["videos"] = videos
        batch = self._processor(text=[text], **media, return_tensors="pt", add_special_tokens=add_special)
        net = self._net
        return {
            key: value.to(net.device, dtype=net.dtype) if value.is_floating_point() else value.to(net.device)
            for key, value in batch.items()
            if hasattr(value, "to")
        }

    def _generate_rationale(
        self, prompt_text: str, images: list[Any], videos: list[Clip]
    ) -> tuple[str, int, int]:
        """Greedy rationale after ``{"rationale": "``: (JSON string body, prompt tokens, new tokens)."""
        import torch

        inputs = self._inputs(prompt_text + RATIONALE_PREFIX, images, videos)
        n_prompt = int(inputs["input_ids"].shape[1])
        tokenizer = self._processor.tokenizer
        with torch.inference_mode():
            out = self._net.generate(
                **inputs,
                max_new_tokens=self.rationale_tokens,
                do_sample=False,
                stop_strings=['"'],  # the rationale string closes with an unescaped quote
                tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
            )
        new_tokens = out[0, n_prompt:]
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        return json_string_body(text), n_prompt, int(new_tokens.shape[0])

    def _judge_locked(self, request: SegmentRequest) -> Judgment:
        import torch

        messages, images, videos = self._chat(request)
        prompt_text = self._template(messages)
        rationale_body, n_prompt, n_generated = "", 0, 0
        if self.rationale_tokens > 0:
            rationale_body, n_prompt, n_generated = self._generate_rationale(prompt_text, images, videos)
            scoring_text = prompt_text + RATIONALE_PREFIX + rationale_body + AFTER_RATIONALE
        else:
            scoring_text = prompt_text + LABEL_PREFIX
        labels = resolve_label_tokens(self._processor.tokenizer, scoring_text)
        inputs = self._inputs(labels.text, images, videos)
        if int(inputs["input_ids"][0, -1]) != labels.last_id:
            # e.g. a tokenizer that appends EOS: scoring after it would read the wrong position.
            raise FatalJudgeError(
                f"the processor of {self.model!r} does not end the prompt where the answer starts "
                f"(last token {int(inputs['input_ids'][0, -1])}, expected {labels.last_id})"
            )
        if self.rationale_tokens == 0:  # else the prompt was counted before the rationale
            n_prompt = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            logits = self._net(**inputs, logits_to_keep=1).logits[0, -1]
        label_logits = logits[list(labels.ids)].double()
        probs = torch.softmax(label_logits, dim=0).tolist()
        label = cast(Label, LABELS[int(torch.argmax(label_logits))])
        rationale = json_unescape(rationale_body)
        raw = (
            json.dumps({"rationale": rationale, "label": label})
            if self.rationale_tokens > 0
            else json.dumps({"label": label})
        )
        return Judgment(
            label=label,
            p_a=probs[0],
            p_b=probs[1],
            p_tie=probs[2],
            rationale=rationale,
            raw=raw,
            input_tokens=n_prompt,
            output_tokens=n_generated + 1,  # the rationale, then the one label token
            model=self.model,
            prob_source="logits",
        )

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded"
        return f"HFJudge(model={self.model!r}, prompt={self.prompt_id!r}, layout={self.layout!r}, {state})"
