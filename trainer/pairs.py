"""Guided pair generation (the DenseDPO paper's recipe): two aligned videos from one real video.

For a real video ``x`` (encoded to latents) draw one guidance level ``eta ~ U(eta_min, eta_max)``,
make two starting points ``(1 - eta) * x + eta * eps0`` and ``(1 - eta) * x + eta * eps1`` with
independent noises, and Euler-denoise both with the same prompt over the last ``round(eta * N)``
steps of an N-step schedule (SDEdit / img2img "strength" = eta). The sides share eta: different
levels would let the policy learn a noise-level shortcut instead of a preference.

The schedule is the model's own shifted flow-matching schedule (``FlowMatchEulerDiscreteScheduler``
with the model's shift), anchored so that its first noise level is exactly ``eta``: the unshifted
levels are evenly spaced from ``shift^-1(eta)`` down to 0, which is what the tail of an N-step
schedule looks like when N is large.

Output under ``--out``: ``clips/<id>_a.mp4``, ``clips/<id>_b.mp4``, ``clips/<id>_gt.mp4`` (the real clip
at the same size, length and fps) and ``manifest.jsonl`` (the labeler's manifest format, see
docs/contracts.md; relative paths, ``meta`` with eta, seed, steps), ready for ``python -m labeler.batch out/manifest.jsonl --out labels.jsonl``.
A rerun skips pairs already in the manifest.

Prompts (``--prompts``): a ``.jsonl`` file of ``{"video": NAME_OR_PATH, "prompt": TEXT}`` lines (matched
by path, file name or stem), or a text file with one prompt per line in the order of the videos
(directories are read in sorted order); a text file with a single line gives every video that prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.errors import DenseprefError
from labeler.fileio import JsonlWriter, iter_jsonl, read_lines, repair_jsonl_tail
from labeler.schemas import ManifestEntry
from trainer.media import MediaError, fit_frames, read_video, resample_fps, write_video

if TYPE_CHECKING:
    import torch

    from trainer.models import VideoModelAdapter

__all__ = ["PairGenerationError", "collect_videos", "generate_pairs", "guided_sigmas", "load_prompts", "main"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


class PairGenerationError(DenseprefError, ValueError):
    """Bad inputs for pair generation (missing prompt, unreadable list, bad eta range...)."""


def collect_videos(specs: Sequence[str]) -> list[Path]:
    """Videos from directories (sorted), video files, and ``.txt`` lists of paths (relative to the list)."""
    videos: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            videos += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            if not path.is_file():
                raise PairGenerationError(f"video {path} not found")
            videos.append(path)
        elif path.is_file():
            for line in read_lines(path):
                if line.strip() and not line.lstrip().startswith("#"):
                    videos += collect_videos([str(path.parent / line.strip())])
        else:
            raise PairGenerationError(f"{spec}: not a directory, video file or list file")
    if not videos:
        raise PairGenerationError(f"no videos found in {list(specs)}")
    return videos


def load_prompts(path: str | Path, videos: Sequence[Path]) -> list[str]:
    """One prompt per video; see the module docstring for the two file formats."""
    path = Path(path)
    if not path.is_file():
        raise PairGenerationError(f"prompts file {path} not found")
    if path.suffix == ".jsonl":
        table: dict[str, str] = {}
        for lineno, raw in iter_jsonl(path):
            try:
                obj = json.loads(raw)
                table[str(obj["video"])] = str(obj["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PairGenerationError(
                    f'{path}:{lineno}: expected {{"video": ..., "prompt": ...}}: {exc}'
                ) from exc
        out = []
        for video in videos:
            found = next((table[k] for k in (str(video), video.name, video.stem) if k in table), None)
            if found is None:
                raise PairGenerationError(f"{path}: no prompt for video {video}")
            out.append(found)
        return out
    lines = [line.strip() for line in read_lines(path) if line.strip()]
    if len(lines) == 1:
        return lines * len(videos)
    if len(lines) != len(videos):
        raise PairGenerationError(
            f"{path}: {len(lines)} prompts for {len(videos)} videos (need one per video, or one)"
        )
    return lines


def guided_sigmas(shift: float, eta: float, num_steps: int) -> tuple[list[float], int]:
    """The unshifted noise levels to pass to ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)``
    (which applies ``shift``) so that the schedule starts exactly at ``eta``, and the number of steps
    ``round(eta * num_steps)`` (at least 1)."""
    if not 0.0 < eta < 1.0:
        raise PairGenerationError(f"eta must be in (0, 1), got {eta}")
    steps = max(1, round(eta * num_steps))
    u0 = eta / (shift - (shift - 1.0) * eta)  # inverse of s = shift*u / (1 + (shift-1)*u)
    return [u0 * (1.0 - i / steps) for i in range(steps)], steps


def _pair_ids(videos: Sequence[Path], per_video: int) -> list[list[str]]:
    seen: dict[str, int] = {}
    out = []
    for video in videos:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", video.stem) or "video"
        seen[stem] = seen.get(stem, 0) + 1
        base = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        out.append([base] if per_video == 1 else [f"{base}_{k}" for k in range(per_video)])
    return out


def _done_ids(manifest: Path) -> set[str]:
    if not manifest.is_file():
        return set()
    done = set()
    for _, line in iter_jsonl(manifest):
        try:
            done.add(json.loads(line)["pair_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a killed run: that pair is generated again
    return done


@dataclass(frozen=True)
class _Recipe:
    """What every pair of a run shares."""

    model: str
    eta_min: float
    eta_max: float
    steps: int
    seed: int
    guidance: float
    negative: torch.Tensor | None  # negative prompt embedding, when guidance > 1
    segment_seconds: float


def _jobs(
    paths: Sequence[Path], texts: Sequence[str], per_video: int, done: set[str]
) -> list[tuple[Path, str, str]]:
    """(video, prompt, pair id) of every pair not yet in the manifest."""
    return [
        (path, text, pid)
        for path, text, ids in zip(paths, texts, _pair_ids(paths, per_video), strict=True)
        for pid in ids
        if pid not in done
    ]


def _source_clip(adapter: VideoModelAdapter, path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """The real clip at the model's frames, fps and size, and its latents ``[1, C, f, h, w]``."""
    frames_needed = adapter.num_frames
    source = read_video(path, max_seconds=frames_needed / adapter.fps + 1.0)
    resampled = resample_fps(source, adapter.fps, frames_needed, path=str(path))
    frames = fit_frames(resampled, adapter.height, adapter.width)
    return frames, adapter.encode_video(frames)[None]


def _make_pair(
    adapter: VideoModelAdapter,
    transformer: torch.nn.Module,
    recipe: _Recipe,
    job: tuple[Path, str, str],
    source: tuple[np.ndarray, torch.Tensor],
    out: Path,
) -> ManifestEntry:
    """Denoise the two guided starting points of one pair, write its clips; return its manifest entry."""
    import torch

    path, text, pair_id = job
    frames, x0 = source
    # From the pair id, not the position: a resumed run draws the same eta and noises.
    pair_seed = int(hashlib.sha256(f"{recipe.seed}:{pair_id}".encode()).hexdigest()[:15], 16)
    gen = torch.Generator().manual_seed(pair_seed)
    eta = recipe.eta_min + (recipe.eta_max - recipe.eta_min) * torch.rand((), generator=gen).item()
    noise = torch.randn((2, *x0.shape[1:]), generator=gen)
    start = (1.0 - eta) * x0 + eta * noise  # [2, C, f, h, w]: the A and B starting points
    latents, used = _denoise(
        adapter, transformer, start, eta, recipe.steps, adapter.encode_prompts([text]), recipe.negative,
        recipe.guidance,
    )  # fmt: skip
    video_a, video_b = adapter.decode_latents(latents)
    for side, clip in {"a": video_a, "b": video_b, "gt": frames}.items():
        write_video(out / "clips" / f"{pair_id}_{side}.mp4", clip, adapter.fps)
    meta: dict[str, Any] = {
        "eta": round(eta, 6), "seed": pair_seed, "steps": recipe.steps, "denoise_steps": used,
        "shift": adapter.flow_shift, "guidance_scale": recipe.guidance, "model": recipe.model, "source": str(path),
        "fps": adapter.fps,
    }  # fmt: skip
    return ManifestEntry(
        pair_id=pair_id, prompt=text, video_a=f"clips/{pair_id}_a.mp4", video_b=f"clips/{pair_id}_b.mp4",
        reference=f"clips/{pair_id}_gt.mp4", segment_seconds=recipe.segment_seconds, meta=meta,
    )  # fmt: skip


def generate_pairs(
    videos: Sequence[str],
    prompts: str,
    model: str,
    out: str | Path,
    *,
    eta_min: float = 0.65,
    eta_max: float = 0.8,
    steps: int | None = None,
    seed: int = 0,
    pairs_per_video: int = 1,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    segment_seconds: float = 1.0,
    device: str | None = None,
    progress: bool = True,
) -> tuple[Path, list[tuple[str, str]]]:
    """Generate the pairs (see the module docstring). Returns the manifest path and the pairs that
    failed, as ``(pair_id, message)``: an unreadable or too short video fails alone."""
    import torch
    from tqdm.auto import tqdm

    from trainer.models import load_adapter

    if not 0.0 < eta_min <= eta_max < 1.0:
        raise PairGenerationError(f"need 0 < eta_min <= eta_max < 1, got {eta_min}, {eta_max}")
    paths = collect_videos(videos)
    texts = load_prompts(prompts, paths)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = load_adapter(model, device=device)
    out = Path(out)
    manifest = out / "manifest.jsonl"
    jobs = _jobs(paths, texts, pairs_per_video, _done_ids(manifest))
    failures: list[tuple[str, str]] = []
    if not jobs:
        return manifest, failures
    guidance = adapter.guidance_scale if guidance_scale is None else guidance_scale
    recipe = _Recipe(
        model, eta_min, eta_max, steps or adapter.num_inference_steps, seed, guidance,
        adapter.encode_prompts([negative_prompt]) if guidance > 1.0 else None, segment_seconds,
    )  # fmt: skip
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    transformer = adapter.load_transformer(dtype).eval().requires_grad_(False)
    out.joinpath("clips").mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(manifest)  # a killed run's torn last line would glue itself to the next entry
    source: tuple[Path, tuple[np.ndarray, torch.Tensor]] | None = None  # a video's K pairs share it
    with JsonlWriter(manifest) as writer:
        for job in tqdm(jobs, desc="pairs", disable=not progress):
            if source is None or source[0] != job[0]:
                try:
                    source = (job[0], _source_clip(adapter, job[0]))
                except MediaError as exc:
                    failures.append((job[2], str(exc)))
                    continue
            writer.write_line(_make_pair(adapter, transformer, recipe, job, source[1], out).model_dump_json())
    return manifest, failures


def _denoise(
    adapter: VideoModelAdapter,
    transformer: torch.nn.Module,
    start: torch.Tensor,
    eta: float,
    steps: int,
    text: torch.Tensor,
    negative: torch.Tensor | None,
    guidance: float,
) -> tuple[torch.Tensor, int]:
    """Euler over the guided schedule; A and B go through the transformer as one batch."""
    import torch

    scheduler = adapter.scheduler
    sigmas, used = guided_sigmas(adapter.flow_shift, eta, steps)
    scheduler.set_timesteps(sigmas=sigmas, device=adapter.device)
    latents = start.to(adapter.device)
    n = latents.shape[0]
    cond = text.expand(n, -1, -1)
    with torch.no_grad():
        for i in range(used):
            sigma = scheduler.sigmas[i].expand(n)
            if negative is None:
                velocity = adapter.predict_velocity(transformer, latents, sigma, cond)
            else:  # classifier-free guidance, both branches in one batch
                both = adapter.predict_velocity(
                    transformer,
                    latents.repeat(2, 1, 1, 1, 1),
                    sigma.repeat(2),
                    torch.cat([negative.expand(n, -1, -1), cond]),
                )
                uncond, conditioned = both.chunk(2)
                velocity = uncond + guidance * (conditioned - uncond)
            latents = scheduler.step(velocity, scheduler.timesteps[i], latents, return_dict=False)[0]
    return latents, used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--videos", nargs="+", required=True, help="Directories, video files or .txt lists of paths."
    )
    parser.add_argument(
        "--prompts", required=True, help="Prompts: .jsonl {video, prompt} lines, or one per line."
    )
    parser.add_argument("--model", required=True, help="diffusers model id / path, or 'tiny'.")
    parser.add_argument("--out", required=True, help="Output directory (clips/ and manifest.jsonl).")
    parser.add_argument("--eta-min", type=float, default=0.65, help="Lowest guidance level (default 0.65).")
    parser.add_argument("--eta-max", type=float, default=0.8, help="Highest guidance level (default 0.8).")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="N of the N-step schedule (default: the model's: 50 for Wan T2V, as WanPipeline).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of eta and the noises.")
    parser.add_argument("--pairs-per-video", type=int, default=1, help="Pairs drawn from each video.")
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="Classifier-free guidance (default: the model's)."
    )
    parser.add_argument("--negative-prompt", default="", help="Negative prompt for guidance.")
    parser.add_argument(
        "--segment-seconds", type=float, default=1.0, help="Segment length written to the manifest."
    )
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available).")
    args = parser.parse_args(argv)
    from trainer.models import UnknownModelError

    try:
        manifest, failures = generate_pairs(
            args.videos, args.prompts, args.model, args.out, eta_min=args.eta_min, eta_max=args.eta_max,
            steps=args.steps, seed=args.seed, pairs_per_video=args.pairs_per_video, guidance_scale=args.guidance_scale,
            negative_prompt=args.negative_prompt, segment_seconds=args.segment_seconds, device=args.device,
        )  # fmt: skip
    except (PairGenerationError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for pair_id, message in failures:
        print(f"pair {pair_id} failed: {message}", file=sys.stderr)
    print(manifest)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
