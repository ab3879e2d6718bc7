"""Training checkpoints: just the LoRA, the optimizer, the LR schedule, RNG states and the step.

``OUTPUT_DIR/checkpoint-<step>/`` holds ``lora.safetensors`` (the trainable parameters by name),
``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and ``state.json`` (step and config). The frozen base
weights are never written: they come from the model id again on resume. Directories are written
under a temporary name and renamed, so a run killed mid-save leaves the previous checkpoint intact.

The caller gathers the LoRA weights (``accelerator.get_state_dict`` under DDP or FSDP) and the main
process writes them. Under FSDP the optimizer state is sharded across processes, so it is not
written (``optimizer_state=None``) and such a checkpoint cannot be resumed (``CheckpointError``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labeler.errors import DenseprefError

__all__ = [
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "read_state",
    "run_changes",
    "save_checkpoint",
    "trainable_state_dict",
]

_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(DenseprefError, RuntimeError):
    """A checkpoint that does not fit the model being trained (missing or unexpected LoRA weights)."""


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    lora: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler: Any,
    config: dict[str, Any],
    *,
    keep: int = 2,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` (``lora``: the trainable weights by parameter name) and delete all
    but the newest ``keep`` checkpoints. ``run``: the resolved settings a resume must not change
    (``run_changes``), kept in ``state.json``."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, str(tmp / "lora.safetensors"))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(
        json.dumps({"step": step, "config": config, "run": run}, indent=2, default=str)
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [
        (int(m.group(1)), p)
        for p in output_dir.glob("checkpoint-*")
        if (m := _NAME.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (step, config, run)."""
    try:
        state = json.loads((Path(path) / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read state.json: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: state.json holds no step")
    return state


def run_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{setting: (checkpoint's value, this run's value)}`` for each resolved setting that differs;
    a checkpoint written before settings were recorded differs in every one (value ``None``)."""
    saved = saved or {}
    # Through JSON: what state.json holds (tuples become lists) compares equal to what it was.
    now = json.loads(json.dumps(current, default=str))
    return {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = _checkpoints(Path(output_dir))
    return found[-1] if found else None


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore LoRA weights, optimizer, schedule and RNG states in place; returns ``state.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "optimizer.pt").is_file():
        raise CheckpointError(
            f"{path}: no optimizer state (a checkpoint written under FSDP, whose optimizer is sharded); "
            "it holds the LoRA weights but cannot be resumed"
        )
    weights = load_file(str(path / "lora.safetensors"))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise CheckpointError(
            f"{path}: LoRA weights do not fit the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was it trained with another --lora-rank / --lora-targets / model?"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            if params[name].shape != value.shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(value.shape)}, model {tuple(params[name].shape)}"
                )
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())
