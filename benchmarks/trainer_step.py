"""Question 5: does the dense loss cost more per training step than the vanilla one?

``trainer.steptime.measure_step_time`` builds the tiny random-weight Wan model with a LoRA, makes one
synthetic batch at its clip geometry (latents, text embeddings, per-latent-frame labels from 1 s
segments) and runs full training steps — policy forward, reference forward (LoRA off), loss,
backward, AdamW — for dense and vanilla DPO, interleaved step by step on the same batch so both see
the same machine load. Both losses use the same two forwards; only the reduction of the per-frame
errors differs, so the ratio should be ~1 (target <= 1.05).

On these shared CPUs a step's wall time swings with other processes' load, so torch runs on one
thread (``--threads``) and the ratio is given both of medians and of minima (the minimum is the
least disturbed run of each). Memory: on CUDA the peak allocated per mode; on the CPU the bytes
autograd saves for backward per mode (the activation memory, which is where the losses could
differ) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import add_common_args, markdown_table, report_errors, result_envelope, write_result

NAME = "trainer_step"
TARGET_RATIO = 1.05


def run(
    *, quick: bool = False, steps: int | None = None, warmup_steps: int | None = None, batch_size: int = 2,
    threads: int = 1, manifest: Path | None = None, work: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``manifest`` and ``work`` are accepted for a uniform interface; the trainer needs no videos."""
    import torch

    from trainer.steptime import measure_step_time

    steps = steps or (2 if quick else 40)
    warmup_steps = warmup_steps or (1 if quick else 3)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        measured = measure_step_time(steps=steps, warmup_steps=warmup_steps, batch_size=batch_size)
    finally:
        torch.set_num_threads(previous_threads)
    modes = measured["modes"]
    dense, vanilla = modes["dense"], modes["vanilla"]
    mb = 2**20
    result = result_envelope(
        NAME,
        {"model": measured["model"], "device": measured["device"], "steps_per_mode": steps,
         "warmup_steps": warmup_steps, "batch_size": batch_size, "threads": threads or previous_threads,
         "geometry": measured["geometry"], "latent_shape": measured["latent_shape"],
         "trainable_params": measured["trainable_params"], "interleaved": True, "quick": quick},
    )  # fmt: skip
    result.update(
        {
            "dense_over_vanilla": round(measured["dense_over_vanilla"], 4),
            "dense_over_vanilla_min": round(dense["step_time_min_s"] / vanilla["step_time_min_s"], 4),
            "dense_ms": round(dense["step_time_median_s"] * 1000, 3),
            "vanilla_ms": round(vanilla["step_time_median_s"] * 1000, 3),
            "dense_min_ms": round(dense["step_time_min_s"] * 1000, 3),
            "vanilla_min_ms": round(vanilla["step_time_min_s"] * 1000, 3),
            "dense_mean_ms": round(dense["step_time_mean_s"] * 1000, 3),
            "vanilla_mean_ms": round(vanilla["step_time_mean_s"] * 1000, 3),
            "peak_mb": {m: round(v["peak_memory_bytes"] / mb, 2) for m, v in modes.items()},
            "memory_kind": dense["memory_kind"],
            "activation_mb": {m: round(v["saved_activation_bytes"] / mb, 4) for m, v in modes.items()},
            "activation_dense_over_vanilla": round(
                dense["saved_activation_bytes"] / max(vanilla["saved_activation_bytes"], 1), 4
            ),
            "target_ratio": TARGET_RATIO,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        {"mode": mode, "median": result[f"{mode}_ms"], "min": result[f"{mode}_min_ms"],
         "mean": result[f"{mode}_mean_ms"], "peak": result["peak_mb"][mode], "act": result["activation_mb"][mode]}
        for mode in ("dense", "vanilla")
    ]  # fmt: skip
    rows.append(
        {"mode": "dense / vanilla", "median": result["dense_over_vanilla"], "min": result["dense_over_vanilla_min"],
         "act": result["activation_dense_over_vanilla"]}
    )  # fmt: skip
    peak = "peak MB (CUDA allocated)" if result["memory_kind"].startswith("cuda") else "peak RSS MB (process)"
    return markdown_table(
        rows,
        [("mode", f"tiny Wan, {result['settings']['device']}", ""), ("median", "median step ms", ".3f"),
         ("min", "min step ms", ".3f"), ("mean", "mean step ms", ".3f"), ("peak", peak, ".1f"),
         ("act", "saved activations MB", ".3f")],
    )  # fmt: skip


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 40)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, steps=args.steps, threads=args.threads)
    print(table(result))
    print(f"-> {write_result(args.out, NAME, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
