"""The batch CLI's Ray options (``--ray [ADDRESS]``, ``--ray-workers``, ``--ray-gpus-per-worker``).

Kept apart from the Ray code so that building the parser never imports ray (an optional extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from dataclasses import dataclass

#: ``--ray`` given with no address: start a local Ray on this machine.
LOCAL = "local"
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: start a local Ray; "auto", "ray://host:10001", "host:6379": join one
    workers: int  # actors in the pool, each with one judge and one engine
    gpus_per_worker: float  # num_gpus of each actor (1: one model copy per GPU)
    pairs_per_worker: int  # pairs one actor labels at once (one Ray task); lost if the actor dies


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale out on Ray (pip install 'densepref[ray]'; see docs/scale.md)")
    g.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        default=None,
        metavar="ADDRESS",
        help="label on a Ray cluster: no ADDRESS starts a local Ray on this machine; 'auto' or "
        "ray://host:10001 joins an existing cluster. --workers is then the pairs each Ray worker "
        "labels at once",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help=f"Ray worker actors, each holding one judge and one engine (default: {DEFAULT_WORKERS})",
    )
    g.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=None,
        metavar="G",
        help="GPUs each Ray worker reserves, e.g. 1 with --judge hf for one model copy per GPU "
        "(default: 0; --judge hf then runs on cuda unless --device says otherwise)",
    )


def ray_options_from_args(args: argparse.Namespace, pairs_per_worker: int) -> RayOptions | None:
    """The Ray options, or None without --ray; raises ValueError on options that do not fit."""
    if args.ray is None:
        if args.ray_workers is not None or args.ray_gpus_per_worker is not None:
            raise ValueError("--ray-workers and --ray-gpus-per-worker need --ray")
        return None
    if importlib.util.find_spec("ray") is None:
        raise ValueError("--ray needs Ray: pip install 'densepref[ray]'")
    if args.openai_batch:
        raise ValueError("--openai-batch and --ray do not go together (the Batch API needs no workers)")
    if not args.ray.strip():
        raise ValueError("--ray ADDRESS is empty; give no ADDRESS for a local Ray, or 'auto'")
    workers = DEFAULT_WORKERS if args.ray_workers is None else args.ray_workers
    if workers < 1:
        raise ValueError("--ray-workers must be at least 1")
    gpus = 0.0 if args.ray_gpus_per_worker is None else args.ray_gpus_per_worker
    if not math.isfinite(gpus) or gpus < 0:
        raise ValueError("--ray-gpus-per-worker must be a finite number >= 0")
    if gpus > 1 and not gpus.is_integer():
        raise ValueError("--ray-gpus-per-worker above 1 must be a whole number of GPUs (Ray's rule)")
    if pairs_per_worker < 1:
        raise ValueError("--workers must be at least 1")
    if gpus > 0 and args.judge == "hf" and args.device is None:
        args.device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs: cuda is its own
    address = None if args.ray == LOCAL else args.ray.strip()
    return RayOptions(address, workers, gpus, pairs_per_worker)
