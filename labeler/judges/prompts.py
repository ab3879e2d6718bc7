"""Judge prompt templates: Jinja2 files rendered in a sandbox into neutral chat messages.

A template (``prompts/<name>.j2`` or any file) defines these blocks:

- ``system``  — the system message;
- ``user``    — user text before the images;
- ``caption`` — a short text before each image (variables ``video``: "A"/"B", or None for a
  side-by-side composite; ``frame_number``: 1-based; ``time_s``);
- ``closing`` — optional user text after the images (the answer format);
- ``reask``   — the follow-up user message after an unusable answer (variable ``error``);
- ``video_caption`` — optional: the text before each video with ``input == "video"`` (variable
  ``video``: "A", "B" or "reference"); default "Video A:" / "Reference video:";
- ``reference_note`` — optional: what the reference is, said before it when ``show_reference``;
  default :data:`DEFAULT_REFERENCE_NOTE`, so a template that ignores the reference still says it.

Every block sees: ``prompt``, ``segment_index`` (0-based), ``segment_number`` (1-based),
``num_segments``, ``start_s``, ``end_s``, ``duration_s``, ``fps``, ``frame_times`` (seconds),
``frame_times_text`` ("0.06 s, 0.19 s, ..."), ``num_frames`` (per video), ``num_images``, ``layout``,
``arrangement`` ("left-right" | "top-bottom": where each video sits in a side-by-side composite),
``image_order_text`` (which image numbers show which video: servers whose chat template takes plain
string content, vLLM without ``--interleave-mm-strings``, move every image ahead of the text, so
captions alone cannot say which image is which), ``answer_order`` ("label-first" |
"rationale-first": the order of the answer's JSON fields), ``input`` ("frames": still images;
"video": each video as one clip) and ``show_reference`` (the real video both were generated from is
shown first, before A and B).

Templates render in ``jinja2.sandbox.SandboxedEnvironment``: a template can format text but not
reach Python internals, so a prompt file from a user is not code execution. The prompt id is
``name@<first 8 hex of sha256(file bytes)>``: editing a template changes the id and so the cache key.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labeler.errors import PromptTemplateError
from labeler.judges.composite import compose_pair, plan_composite
from labeler.schemas import SegmentRequest

__all__ = [
    "DEFAULT_REFERENCE_NOTE",
    "INPUTS",
    "LAYOUTS",
    "JudgePrompt",
    "PromptTemplateError",
    "available_prompts",
    "load_prompt",
]

Layout = Literal["separate", "side-by-side"]
LAYOUTS: tuple[Layout, ...] = ("separate", "side-by-side")
REQUIRED_BLOCKS = ("system", "user", "caption", "reask")
Input = Literal["frames", "video"]
INPUTS: tuple[Input, ...] = ("frames", "video")
#: What the reference is, for templates without a ``reference_note`` block.
DEFAULT_REFERENCE_NOTE = (
    "The reference shown first is the real video both were generated from: judge which of A and B has "
    "fewer artifacts and more plausible motion; do not reward copying the reference's content."
)


def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # StrictUndefined: a misspelt variable is an error at load time, not a silently empty prompt.
    return SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _frame_times(request: SegmentRequest) -> list[float]:
    k = request.frames_first.shape[0]
    if len(request.frame_times) == k:
        return [float(t) for t in request.frame_times]
    # No times given: place the frames evenly inside the segment, as sample_indices does.
    step = (request.end_s - request.start_s) / max(k, 1)
    return [request.start_s + (i + 0.5) * step for i in range(k)]


@dataclass(frozen=True)
class JudgePrompt:
    """A loaded template. ``render`` turns a SegmentRequest into neutral chat messages."""

    name: str
    prompt_id: str
    source: str = field(repr=False, compare=False, default="")
    path: str | None = field(repr=False, compare=False, default=None)
    _template: Any = field(repr=False, compare=False, default=None)

    def _block(self, block: str, variables: dict[str, Any]) -> str:
        if block not in self._template.blocks:
            return ""
        context = self._template.new_context(variables)
        return "".join(self._template.blocks[block](context)).strip()

    def variables(
        self,
        request: SegmentRequest,
        layout: Layout,
        *,
        answer_order: str = "label-first",
        composite_fit: int | None = None,
        input_mode: Input = "frames",
        show_reference: bool = False,
    ) -> dict[str, Any]:
        times = _frame_times(request)
        k = request.frames_first.shape[0]
        height, width = request.frames_first.shape[1:3]
        arrangement = plan_composite(width, height, composite_fit).arrangement
        return {
            "prompt": request.prompt,
            "segment_index": request.index,
            "segment_number": request.index + 1,
            "num_segments": request.num_segments,
            "start_s": float(request.start_s),
            "end_s": float(request.end_s),
            "duration_s": float(request.end_s - request.start_s),
            "fps": request.fps,
            "frame_times": times,
            "frame_times_text": ", ".join(f"{t:.2f} s" for t in times),
            "num_frames": k,
            "num_images": _num_images(k, layout, input_mode, show_reference),
            "layout": layout,
            "arrangement": arrangement,
            "image_order_text": _image_order_text(k, layout, input_mode, show_reference),
            "answer_order": answer_order,
            "input": input_mode,
            "show_reference": show_reference,
        }

    def render(
        self,
        request: SegmentRequest,
        *,
        layout: Layout = "separate",
        answer_order: str = "label-first",
        composite_fit: int | None = None,
        input_mode: Input = "frames",
        show_reference: bool = False,
    ) -> list[dict[str, Any]]:
        """Neutral chat messages ``[{"role", "content": [part, ...]}]``; a part is
        ``{"type": "text", "text"}``, ``{"type": "image", "image": [H, W, 3] uint8}`` or, with
        ``input="video"``, ``{"type": "video", "video": "A" | "B" | "reference", "frames": [K, H, W, 3]}``.

        'separate': every frame of the first video, then every frame of the second, each after a
        caption. 'side-by-side': one composite (first | second) per time step, half the images,
        arranged to keep the most pixels within ``composite_fit`` (labeler.judges.composite).
        ``input="video"``: each video as one clip (separate layout only). ``show_reference``: the
        reference's frames or clip come first, after the reference note; the request must hold
        them (ValueError otherwise).
        """
        _check_presentation(request, layout, input_mode, show_reference)
        base = self.variables(
            request,
            layout,
            answer_order=answer_order,
            composite_fit=composite_fit,
            input_mode=input_mode,
            show_reference=show_reference,
        )
        parts: list[dict[str, Any]] = [{"type": "text", "text": self._block("user", base)}]
        videos: list[tuple[str, np.ndarray]] = [("A", request.frames_first), ("B", request.frames_second)]
        if show_reference:
            assert request.reference is not None
            note = self._block("reference_note", base) or DEFAULT_REFERENCE_NOTE
            parts.append({"type": "text", "text": note})
            videos.insert(0, ("reference", request.reference))
        if input_mode == "video":
            return self._finish(parts + self._clip_parts(videos, base), base)

        parts += self._frame_parts(request, videos, base, layout, composite_fit, show_reference)
        return self._finish(parts, base)

    def _frame_parts(
        self,
        request: SegmentRequest,
        videos: list[tuple[str, np.ndarray]],
        base: dict[str, Any],
        layout: Layout,
        composite_fit: int | None,
        show_reference: bool,
    ) -> list[dict[str, Any]]:
        """Every frame as a captioned image: per video ('separate') or one composite per time step."""
        times = base["frame_times"]
        parts: list[dict[str, Any]] = []

        def add(image: np.ndarray, video: str | None, i: int) -> None:
            caption = self._block(
                "caption", {**base, "video": video, "frame_number": i + 1, "time_s": times[i]}
            )
            if caption:
                parts.append({"type": "text", "text": caption})
            parts.append({"type": "image", "image": image})

        if layout == "separate":
            for video, frames in videos:
                for i, frame in enumerate(frames):
                    add(frame, video, i)
        else:
            if show_reference:
                assert request.reference is not None
                for i, frame in enumerate(request.reference):
                    add(frame, "reference", i)
            for i, (first, second) in enumerate(
                zip(request.frames_first, request.frames_second, strict=True)
            ):
                add(compose_pair(first, second, composite_fit)[0], None, i)
        return parts

    def _clip_parts(self, videos: list[tuple[str, np.ndarray]], base: dict[str, Any]) -> list[dict[str, Any]]:
        """Each video as one caption and one clip part (``input="video"``)."""
        parts: list[dict[str, Any]] = []
        for video, frames in videos:
            caption = self._block("video_caption", {**base, "video": video}) or _video_caption(video)
            parts.append({"type": "text", "text": caption})
            parts.append({"type": "video", "video": video, "frames": frames})
        return parts

    def _finish(self, parts: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
        closing = self._block("closing", base)
        if closing:
            parts.append({"type": "text", "text": closing})
        return [
            {"role": "system", "content": [{"type": "text", "text": self._block("system", base)}]},
            {"role": "user", "content": parts},
        ]

    def reask(self, error: str, answer_order: str = "label-first") -> str:
        """The follow-up user message after an unparseable answer: the error and the format."""
        return self._block("reask", {"error": str(error), "answer_order": answer_order})


def _video_caption(video: str) -> str:
    return "Reference video (the real video):" if video == "reference" else f"Video {video}:"


def _num_images(frames: int, layout: str, input_mode: str, show_reference: bool) -> int:
    if input_mode == "video":
        return 0
    shown = frames if layout == "side-by-side" else 2 * frames
    return shown + (frames if show_reference else 0)


def _image_order_text(
    frames: int, layout: str, input_mode: str = "frames", show_reference: bool = False
) -> str:
    """Which image (or video) numbers show which video, said in words (see the module docstring)."""
    if input_mode == "video":
        if show_reference:
            return "Video 1 is the reference, video 2 is Video A and video 3 is Video B."
        return "Video 1 is Video A and video 2 is Video B."
    skip = frames if show_reference else 0
    lead = f"Images 1 to {frames} are the reference, in time order. " if show_reference else ""
    if layout == "side-by-side":
        return (
            lead
            + f"Images {skip + 1} to {skip + frames} are the time steps in order, each holding both videos."
        )
    if frames == 1 and not show_reference:
        return "Image 1 is Video A and image 2 is Video B."
    return (
        lead + f"Images {skip + 1} to {skip + frames} are Video A and images {skip + frames + 1} to "
        f"{skip + 2 * frames} are Video B, in time order."
    )


def _templates_dir() -> Any:
    return importlib.resources.files("prompts")


def available_prompts() -> list[str]:
    """Names of the templates shipped in the ``prompts`` package."""
    return sorted(p.name[: -len(".j2")] for p in _templates_dir().iterdir() if p.name.endswith(".j2"))


def _probe_request() -> SegmentRequest:
    frames = np.zeros((2, 8, 32, 3), np.uint8)  # landscape: composite_fit=40 stacks it top-bottom
    return SegmentRequest(
        prompt="probe", frames_first=frames, frames_second=frames, start_s=0.0, end_s=1.0, reference=frames
    )


def _compile(name: str, data: bytes, where: str) -> JudgePrompt:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptTemplateError(f"prompt template {where} is not UTF-8: {exc}") from exc
    try:
        template = _environment().from_string(source)
    except TemplateError as exc:
        raise PromptTemplateError(f"prompt template {where} does not compile: {exc}") from exc
    missing = [b for b in REQUIRED_BLOCKS if b not in template.blocks]
    if missing:
        raise PromptTemplateError(f"prompt template {where} lacks block(s): {', '.join(missing)}")
    prompt = JudgePrompt(
        name=name,
        prompt_id=f"{name}@{hashlib.sha256(data).hexdigest()[:8]}",
        source=source,
        path=where,
        _template=template,
    )
    # Render once now, so an undefined variable or a sandbox violation fails at load, naming the file.
    try:
        for layout in LAYOUTS:
            for order in ("label-first", "rationale-first"):
                prompt.render(_probe_request(), layout=layout, answer_order=order)
            prompt.render(_probe_request(), layout=layout, composite_fit=40)
            prompt.render(_probe_request(), layout=layout, show_reference=True)
        for show_reference in (False, True):
            prompt.render(_probe_request(), input_mode="video", show_reference=show_reference)
        prompt.reask("probe error")
    except SecurityError as exc:
        raise PromptTemplateError(f"prompt template {where} tried an unsafe operation: {exc}") from exc
    except Exception as exc:  # a template can fail in many ways (range too big, bad filter args...)
        raise PromptTemplateError(
            f"prompt template {where} fails to render: {type(exc).__name__}: {exc}"
        ) from exc
    return prompt


def load_prompt(name_or_path: str = "conservative") -> JudgePrompt:
    """A shipped template by name ("conservative"), or a template file by path (``*.j2``)."""
    looks_like_path = name_or_path.endswith(".j2") or "/" in name_or_path or "\\" in name_or_path
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise PromptTemplateError(f"prompt template file {path} does not exist")
        return _compile(path.stem, path.read_bytes(), str(path))
    resource = _templates_dir() / f"{name_or_path}.j2"
    if not resource.is_file():
        raise PromptTemplateError(
            f"unknown prompt {name_or_path!r}; available: {', '.join(available_prompts())} (or a path to a .j2 file)"
        )
    return _compile(name_or_path, resource.read_bytes(), f"{name_or_path}.j2")


def _check_presentation(request: SegmentRequest, layout: str, input_mode: str, show_reference: bool) -> None:
    """Refuse a presentation the template cannot render (ValueError: a caller's mistake)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if input_mode not in INPUTS:
        raise ValueError(f"unknown input {input_mode!r}; choose one of {', '.join(INPUTS)}")
    if input_mode == "video" and layout != "separate":
        raise ValueError("video input shows each video as one clip: it needs the separate layout")
    if show_reference and request.reference is None:
        raise ValueError("the reference is to be shown, but the request holds no reference frames")
