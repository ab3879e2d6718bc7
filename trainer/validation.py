"""Validation videos: what the model makes of fixed prompts, before training and every N steps.

``--validation-prompts FILE`` (one prompt per line) and ``--validation-steps N``: the prompts are
embedded once, while the text encoder is still loaded; then the base model (step 0, LoRA switched
off) and the policy every N steps and at the end render each prompt from the same noise (seed
``seed + prompt index``), so the videos of one prompt differ only by what the LoRA learned. They are
written to ``OUTPUT_DIR/validation/step-<N>/prompt-<i>.mp4``, listed in ``log.jsonl`` (a
``validation`` line) and, with ``--report-to tensorboard`` / ``wandb``, logged as a strip of frames.

The sampler is the model's own flow-matching schedule (``adapter.scheduler``: Euler with Wan's
``flow_shift``) over ``--validation-inference-steps`` steps, with the family's classifier-free
guidance and an empty negative prompt when its guidance scale is above 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.fileio import read_lines

if TYPE_CHECKING:
    import numpy as np
    import torch
    from accelerate import Accelerator

    from trainer.models import VideoModelAdapter
    from trainer.step import LoraSwitch

__all__ = ["ValidationSet", "describe", "log_to_trackers", "read_validation_prompts", "render", "video_seed"]


def read_validation_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of ``path``; an empty or unreadable file is a ``ConfigError``."""
    from trainer.config import ConfigError

    try:
        prompts = [line.strip() for line in read_lines(Path(path)) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--validation-prompts {path}: cannot read: {exc}") from exc
    if not prompts:
        raise ConfigError(f"--validation-prompts {path}: no prompt in the file")
    return prompts


def video_seed(seed: int, index: int) -> int:
    return seed + index


@dataclass
class ValidationSet:
    """The prompts and their embeddings (``[1, L, D]`` each, CPU), computed before the text encoder
    is freed, plus the empty negative prompt's when the family guides."""

    prompts: list[str]
    embeddings: list[torch.Tensor]
    negative: torch.Tensor | None
    seed: int
    num_steps: int

    @classmethod
    def build(
        cls, prompts: list[str], adapter: VideoModelAdapter, seed: int, num_steps: int | None
    ) -> ValidationSet:
        embeddings = [adapter.encode_prompts([p]) for p in prompts]
        negative = adapter.encode_prompts([""]) if adapter.guidance_scale > 1.0 else None
        return cls(prompts, embeddings, negative, seed, num_steps or adapter.num_inference_steps)


def _sample(
    adapter: VideoModelAdapter,
    model: torch.nn.Module,
    noise: torch.Tensor,
    text: torch.Tensor,
    negative: torch.Tensor | None,
    num_steps: int,
) -> torch.Tensor:
    """Euler over the model's shifted flow-matching schedule from pure noise (t = 1) to t = 0."""
    import torch

    scheduler = adapter.scheduler
    scheduler.set_timesteps(num_steps, device=adapter.device)
    latents = noise.to(adapter.device)
    text = text.to(adapter.device)
    with torch.no_grad():
        for i in range(num_steps):
            sigma = scheduler.sigmas[i].expand(1)
            if negative is None:
                velocity = adapter.predict_velocity(model, latents, sigma, text)
            else:
                both = adapter.predict_velocity(
                    model,
                    latents.repeat(2, 1, 1, 1, 1),
                    sigma.repeat(2),
                    torch.cat([negative.to(text), text]),
                )
                uncond, cond = both.chunk(2)
                velocity = uncond + adapter.guidance_scale * (cond - uncond)
            latents = scheduler.step(velocity, scheduler.timesteps[i], latents, return_dict=False)[0]
    return latents


def render(
    vset: ValidationSet,
    adapter: VideoModelAdapter,
    model: torch.nn.Module,
    geometry: tuple[int, int, int],
    out_dir: Path,
    *,
    base: LoraSwitch | None = None,
    write: bool = True,
) -> list[tuple[Path, np.ndarray]]:
    """Render every prompt at ``geometry`` (frames, height, width) through ``model``; with ``base``
    (the module holding the LoRA) switched off: the base model. Writes the mp4s when ``write`` (the
    main process) and returns ``(path, frames)`` for each prompt."""
    import contextlib

    import torch

    from trainer.media import write_video
    from trainer.step import lora_disabled

    f, h, w = adapter.latent_shape(*geometry)
    rendered = []
    was_training = model.training
    model.eval()
    with lora_disabled(base) if base is not None else contextlib.nullcontext():
        for i, text in enumerate(vset.embeddings):
            gen = torch.Generator().manual_seed(video_seed(vset.seed, i))
            noise = torch.randn((1, adapter.latent_channels, f, h, w), generator=gen)
            latents = _sample(adapter, model, noise, text, vset.negative, vset.num_steps)
            frames = adapter.decode_latents(latents)[0]
            path = out_dir / f"prompt-{i}.mp4"
            if write:
                write_video(path, frames, adapter.fps)
            rendered.append((path, frames))
    model.train(was_training)
    return rendered


def log_to_trackers(accelerator: Accelerator, rendered: list[tuple[Path, np.ndarray]], step: int) -> None:
    """Four evenly spaced frames of each video as images, on the trackers that take images."""
    import numpy as np
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    strips = {
        f"validation/prompt-{i}": np.stack([frames[k * (len(frames) - 1) // 3] for k in range(4)])
        for i, (_, frames) in enumerate(rendered)
    }
    for tracker in accelerator.trackers:
        if isinstance(tracker, TensorBoardTracker):
            tracker.log_images(strips, step=step, dataformats="NHWC")
        elif isinstance(tracker, WandBTracker):
            tracker.log_images(strips, step=step)


def describe(rendered: list[tuple[Path, Any]], root: Path) -> list[str]:
    return [str(path.relative_to(root)) for path, _ in rendered]
