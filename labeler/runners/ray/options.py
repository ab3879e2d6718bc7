"""The Ray runner's options, typed (:class:`RayOptions`). The batch CLI builds them from its flags
(``--ray [ADDRESS]``, ``--ray-workers``, ``--ray-gpus-per-worker``: ``labeler.cli_options``); kept
apart from the Ray code so that building the parser never imports ray (an optional extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from labeler.judge_config import JudgeConfig

#: ``--ray`` given with no address: start a local Ray on this machine.
LOCAL = "local"
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: start a local Ray; "auto", "ray://host:10001", "host:6379": join one
    workers: int  # actors in the pool, each with one judge and one engine
    gpus_per_worker: float  # num_gpus of each actor (1: one model copy per GPU)
    pairs_per_worker: int  # pairs one actor labels at once (one Ray task); lost if the actor dies

    def judge_for_actors(self, judge: JudgeConfig) -> JudgeConfig:
        """The judge config the actors use: with GPUs reserved, ``--judge hf`` runs on ``cuda``
        unless ``--device`` says otherwise (Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs, so
        cuda is its own)."""
        if self.gpus_per_worker > 0 and judge.judge == "hf" and judge.device is None:
            return replace(judge, device="cuda")
        return judge
