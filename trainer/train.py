"""DenseDPO / vanilla DPO LoRA training of a diffusers video model on dense preference labels.

    python -m trainer.train --prefs LABELS.jsonl --model MODEL_ID_OR_PATH --output-dir DIR \\
        [--mode dense|vanilla] [--beta 500] [--lora-rank 128] [--steps N] [--batch-size B] \\
        [--grad-accum K] [--lr 1e-5] [--warmup 250] [--seed S] [--config FILE.yaml|.toml] [--tiny]
    accelerate launch [--config_file configs/accelerate/ddp.yaml] -m trainer.train ...

One readable loop (nanoGPT style). Latents and text embeddings are computed once and cached
(``trainer.data``), then the VAE and text encoder are dropped. The policy is the transformer with a
peft LoRA; the reference is the same transformer with the LoRA switched off, so there is no second
copy of the weights. ``accelerate`` does mixed precision, gradient accumulation and multi-process
training (DDP, or FSDP for models whose weights do not fit one GPU; on a machine without CUDA the
processes use the CPU and gloo).

With N processes every optimizer step consumes one global batch of ``N * grad_accum * batch_size``
pairs from a seeded stream of per-epoch permutations, each process taking its own slice
(``micro_batch_positions``): no pair is seen twice in an epoch, and the stream depends only on the
seed. A pair's noise and t are keyed by its stream position, and the loss of a step is the sum of
its terms over the step's global term count (``step_loss_terms``), so the run does not depend on
how the global batch is split over processes and micro-batches.

Writes ``OUTPUT_DIR/log.jsonl`` (main process only: one line per logged step, averaged over the
processes: step, loss, implicit_acc, reward_margin, grad_norm, lr, step_time; and ``eval`` lines
before (step 0) and after training), ``checkpoint-<step>/`` (``--resume`` continues from the latest,
bit-identically, and the log then reads like one uninterrupted run) and ``lora/`` (the final LoRA in
diffusers format: ``pipe.load_lora_weights(OUTPUT_DIR / "lora")``).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.fileio import JsonlWriter, atomic_write_lines, read_lines
from trainer.config import TrainConfig, parse_train_args

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from trainer.data import PreferenceDataset
    from trainer.models import VideoModelAdapter
    from trainer.step import TimestepSampler
    from trainer.validation import ValidationSet

__all__ = [
    "Session",
    "TrainLog",
    "add_lora",
    "evaluate",
    "main",
    "micro_batch_positions",
    "run_settings",
    "step_loss_terms",
    "stream_index",
    "train",
    "train_step",
]


def add_lora(
    transformer: torch.nn.Module, rank: int, alpha: int | None, targets: list[str], seed: int
) -> list[torch.nn.Parameter]:
    """Freeze the transformer, add a LoRA (B = 0, so the policy starts equal to the reference) and
    return its parameters, kept in float32 whatever the base weights' dtype."""
    import torch
    from peft import LoraConfig

    from trainer.models import peft_host

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # LoRA A's init draws from the global RNG: seed it alone
        torch.manual_seed(seed)
        peft_host(transformer).add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=True, target_modules=targets)
        )
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    import torch

    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist())


def stream_index(n: int, seed: int, position: int) -> int:
    """Item ``position`` of an endless stream of seeded per-epoch permutations of ``range(n)``: the
    data order depends only on the seed and the position, so resume is exact."""
    return _epoch_order(n, seed, position // n)[position % n]


def micro_batch_positions(
    step: int, *, micro: int, rank: int, world: int, grad_accum: int, batch_size: int
) -> list[int]:
    """The stream positions of micro-batch ``micro`` of process ``rank`` at optimizer step ``step``.

    Step ``step`` takes the next ``world * grad_accum * batch_size`` positions, ordered by micro-batch
    then rank, so the processes read disjoint consecutive slices: within an epoch (``n`` consecutive
    positions) every pair is seen exactly once, whichever process sees it, and N processes with batch
    b read what one process with batch N*b reads."""
    start = ((step * grad_accum + micro) * world + rank) * batch_size
    return list(range(start, start + batch_size))


class TrainLog:
    """``log.jsonl``, written by the main process only (``enabled``).

    A fresh run starts the file anew. A run resumed at ``resume_step`` keeps what an uninterrupted
    run would hold at that point: the step lines up to it and the eval before training (step 0). It
    drops lines a killed run wrote after its last checkpoint, a torn last line, and the eval after
    training of a run that ended there; this run writes its own at its end."""

    def __init__(self, path: Path, *, enabled: bool, resume_step: int = 0):
        self.path = path
        self.kept: list[dict[str, Any]] = []
        self._writer: JsonlWriter | None = None
        if not enabled:
            return
        raw = read_lines(path) if resume_step and path.exists() else []
        lines = [(text, record) for text in raw if (record := _parse(text)) is not None]
        kept = [(text, r) for text, r in lines if _keep(r, resume_step)]
        atomic_write_lines(path, [text for text, _ in kept])
        self.kept = [r for _, r in kept]
        self._writer = JsonlWriter(path)

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.write_json(record)

    def eval_before(self) -> dict[str, Any] | None:
        """What the eval line before training held (``eval``, and ``eval_heldout`` with --eval-prefs)."""
        line = next((r for r in self.kept if "eval" in r and r["step"] == 0), None)
        return None if line is None else {k: v for k, v in line.items() if k.startswith("eval")}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _parse(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None  # a line cut short by the kill
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _keep(record: dict[str, Any], resume_step: int) -> bool:
    if "eval" in record:
        return record["step"] == 0
    return record["step"] <= resume_step


@dataclass
class Session:
    """Everything a training step needs, built once by ``_start``."""

    cfg: TrainConfig
    accelerator: Accelerator
    adapter: VideoModelAdapter
    dataset: PreferenceDataset
    model: torch.nn.Module  # what the forwards call: the DDP / FSDP wrapper, or the module
    unwrapped: torch.nn.Module  # the transformer with its peft LoRA (a PeftHost)
    params: list[torch.nn.Parameter]
    trainable_names: frozenset[str]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: TimestepSampler
    run: dict[str, Any]  # the resolved settings a resume must not change (``run_settings``)
    geometry: tuple[int, int, int]  # (frames, height, width) of the training window
    heldout: PreferenceDataset | None = None  # --eval-prefs
    validation: ValidationSet | None = None  # --validation-prompts

    @property
    def sharded(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def evaluate(s: Session, dataset: PreferenceDataset | None = None) -> dict[str, Any]:
    """Loss and metrics of the mode on the first ``eval_pairs`` training pairs, or on every pair of
    ``dataset`` (the held-out set), with fixed per-pair noise and t
    (the same draws every call and for any number of processes): comparable before and after
    training. The pairs are split over the processes and their errors gathered, so every process
    returns the same numbers; every process runs the same number of equally shaped batches (the last
    one padded) because under FSDP each forward is a collective."""
    import torch
    from accelerate.utils import gather_object

    from trainer.data import collate
    from trainer.models import peft_host
    from trainer.step import dpo_loss, flow_errors, pair_noise

    cfg, acc = s.cfg, s.accelerator
    data = s.dataset if dataset is None else dataset
    count = min(cfg.eval_pairs, len(data)) if dataset is None else len(data)
    if count == 0:
        return {"pairs": 0}
    mine = list(range(acc.process_index, count, acc.num_processes))
    per_rank = math.ceil(count / acc.num_processes)
    padded = mine + [mine[-1] if mine else 0] * (per_rank - len(mine))
    was_training = s.unwrapped.training
    s.unwrapped.eval()
    local: list[tuple[int, list[torch.Tensor]]] = []
    for start in range(0, per_rank, cfg.batch_size):
        indices = padded[start : start + cfg.batch_size]
        batch = collate([data[i] for i in indices])
        noise, t = pair_noise(batch["latents_a"].shape[1:], cfg.seed, [(-1, i) for i in indices], s.sampler)
        dev = acc.device
        with torch.no_grad():
            errors = flow_errors(
                s.adapter, s.model, batch["latents_a"].to(dev), batch["latents_b"].to(dev), batch["text"].to(dev),
                noise, t, lora_owner=peft_host(s.unwrapped), autocast=acc.autocast,
            )  # fmt: skip
        for j, i in enumerate(indices[: max(0, len(mine) - start)]):
            rows = [e[j].cpu() for e in errors] + [
                batch[k][j] for k in ("labels", "segment_ids", "video_label")
            ]
            local.append((i, rows))
    s.unwrapped.train(was_training)
    everything = sorted(gather_object(local) if acc.num_processes > 1 else local, key=lambda item: item[0])
    # One loss over every eval pair (not a mean of batch means): each labeled frame / pair counts once.
    columns = [torch.stack(col) for col in zip(*(rows for _, rows in everything), strict=True)]
    labels = dict(zip(("labels", "segment_ids", "video_label"), columns[4:], strict=True))
    errs = (columns[0], columns[1], columns[2], columns[3])
    out = dpo_loss(errs, labels, mode=cfg.mode, beta=cfg.beta, reduction=cfg.reduction)
    return {"loss": out.loss.item(), **out.metrics, "pairs": count}


def step_loss_terms(s: Session, step: int) -> int:
    """The loss terms (``losses.loss_terms``) of every pair optimizer step ``step`` reads, over all its
    micro-batches and processes: the same number on every process, computed from the labels alone."""
    from trainer.losses import loss_terms

    cfg, acc = s.cfg, s.accelerator
    per_step = acc.num_processes * cfg.grad_accum * cfg.batch_size
    n = len(s.dataset)
    items = [
        s.dataset.items[stream_index(n, cfg.seed, q)] for q in range(step * per_step, (step + 1) * per_step)
    ]
    return sum(
        loss_terms(it.labels, it.segment_ids, it.video_label, mode=cfg.mode, reduction=cfg.reduction)
        for it in items
    )


#: Metrics of ``preference_metrics`` that are means over its labeled entries: a step's value is their
#: mean over the step's labeled entries, so they are summed weighted by ``labeled`` and divided after.
_WEIGHTED = ("implicit_acc", "reward_margin", "rewards_chosen", "rewards_rejected")


def train_step(s: Session, step: int) -> dict[str, float]:
    """One optimizer step (``grad_accum`` micro-batches on every process); returns its metrics over
    the whole step (all micro-batches and processes).

    Every micro-batch's loss is the sum of its terms divided by the number of terms of the whole step
    (``step_loss_terms``), times ``processes * grad_accum`` to undo the means that ``accelerate``'s
    accumulation and DDP / FSDP gradient averaging take: the step's gradient is that of the mean over
    every term of the step, however the step's pairs are split over processes and micro-batches."""
    import torch

    from trainer.data import collate
    from trainer.models import peft_host
    from trainer.step import dpo_loss, flow_errors, pair_noise

    cfg, acc = s.cfg, s.accelerator
    rank, world, dev = acc.process_index, acc.num_processes, acc.device
    terms = step_loss_terms(s, step)
    sums: dict[str, float] = {"loss": 0.0, "labeled": 0.0, **dict.fromkeys(_WEIGHTED, 0.0)}
    fixed: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        positions = micro_batch_positions(
            step, micro=micro, rank=rank, world=world, grad_accum=cfg.grad_accum, batch_size=cfg.batch_size
        )
        batch = collate([s.dataset[stream_index(len(s.dataset), cfg.seed, q)] for q in positions])
        noise, t = pair_noise(batch["latents_a"].shape[1:], cfg.seed, [(q,) for q in positions], s.sampler)
        with acc.accumulate(s.model):
            errors = flow_errors(
                s.adapter, s.model, batch["latents_a"].to(dev), batch["latents_b"].to(dev), batch["text"].to(dev),
                noise, t, lora_owner=peft_host(s.unwrapped), autocast=acc.autocast,
            )  # fmt: skip
            out = dpo_loss(
                errors, batch, mode=cfg.mode, beta=cfg.beta, reduction=cfg.reduction, denominator=float(terms)
            )
            acc.backward(out.loss * (world * cfg.grad_accum))
            if acc.sync_gradients:
                fixed["grad_norm"] = float(acc.clip_grad_norm_(s.params, cfg.max_grad_norm))
                fixed["lr"] = float(s.scheduler.get_last_lr()[0])
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
        sums["loss"] += out.loss.item()
        sums["labeled"] += out.metrics["labeled"]
        for key in _WEIGHTED:
            sums[key] += out.metrics[key] * out.metrics["labeled"]
    s.scheduler.step()
    if world > 1:  # sums over the processes (grad_norm and lr are already the same on all)
        keys = sorted(sums)
        total = acc.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=dev), "sum")
        sums = dict(zip(keys, total.tolist(), strict=True))
    metrics = {"loss": sums["loss"], **{k: sums[k] / max(sums["labeled"], 1.0) for k in _WEIGHTED}}
    metrics |= {"labeled": sums["labeled"], "loss_terms": float(terms), **fixed}
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(f"step {step + 1}: loss is {metrics['loss']}; lower --lr or use fp32")
    return metrics


def _trackers(report_to: str) -> list[str]:
    import importlib.util

    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [name.strip() for name in report_to.split(",") if name.strip()]


def _load_data(
    cfg: TrainConfig, acc: Accelerator, adapter: VideoModelAdapter, out_dir: Path, progress: bool, prefs: str
) -> tuple[PreferenceDataset, dict[str, int]]:
    """Select the pairs of ``prefs`` inside the training window and encode them (main process first,
    the others then read its cache)."""
    from trainer.config import ConfigError
    from trainer.data import SKIP_REASONS, DataError, Geometry, build_dataset, select_pairs

    geometry = Geometry(
        cfg.num_frames or adapter.num_frames, cfg.height or adapter.height, cfg.width or adapter.width
    )
    try:
        adapter.check_geometry(geometry.num_frames, geometry.height, geometry.width)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    records, skipped = select_pairs(
        prefs, num_frames=geometry.num_frames, temporal_compression=adapter.temporal_compression,
        min_nontie_fraction=cfg.min_nontie_fraction, mode=cfg.mode,
    )  # fmt: skip
    acc.print(f"training window: first {geometry.num_frames} frames at {geometry.height}x{geometry.width}")
    acc.print(f"{prefs}: {len(records)} pairs used, skipped {dict(skipped) or 'none'}")
    for reason, n in sorted(skipped.items()):
        acc.print(f"  {n} skipped: {SKIP_REASONS[reason]}")
    if not records:
        raise DataError(f"{prefs}: no pair left to train on (skipped {dict(skipped)})")
    with acc.main_process_first():
        dataset = build_dataset(
            records, adapter, geometry, cfg.cache_dir or out_dir / "cache", cfg.video_root or Path(prefs).parent,
            progress=progress and acc.is_local_main_process,
        )  # fmt: skip
    counts = dataset.label_counts()
    acc.print(f"latent frames by label: {counts}")
    if counts["masked_straddling"]:
        total = sum(len(item.labels) for item in dataset.items)
        acc.print(
            f"  {counts['masked_straddling']} of {total} latent frames masked: they straddle segments with different "
            f"labels (label with `labeler.batch --align-to-latent {adapter.temporal_compression}` to put every "
            "segment boundary on a latent frame's first frame)"
        )
    return dataset, dict(skipped)


def run_settings(
    cfg: TrainConfig, adapter: VideoModelAdapter, sampler: TimestepSampler, targets: list[str]
) -> dict[str, Any]:
    """The settings that shape what a run trains, resolved (defaults filled in from the model), as
    checkpoints record them: a resume that changes one would mix two runs in one LoRA and one log."""
    return {
        "model": cfg.model,
        "mode": cfg.mode,
        "reduction": cfg.reduction,
        "beta": cfg.beta,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha or cfg.lora_rank,
        "lora_targets": sorted(targets),
        "num_frames": cfg.num_frames or adapter.num_frames,
        "height": cfg.height or adapter.height,
        "width": cfg.width or adapter.width,
        "seed": cfg.seed,
        "timestep_sampling": sampler.kind,
        "timestep_shift": sampler.shift,
    }


def _print_batch(cfg: TrainConfig, acc: Accelerator, pairs: int) -> None:
    """Say how many processes run and what one optimizer step reads; warn when that is more than the data."""
    world = acc.num_processes
    global_batch = world * cfg.grad_accum * cfg.batch_size
    acc.print(
        f"processes: {world}, global batch: {global_batch} pairs per step "
        f"({world} processes x grad_accum {cfg.grad_accum} x batch_size {cfg.batch_size})"
    )
    if global_batch > pairs:
        acc.print(
            f"warning: the global batch ({global_batch} pairs) is larger than the data ({pairs} pairs): every step "
            "reads some pairs twice (with other noise); lower --batch-size / --grad-accum or the process count"
        )


def _renders_here(acc: Accelerator) -> bool:
    """Validation videos are rendered by the main process alone, except under FSDP / DeepSpeed, where
    every forward is a collective and every process takes part."""
    from accelerate.utils import DistributedType

    return acc.is_main_process or acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _validation_set(cfg: TrainConfig, acc: Accelerator, adapter: VideoModelAdapter) -> ValidationSet | None:
    """The validation prompts embedded (by the processes that render) while the text encoder is loaded."""
    from trainer.validation import ValidationSet, read_validation_prompts

    if not cfg.validation_prompts:
        return None
    prompts = read_validation_prompts(cfg.validation_prompts)
    if not _renders_here(acc):
        return ValidationSet(prompts, [], None, cfg.seed, 0)
    return ValidationSet.build(prompts, adapter, cfg.seed, cfg.validation_inference_steps)


def _validate(s: Session, out_dir: Path, step: int, log: TrainLog) -> None:
    """Render the validation prompts at ``step`` (step 0: the base model, LoRA off), write and log them."""
    from trainer.models import peft_host
    from trainer.validation import describe, log_to_trackers, render

    acc = s.accelerator
    if s.validation is None:
        return
    if _renders_here(acc):
        model = s.unwrapped if not s.sharded else s.model  # DDP: the main process alone, no collective
        rendered = render(
            s.validation, s.adapter, model, s.geometry, out_dir / "validation" / f"step-{step}",
            base=peft_host(s.unwrapped) if step == 0 else None, write=acc.is_main_process,
        )  # fmt: skip
        if acc.is_main_process:
            log.write({"step": step, "validation": describe(rendered, out_dir)})
            log_to_trackers(acc, rendered, step)
    acc.wait_for_everyone()


def _start(cfg: TrainConfig, out_dir: Path, progress: bool) -> tuple[Session, dict[str, int]]:
    """Accelerator, data, frozen base + LoRA, optimizer and warm-up-then-constant LR."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, set_seed

    from trainer.models import load_adapter, peft_host
    from trainer.step import TimestepSampler

    handlers = []
    if cfg.process_group_timeout is not None:
        handlers.append(InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.process_group_timeout)))
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # several processes on a CPU-only machine: gloo
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=_trackers(cfg.report_to) or None,
        project_dir=str(out_dir),
        kwargs_handlers=handlers,
    )
    set_seed(cfg.seed)
    adapter = load_adapter(cfg.model, device=accelerator.device)
    sampler = TimestepSampler.resolve(
        cfg.timestep_sampling,
        cfg.timestep_shift,
        adapter.train_timestep_sampling,
        adapter.train_timestep_shift,
    )
    dataset, skipped = _load_data(cfg, accelerator, adapter, out_dir, progress, cfg.prefs)
    _print_batch(cfg, accelerator, len(dataset))
    heldout = (
        _load_data(cfg, accelerator, adapter, out_dir, progress, cfg.eval_prefs)[0]
        if cfg.eval_prefs
        else None
    )
    geometry = (
        cfg.num_frames or adapter.num_frames,
        cfg.height or adapter.height,
        cfg.width or adapter.width,
    )
    validation = _validation_set(cfg, accelerator, adapter)
    adapter.release(keep_vae=validation is not None)
    weights_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.weights_dtype]
    transformer = adapter.load_transformer(weights_dtype)
    targets = cfg.lora_targets.split(",") if cfg.lora_targets else list(adapter.lora_targets)
    params = add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, targets, cfg.seed)
    names = frozenset(n for n, p in transformer.named_parameters() if p.requires_grad)
    if cfg.gradient_checkpointing:
        peft_host(transformer).enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup
    # (step + 1) / warmup: the first step already moves (a 0 LR first step would be wasted work).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    model, optimizer = accelerator.prepare(transformer, optimizer)
    # Under FSDP the optimizer now holds the sharded parameters: clip those.
    params = [p for group in optimizer.param_groups for p in group["params"]]
    session = Session(
        cfg, accelerator, adapter, dataset, model, accelerator.unwrap_model(model), params, names,
        optimizer, scheduler, sampler, run_settings(cfg, adapter, sampler, targets), geometry, heldout, validation,
    )  # fmt: skip
    accelerator.print(f"timesteps: {sampler.kind}, shift {sampler.shift:g}")
    return session, skipped


def _resume(s: Session, out_dir: Path) -> tuple[int, dict[str, tuple[Any, Any]]]:
    """(step to continue from, the settings changed since the checkpoint when allowed)."""
    from trainer.checkpoint import (
        CheckpointError,
        latest_checkpoint,
        load_checkpoint,
        read_state,
        run_changes,
    )
    from trainer.config import ConfigError

    if not s.cfg.resume or not (ckpt := latest_checkpoint(out_dir)):
        return 0, {}
    if s.sharded:
        raise CheckpointError(f"{ckpt}: resuming a sharded (FSDP / DeepSpeed) run is not supported")
    changes = run_changes(read_state(ckpt).get("run"), s.run)
    if changes and not s.cfg.resume_changed_config:
        listed = "; ".join(
            f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changes.items()
        )
        raise ConfigError(
            f"{ckpt}: --resume with changed settings ({listed}); resuming would mix two runs in one LoRA "
            "and one log. Use the checkpoint's settings, another --output-dir, or --resume-changed-config "
            "to continue anyway (the changes are then written into log.jsonl)"
        )
    step = int(load_checkpoint(ckpt, s.unwrapped, s.optimizer, s.scheduler)["step"])
    s.accelerator.print(f"resumed from {ckpt} at step {step}")
    for key, (old, new) in changes.items():
        s.accelerator.print(f"warning: resumed with {key} changed from {old!r} to {new!r}")
    return step, changes


def _lora_state(s: Session) -> dict[str, torch.Tensor]:
    """The LoRA weights by parameter name, whole on the main process. Every process must call it:
    under FSDP ``get_state_dict`` gathers the shards."""
    state = s.accelerator.get_state_dict(s.model)
    return {k: v for k, v in state.items() if k in s.trainable_names} if s.accelerator.is_main_process else {}


def _save(s: Session, out_dir: Path, step: int) -> None:
    from trainer.checkpoint import save_checkpoint

    s.accelerator.wait_for_everyone()
    lora = _lora_state(s)
    if s.accelerator.is_main_process:
        optimizer_state = None if s.sharded else s.optimizer.state_dict()
        save_checkpoint(out_dir, step, lora, optimizer_state, s.scheduler, s.cfg.to_dict(),
                        keep=s.cfg.keep_checkpoints, run=s.run)  # fmt: skip
    s.accelerator.wait_for_everyone()


def _evaluations(s: Session) -> dict[str, Any]:
    """``eval`` (the first ``eval_pairs`` training pairs) and ``eval_heldout`` (--eval-prefs)."""
    out = {"eval": evaluate(s)}
    if s.heldout is not None:
        out["eval_heldout"] = evaluate(s, s.heldout)
    return out


def _after_step(
    s: Session, cfg: TrainConfig, out_dir: Path, log: TrainLog, bar: Any, last: dict[str, Any]
) -> None:
    """Log, validate and save after step ``last["step"]``, each at its own interval and after the
    last step."""
    done, final = last["step"], last["step"] == cfg.steps
    if done % cfg.log_every == 0 or final:
        log.write(last)
        s.accelerator.log({k: v for k, v in last.items() if k != "step"}, step=done)
        bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['implicit_acc']:.2f}", lr=f"{last['lr']:.2e}")
    every = cfg.validation_steps
    if (every and done % every == 0) or final:
        _validate(s, out_dir, done, log)
    if done % cfg.save_every == 0 or final:
        _save(s, out_dir, done)


def train(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the training described by ``cfg``; returns a summary (final step, last metrics, eval
    before/after, paths)."""
    from tqdm.auto import tqdm

    from trainer.validation import read_validation_prompts

    if cfg.validation_prompts:  # a bad prompt file is refused before any encoding
        read_validation_prompts(cfg.validation_prompts)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s, skipped = _start(cfg, out_dir, progress)
    acc = s.accelerator
    start_step, changed = _resume(s, out_dir)
    log = TrainLog(out_dir / "log.jsonl", enabled=acc.is_main_process, resume_step=start_step)
    if changed:  # --resume-changed-config: the log says where the settings changed, and how
        log.write({"step": start_step, "config_changed": {k: list(v) for k, v in changed.items()}})
    summary: dict[str, Any] = {
        "output_dir": str(out_dir), "pairs": len(s.dataset), "skipped": skipped,
        "latent_frames": s.dataset.label_counts(),
    }  # fmt: skip
    if acc.trackers:
        acc.init_trackers("densepref", config={k: v for k, v in cfg.to_dict().items() if v is not None})
    if (cfg.eval_pairs or s.heldout) and start_step == 0:
        before = _evaluations(s)
        log.write({"step": 0, **before})
    else:
        before = log.eval_before() or {}
    summary |= {f"{key}_before": value for key, value in before.items()}
    if start_step == 0:
        _validate(s, out_dir, 0, log)
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=f"{cfg.mode} DPO",
               disable=not (progress and acc.is_local_main_process))  # fmt: skip
    last: dict[str, Any] = {}
    for step in bar:
        tic = time.perf_counter()
        last = {"step": step + 1, **train_step(s, step), "step_time": time.perf_counter() - tic}
        _after_step(s, cfg, out_dir, log, bar, last)
    if cfg.eval_pairs or s.heldout:
        after = _evaluations(s)
        log.write({"step": cfg.steps, **after})
        summary |= {f"{key}_after": value for key, value in after.items()}
    lora = _lora_state(s)
    if acc.is_main_process:
        summary["lora_dir"] = str(s.adapter.save_lora(s.unwrapped, out_dir / "lora", state_dict=lora))
    log.close()
    acc.end_training()
    return summary | {"step": cfg.steps, "last": last}


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError
    from trainer.data import DataError
    from trainer.models import UnknownModelError

    try:
        cfg = parse_train_args(argv)
        summary = train(cfg)
    except (ConfigError, DataError, UnknownModelError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary, not one per process
        keys = ("step", "pairs", "skipped", "latent_frames", "eval_before", "eval_after", "eval_heldout_before",
                "eval_heldout_after", "lora_dir")  # fmt: skip
        print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
