"""Step time and peak memory of dense vs vanilla DPO on the same batch (for ``benchmarks/``).

``measure_step_time()`` builds the model once (LoRA on, like training), makes one synthetic batch
of latents, text embeddings and labels at the model's clip geometry, and runs full training steps
(policy forward + reference forward + loss + backward + AdamW step) for each mode, interleaved
step by step so that both modes see the same machine load. Dense and vanilla run the same two
forwards; only the reduction of the per-frame errors differs, so their times should match.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` per mode (reset before each); on the CPU, the
bytes autograd saves for backward in one step (the activation memory, which is what differs
between losses) and the process's peak resident set size.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trainer.losses import Reduction
    from trainer.models import VideoModelAdapter

__all__ = ["measure_step_time"]


def _synthetic_batch(
    adapter: VideoModelAdapter, batch_size: int, geometry: tuple[int, int, int], seed: int
) -> dict[str, Any]:
    import torch

    from trainer.latents import latent_frame_labels

    gen = torch.Generator().manual_seed(seed)
    frames, height, width = geometry
    f, h, w = adapter.latent_shape(frames, height, width)
    channels = adapter.latent_channels
    text_len, text_dim = adapter.text_shape
    # 1 s segments at the model's fps with random labels: straddling and tie frames get masked.
    seg_len = max(1, round(adapter.fps))
    labels, seg_ids = [], []
    for _ in range(batch_size):
        bounds = [*range(0, frames, seg_len), frames]
        segments = [
            (s, e, int(torch.randint(-1, 2, (), generator=gen))) for s, e in itertools.pairwise(bounds)
        ]
        mapped = latent_frame_labels(segments, f, adapter.temporal_compression, frames)
        labels.append(mapped.labels)
        seg_ids.append(mapped.segment_ids)
    return {
        "latents_a": torch.randn(batch_size, channels, f, h, w, generator=gen),
        "latents_b": torch.randn(batch_size, channels, f, h, w, generator=gen),
        "text": torch.randn(batch_size, text_len, text_dim, generator=gen),
        "labels": torch.tensor(labels),
        "segment_ids": torch.tensor(seg_ids),
        "video_label": torch.tensor([1 if i % 2 == 0 else -1 for i in range(batch_size)]),
    }


class _SavedBytes:
    """Counts the bytes autograd saves for backward (the activation memory of a step)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key not in self._seen:  # a storage saved twice is held once
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t


@dataclass
class _Bench:
    """One model with a LoRA, its optimizer and one synthetic batch: full training steps on demand."""

    adapter: VideoModelAdapter
    transformer: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    batch: dict[str, torch.Tensor]
    on_device: dict[str, torch.Tensor]
    beta: float
    reduction: Reduction
    seed: int

    @property
    def cuda(self) -> bool:
        return self.on_device["text"].device.type == "cuda"

    def step(self, mode: str, index: int, saved: _SavedBytes | None = None) -> float:
        """One timed step: policy and reference forwards, loss, backward, clipping, AdamW."""
        import torch

        from trainer.step import dpo_loss, flow_errors, step_generator, step_noise

        noise, t = step_noise(self.batch["latents_a"].shape, step_generator(self.seed, index))
        if self.cuda:
            torch.cuda.synchronize()
        tic = time.perf_counter()
        hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if saved else None
        with hooks or contextlib.nullcontext():
            errors = flow_errors(
                self.adapter, self.transformer, self.on_device["latents_a"], self.on_device["latents_b"],
                self.on_device["text"], noise, t,
            )  # fmt: skip
            loss = dpo_loss(errors, self.batch, mode=mode, beta=self.beta, reduction=self.reduction).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - tic


def _build_bench(
    model: str, device: str, geometry: tuple[int, int, int] | None, batch_size: int, lora_rank: int,
    weights_dtype: str, gradient_checkpointing: bool, beta: float, reduction: Reduction, seed: int,
) -> tuple[_Bench, tuple[int, int, int]]:  # fmt: skip
    import torch

    from trainer.models import load_adapter, peft_host
    from trainer.train import add_lora

    adapter = load_adapter(model, device=device)
    geometry = geometry or (adapter.num_frames, adapter.height, adapter.width)
    adapter.check_geometry(*geometry)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[weights_dtype]
    transformer = adapter.load_transformer(dtype)
    params = add_lora(transformer, lora_rank, None, list(adapter.lora_targets), seed)
    if gradient_checkpointing:
        peft_host(transformer).enable_gradient_checkpointing()
    transformer.train()
    batch = _synthetic_batch(adapter, batch_size, geometry, seed)
    on_device = {k: v.to(device) for k, v in batch.items() if k in ("latents_a", "latents_b", "text")}
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    bench = _Bench(adapter, transformer, params, optimizer, batch, on_device, beta, reduction, seed)
    return bench, geometry


def measure_step_time(
    modes: Sequence[str] = ("dense", "vanilla"),
    *,
    model: str = "tiny",
    steps: int = 10,
    warmup_steps: int = 2,
    batch_size: int = 2,
    lora_rank: int = 4,
    beta: float = 500.0,
    reduction: Reduction = "frame",
    geometry: tuple[int, int, int] | None = None,
    weights_dtype: str = "fp32",
    gradient_checkpointing: bool = False,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``steps`` training steps per mode (after ``warmup_steps`` untimed ones) on one batch.

    Returns ``{"device", "model", "batch_size", "latent_shape", "modes": {mode: {"step_time_mean_s",
    "step_time_median_s", "step_time_min_s", "peak_memory_bytes", "memory_kind",
    "saved_activation_bytes"}}, "dense_over_vanilla", "dense_over_vanilla_min"}`` (the ratios of the
    median and of the fastest step, only when both modes ran).
    ``geometry`` is (frames, height, width), default the model's preset.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bench, geometry = _build_bench(
        model, device, geometry, batch_size, lora_rank, weights_dtype, gradient_checkpointing, beta, reduction,
        seed,
    )  # fmt: skip
    times: dict[str, list[float]] = {m: [] for m in modes}
    peak: dict[str, int] = {}
    saved_bytes: dict[str, int] = {}
    for mode in modes:  # untimed warm-up, then one step per mode to measure its memory
        for i in range(warmup_steps):
            bench.step(mode, i)
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
        counter = _SavedBytes()
        bench.step(mode, warmup_steps, counter)
        saved_bytes[mode] = counter.total
        if bench.cuda:
            peak[mode] = int(torch.cuda.max_memory_allocated())
    for i in range(steps):  # interleaved: dense, vanilla, dense, vanilla...
        for mode in modes:
            times[mode].append(bench.step(mode, warmup_steps + 1 + i))
    return _summary(bench, model, batch_size, geometry, times, peak, saved_bytes)


def _summary(
    bench: _Bench, model: str, batch_size: int, geometry: tuple[int, int, int], times: dict[str, list[float]],
    peak: dict[str, int], saved_bytes: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if bench.cuda else "cpu",
        "model": model,
        "batch_size": batch_size,
        "geometry": list(geometry),
        "latent_shape": list(bench.batch["latents_a"].shape),
        "trainable_params": sum(p.numel() for p in bench.params),
        "process_peak_rss_bytes": rss,
        "modes": {
            m: {
                "step_time_mean_s": statistics.fmean(times[m]),
                "step_time_median_s": statistics.median(times[m]),
                "step_time_min_s": min(times[m]),
                "peak_memory_bytes": peak.get(m, rss),
                "memory_kind": "cuda_max_allocated" if bench.cuda else "process_peak_rss",
                "saved_activation_bytes": saved_bytes[m],
            }
            for m in times
        },
    }
    if "dense" in times and "vanilla" in times:
        # Median and best-of ratios: the best is the least disturbed by other load on the machine.
        result["dense_over_vanilla"] = statistics.median(times["dense"]) / statistics.median(times["vanilla"])
        result["dense_over_vanilla_min"] = min(times["dense"]) / min(times["vanilla"])
    return result
