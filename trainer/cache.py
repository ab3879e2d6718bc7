"""Build the training cache (VAE latents and prompt embeddings) before training, shardable over processes.

    python -m trainer.cache --prefs LABELS.jsonl [HELDOUT.jsonl] --model MODEL --cache-dir DIR \\
        [--num-frames N --height H --width W --mode dense|vanilla --min-nontie-fraction F]
    accelerate launch [--config_file configs/accelerate/ddp.yaml] -m trainer.cache ...

``trainer.train`` builds what is missing from the cache itself, but in a multi-GPU run only the main
process does (the others wait for it at a barrier), and a large set keeps it busy longer than a
process group's timeout (NCCL's watchdog defaults to 10 minutes). This command does the same work
split over its processes: process ``r`` of ``N`` encodes the pairs ``r, r + N, r + 2N...`` of each
file, chosen with the same window and filters as training, with no collective operation in between,
so nothing times out. Cache entries are keyed by content and written atomically, so two processes
writing the same prompt's embedding, or a run killed halfway, leave a usable cache. Then train with
the same ``--cache-dir`` and geometry: training finds everything there and never loads the encoders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.config import ConfigError

__all__ = ["build_cache", "main"]


def build_cache(
    prefs: list[str],
    model: str,
    cache_dir: str | Path,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    mode: str = "dense",
    min_nontie_fraction: float = 0.2,
    video_root: str | None = None,
    rank: int = 0,
    world: int = 1,
    device: str = "cpu",
    progress: bool = False,
) -> int:
    """Encode this process's share (``rank`` of ``world``) of the pairs of every file in ``prefs``
    into ``cache_dir``; returns how many pairs it encoded (or found already cached)."""
    from trainer.data import Geometry, build_dataset, select_pairs
    from trainer.models import load_adapter

    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is not in [0, {world})")
    adapter = load_adapter(model, device=device)
    geometry = Geometry(num_frames or adapter.num_frames, height or adapter.height, width or adapter.width)
    try:
        adapter.check_geometry(geometry.num_frames, geometry.height, geometry.width)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    done = 0
    for path in prefs:
        records, _ = select_pairs(
            path, num_frames=geometry.num_frames, temporal_compression=adapter.temporal_compression,
            min_nontie_fraction=min_nontie_fraction, mode=mode,
        )  # fmt: skip
        mine = records[rank::world]
        if mine:
            base = video_root or Path(path).parent
            build_dataset(mine, adapter, geometry, cache_dir, base, progress=progress)
        done += len(mine)
    return done


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.cache", description=__doc__.split("\n\n")[2])
    p.add_argument(
        "--prefs", nargs="+", required=True, help="Dense preference JSONL files (training, held-out)."
    )
    p.add_argument("--model", required=True, help="The model id / path training will use, or 'tiny'.")
    p.add_argument("--cache-dir", required=True, help="The cache directory; pass the same to trainer.train.")
    p.add_argument("--num-frames", type=int, help="Training window in frames (default: the model's).")
    p.add_argument("--height", type=int, help="Training height (default: the model's).")
    p.add_argument("--width", type=int, help="Training width (default: the model's).")
    p.add_argument(
        "--mode",
        choices=("dense", "vanilla"),
        default="dense",
        help="Filters as training will (default: dense).",
    )
    p.add_argument(
        "--min-nontie-fraction", type=float, default=0.2, help="As trainer.train's (default: 0.2)."
    )
    p.add_argument(
        "--video-root", help="Where relative video paths resolve (default: each file's directory)."
    )
    return p


def main(argv: list[str] | None = None) -> int:
    import torch
    from accelerate import PartialState

    from trainer.data import DataError
    from trainer.models import UnknownModelError

    args = _parser().parse_args(argv)
    state = PartialState(cpu=not torch.cuda.is_available())
    state.print(f"processes: {state.num_processes}")
    try:
        done = build_cache(
            args.prefs, args.model, args.cache_dir, num_frames=args.num_frames, height=args.height,
            width=args.width, mode=args.mode, min_nontie_fraction=args.min_nontie_fraction,
            video_root=args.video_root, rank=state.process_index, world=state.num_processes,
            device=str(state.device), progress=state.is_local_main_process,
        )  # fmt: skip
    except (ConfigError, DataError, UnknownModelError) as exc:
        print(f"error (process {state.process_index}): {exc}", file=sys.stderr)
        return 2
    print(f"process {state.process_index}/{state.num_processes}: {done} pairs in {args.cache_dir}")
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
