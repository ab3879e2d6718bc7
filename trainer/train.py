"""DenseDPO / vanilla DPO LoRA training of a diffusers video model on dense preference labels.

    python -m trainer.train --prefs LABELS.jsonl --model MODEL_ID_OR_PATH --output-dir DIR \\
        [--mode dense|vanilla] [--beta 500] [--lora-rank 128] [--steps N] [--batch-size B] \\
        [--grad-accum K] [--lr 1e-5] [--warmup 250] [--seed S] [--config FILE.yaml|.toml] [--tiny]

One readable loop (nanoGPT style). Latents and text embeddings are computed once and cached
(``trainer.data``), then the VAE and text encoder are dropped. The policy is the transformer with a
peft LoRA; the reference is the same transformer with the LoRA switched off, so there is no second
copy of the weights. ``accelerate`` does mixed precision, gradient accumulation and multi-GPU.

Writes ``OUTPUT_DIR/log.jsonl`` (one line per logged step: step, loss, implicit_acc, reward_margin,
grad_norm, lr, step_time, and ``eval`` lines before and after training), ``checkpoint-<step>/``
(``--resume`` continues from the latest, bit-identically) and ``lora/`` (the final LoRA in diffusers
format: ``pipe.load_lora_weights(OUTPUT_DIR / "lora")``).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig, parse_train_args

__all__ = ["add_lora", "evaluate", "main", "train"]


def add_lora(transformer: Any, rank: int, alpha: float | None, targets: list[str], seed: int) -> list[Any]:
    """Freeze the transformer, add a LoRA (B = 0, so the policy starts equal to the reference) and
    return its parameters, kept in float32 whatever the base weights' dtype."""
    import torch
    from peft import LoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # LoRA A's init draws from the global RNG: seed it alone
        torch.manual_seed(seed)
        transformer.add_adapter(
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


def _batch_indices(n: int, seed: int, position: int, size: int) -> list[int]:
    """Items ``position .. position+size`` of an endless stream of seeded per-epoch permutations of
    ``range(n)``: the data order depends only on the seed and the position, so resume is exact."""
    return [_epoch_order(n, seed, q // n)[q % n] for q in range(position, position + size)]


def evaluate(
    adapter: Any, transformer: Any, dataset: Any, cfg: TrainConfig, *, device: Any, autocast: Any = None
) -> dict[str, float]:
    """Loss and metrics of ``cfg.mode`` on the first ``cfg.eval_pairs`` pairs with fixed noise and t
    (the same draws every call), batched like training: comparable before and after training."""
    import contextlib

    import torch

    from trainer.data import collate
    from trainer.step import dpo_loss, flow_errors, step_generator, step_noise

    count = min(cfg.eval_pairs, len(dataset))
    if count == 0:
        return {"pairs": 0}
    was_training = transformer.training
    transformer.eval()
    errors, batches = [], []
    for start in range(0, count, cfg.batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + cfg.batch_size, count))])
        noise, t = step_noise(batch["latents_a"].shape, step_generator(cfg.seed, -1, start))
        with torch.no_grad():
            errors.append(flow_errors(
                adapter, transformer, batch["latents_a"].to(device), batch["latents_b"].to(device),
                batch["text"].to(device), noise, t, autocast=autocast or contextlib.nullcontext,
            ))  # fmt: skip
        batches.append({k: batch[k] for k in ("labels", "segment_ids", "video_label")})
    transformer.train(was_training)
    # One loss over every eval pair (not a mean of batch means): each labeled frame / pair counts once.
    joined = tuple(torch.cat(parts) for parts in zip(*errors, strict=True))
    labels = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    out = dpo_loss(joined, labels, mode=cfg.mode, beta=cfg.beta, reduction=cfg.reduction)  # type: ignore[arg-type]
    return {"loss": out.loss.item(), **out.metrics, "pairs": count}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from (a killed run may have logged steps it
    never saved), so that the log reads like one uninterrupted run."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by the kill
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _trackers(report_to: str) -> list[str]:
    import importlib.util

    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [name.strip() for name in report_to.split(",") if name.strip()]


def train(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the training described by ``cfg``; returns a summary (final step, last metrics, eval
    before/after, paths)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from trainer.data import Geometry, build_dataset, collate, select_pairs
    from trainer.models import load_adapter
    from trainer.step import dpo_loss, flow_errors, step_generator, step_noise

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=_trackers(cfg.report_to) or None,
        project_dir=str(out_dir),
    )
    set_seed(cfg.seed)
    say = accelerator.print
    adapter = load_adapter(cfg.model, device=accelerator.device)
    geometry = Geometry(
        cfg.num_frames or adapter.num_frames, cfg.height or adapter.height, cfg.width or adapter.width
    )

    # ---- data: encode once (main process first, the others then read the cache), free the encoders
    records, skipped = select_pairs(cfg.prefs, min_nontie_fraction=cfg.min_nontie_fraction, mode=cfg.mode)
    say(f"pairs: {len(records)} used, skipped {dict(skipped) or 'none'}")
    with accelerator.main_process_first():
        dataset = build_dataset(
            records, adapter, geometry, cfg.cache_dir or out_dir / "cache", cfg.video_root or Path(cfg.prefs).parent,
            progress=progress and accelerator.is_local_main_process,
        )  # fmt: skip
    adapter.release()
    say(f"latent frames by label: {dataset.label_counts()}")

    # ---- model: frozen base + LoRA; optimizer; warm-up then constant LR
    weights_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.weights_dtype]
    transformer = adapter.load_transformer(weights_dtype)
    targets = cfg.lora_targets.split(",") if cfg.lora_targets else list(adapter.lora_targets)
    params = add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, targets, cfg.seed)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # (step + 1) / warmup: the first step already moves (a 0 LR first step would be wasted work).
    lr_lambda = lambda step: min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    start_step = 0
    if cfg.resume and (ckpt := latest_checkpoint(out_dir)):
        start_step = load_checkpoint(ckpt, unwrapped, optimizer, scheduler)["step"]
        say(f"resumed from {ckpt} at step {start_step}")
    summary: dict[str, Any] = {"output_dir": str(out_dir), "pairs": len(dataset), "skipped": dict(skipped)}
    log_path = out_dir / "log.jsonl"
    if start_step and accelerator.is_main_process and log_path.exists():
        _truncate_log(log_path, start_step)

    def log(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    if cfg.eval_pairs and start_step == 0:
        summary["eval_before"] = evaluate(adapter, unwrapped, dataset, cfg, device=accelerator.device,
                                          autocast=accelerator.autocast)  # fmt: skip
        log({"step": 0, "eval": summary["eval_before"]})
    if accelerator.trackers:
        accelerator.init_trackers(
            "densepref", config={k: v for k, v in cfg.to_dict().items() if v is not None}
        )

    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=f"{cfg.mode} DPO",
               disable=not (progress and accelerator.is_local_main_process))  # fmt: skip
    last: dict[str, Any] = {}
    for step in bar:
        tic = time.perf_counter()
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            position = ((step * cfg.grad_accum + micro) * world + rank) * cfg.batch_size
            batch = collate(
                [dataset[i] for i in _batch_indices(len(dataset), cfg.seed, position, cfg.batch_size)]
            )
            noise, t = step_noise(batch["latents_a"].shape, step_generator(cfg.seed, step, micro, rank))
            with accelerator.accumulate(model):
                dev = accelerator.device
                errors = flow_errors(
                    adapter, model, batch["latents_a"].to(dev), batch["latents_b"].to(dev), batch["text"].to(dev),
                    noise, t, reference_model=unwrapped, autocast=accelerator.autocast,
                )  # fmt: skip
                out = dpo_loss(errors, batch, mode=cfg.mode, beta=cfg.beta, reduction=cfg.reduction)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    sums["grad_norm"] = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
                    sums["lr"] = scheduler.get_last_lr()[0]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in {"loss": out.loss.item(), **out.metrics}.items():
                sums[key] = sums.get(key, 0.0) + value / cfg.grad_accum
        scheduler.step()
        if world > 1:  # average the logged numbers over processes
            keys = sorted(sums)
            mean = accelerator.reduce(
                torch.tensor([sums[k] for k in keys], device=accelerator.device), "mean"
            )
            sums = dict(zip(keys, mean.tolist(), strict=True))
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"step {step + 1}: loss is {sums['loss']}; lower --lr or use fp32")
        last = {"step": step + 1, **sums, "step_time": time.perf_counter() - tic}
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log(last)
            accelerator.log({k: v for k, v in last.items() if k != "step"}, step=step + 1)
            bar.set_postfix(
                loss=f"{last['loss']:.4f}", acc=f"{last['implicit_acc']:.2f}", lr=f"{last['lr']:.2e}"
            )
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(out_dir, step + 1, unwrapped, optimizer, scheduler, cfg.to_dict(),
                                keep=cfg.keep_checkpoints)  # fmt: skip

    accelerator.wait_for_everyone()
    if cfg.eval_pairs:
        summary["eval_after"] = evaluate(adapter, unwrapped, dataset, cfg, device=accelerator.device,
                                         autocast=accelerator.autocast)  # fmt: skip
        log({"step": cfg.steps, "eval": summary["eval_after"]})
    if accelerator.is_main_process:
        summary["lora_dir"] = str(adapter.save_lora(unwrapped, out_dir / "lora"))
    accelerator.end_training()
    return summary | {"step": cfg.steps, "last": last}


def main(argv: list[str] | None = None) -> int:
    from trainer.config import ConfigError
    from trainer.data import DataError

    try:
        cfg = parse_train_args(argv)
        summary = train(cfg)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("step", "pairs", "eval_before", "eval_after", "lora_dir")
                if k in summary
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
