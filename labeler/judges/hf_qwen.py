"""Qwen2-VL inputs for the ``hf`` judge without torchvision: images AND videos (``--input video``).

transformers 5.x builds a Qwen2-VL ``AutoProcessor`` with a video processor whose module imports
torchvision at load (``video_processing_qwen2_vl.py``: ``import torchvision.transforms.v2.functional``),
and PyPI's torchvision does not load beside this project's CPU torch build. The processor's other
parts need none of it: the tokenizer, the chat template and the PIL-backend image processor
(``Qwen2VLImageProcessorPil``). :class:`QwenVLInputs` stands in for the processor with those.

A video differs from a list of images only in how frames fill the vision tower's temporal patch
(``temporal_patch_size`` = 2 frames). The image processor patchifies each frame as a still: every
row of its ``pixel_values`` is one 14x14 patch laid out ``(C, T, P, P)`` with the frame copied
into both ``T`` slots, rows in the order (merge-block row, merge-block column, row in block, column
in block) — exactly the video processor's order within one temporal step. So
:func:`video_patches` takes each frame's slot 0 and puts frames ``2t`` and ``2t+1`` into the two
slots of temporal step ``t`` (an odd last frame is repeated, as the video processor pads), giving
``pixel_values_videos`` and ``video_grid_thw = (K/2, grid_h, grid_w)``. Resizing is the image
processor's (its ``min/max_pixels``, PIL bicubic), not the video processor's.

Qwen2.5-VL spaces a video's temporal positions by real time: ``second_per_grid_ts`` (seconds per
temporal patch, ``temporal_patch_size / sampled fps``, what its processor computes from the video's
metadata) goes with each clip, from the frames' timing (:func:`sampled_fps`). Qwen2-VL has no
such input: its temporal positions count patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.judges.video_parts import VideoTiming

__all__ = ["VIDEO_FAMILIES", "Clip", "QwenVLInputs", "sampled_fps", "video_patches"]

#: Model types whose checkpoints load through :class:`QwenVLInputs` and may take ``--input video``.
VIDEO_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
#: Of those, the ones whose model takes ``second_per_grid_ts`` (real time between temporal patches).
_TIMED_FAMILIES = ("qwen2_5_vl",)

# Token types of the model's multimodal RoPE (``mm_token_type_ids``): text 0, image 1, video 2.
_TEXT, _IMAGE, _VIDEO = 0, 1, 2


@dataclass(frozen=True)
class Clip:
    """One video for the model: its frames (PIL or [H, W, 3] uint8) and the rate they were sampled at."""

    frames: list[Any]
    fps: float


def sampled_fps(timing: VideoTiming) -> float:
    """Frames per second of the sampled frames themselves (the source's fps over the mean step
    between sampled frame numbers); a single frame counts as sampled at the source's rate."""
    indices = timing.frames_indices
    if len(indices) < 2:
        return timing.fps
    step = (indices[-1] - indices[0]) / (len(indices) - 1)
    return timing.fps / step


def video_patches(image_processor: Any, frames: list[Any]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(pixel_values_videos rows, (grid_t, grid_h, grid_w))`` of one clip of ``frames`` (PIL or
    [H, W, 3] uint8, all the same size), from the image processor's per-frame patches."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    out = image_processor(images=list(frames), return_tensors="np")
    grids = np.asarray(out["image_grid_thw"])
    if len({tuple(g) for g in grids.tolist()}) != 1:
        raise ValueError("the frames of one video must have the same size")
    _, grid_h, grid_w = (int(x) for x in grids[0])
    tps, patch = int(image_processor.temporal_patch_size), int(image_processor.patch_size)
    n, k = grid_h * grid_w, len(frames)
    # [K, rows, C, T, P, P] -> each frame once (its T copies are identical): [K, rows, C, P, P]
    still = np.asarray(out["pixel_values"]).reshape(k, n, 3, tps, patch, patch)[:, :, :, 0]
    if pad := -k % tps:
        still = np.concatenate([still, np.repeat(still[-1:], pad, axis=0)])
    grid_t = still.shape[0] // tps
    # [grid_t, T, rows, C, P, P] -> [grid_t, rows, C, T, P, P]: the video processor's row layout
    steps = still.reshape(grid_t, tps, n, 3, patch, patch).transpose(0, 2, 3, 1, 4, 5)
    return steps.reshape(grid_t * n, 3 * tps * patch * patch), (grid_t, grid_h, grid_w)


@dataclass
class QwenVLInputs:
    """The parts of a Qwen2-VL processor the judge uses, built from the checkpoint's tokenizer,
    chat template and PIL image processor: ``apply_chat_template``, ``tokenizer`` and a call that
    turns text + images + videos into the model's inputs with placeholders expanded."""

    tokenizer: Any
    image_processor: Any
    chat_template: str
    image_token_id: int
    video_token_id: int
    timed: bool  # the model takes second_per_grid_ts (Qwen2.5-VL)

    @classmethod
    def from_pretrained(cls, source: str | Path, config: Any) -> QwenVLInputs:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(source)
        return cls(
            tokenizer=tokenizer,
            image_processor=Qwen2VLImageProcessorPil.from_pretrained(source),
            chat_template=tokenizer.chat_template or "",
            image_token_id=int(config.image_token_id),
            video_token_id=int(config.video_token_id),
            timed=str(config.model_type) in _TIMED_FAMILIES,
        )

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, tokenize: bool = False, add_generation_prompt: bool = True
    ) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=tokenize,
                add_generation_prompt=add_generation_prompt,
            )
        )

    def __call__(
        self,
        *,
        text: list[str],
        images: list[Any] | None = None,
        videos: list[Clip] | None = None,
        return_tensors: str = "pt",
        add_special_tokens: bool = False,
    ) -> dict[str, Any]:
        import torch

        (prompt,) = text
        merge = int(self.image_processor.merge_size) ** 2
        out: dict[str, Any] = {}
        counts: dict[int, list[int]] = {self.image_token_id: [], self.video_token_id: []}
        if images:
            batch = self.image_processor(images=images, return_tensors="np")
            out["pixel_values"] = torch.from_numpy(np.ascontiguousarray(batch["pixel_values"]))
            out["image_grid_thw"] = torch.from_numpy(np.asarray(batch["image_grid_thw"], dtype=np.int64))
            counts[self.image_token_id] = [int(g.prod()) // merge for g in batch["image_grid_thw"]]
        if videos:
            clips = [video_patches(self.image_processor, clip.frames) for clip in videos]
            out["pixel_values_videos"] = torch.from_numpy(np.concatenate([rows for rows, _ in clips]))
            out["video_grid_thw"] = torch.tensor([grid for _, grid in clips], dtype=torch.long)
            counts[self.video_token_id] = [int(np.prod(grid)) // merge for _, grid in clips]
            if self.timed:
                tps = int(self.image_processor.temporal_patch_size)
                out["second_per_grid_ts"] = torch.tensor([tps / clip.fps for clip in videos])
        for token_id, per_item in counts.items():
            prompt = _expand(prompt, self.tokenizer.convert_ids_to_tokens(token_id), per_item)
        encoded = self.tokenizer(prompt, add_special_tokens=add_special_tokens)
        ids = torch.tensor([encoded["input_ids"]], dtype=torch.long)
        types = torch.full_like(ids, _TEXT)
        types[ids == self.image_token_id] = _IMAGE
        types[ids == self.video_token_id] = _VIDEO
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types, **out}


def _expand(prompt: str, placeholder: str, per_item: list[int]) -> str:
    """Each of the template's ``placeholder`` tokens repeated to its item's token count."""
    pieces = prompt.split(placeholder)
    if len(pieces) - 1 != len(per_item):
        raise ValueError(
            f"the chat template wrote {len(pieces) - 1} {placeholder} placeholders for {len(per_item)} inputs"
        )
    expanded = [pieces[0]]
    for count, rest in zip(per_item, pieces[1:], strict=True):
        expanded.append(placeholder * count + rest)
    return "".join(expanded)
