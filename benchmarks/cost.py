"""Question 3: what does a label cost?

The engine builds the real requests for a demo segment (``engine.plan_pair`` -> ``decode_segments`` ->
``segment_request`` in both orders) and the ``openai`` judge turns them into the exact chat bodies it
would send (``build_body``: JPEG data URIs, prompt text, sampling parameters). Images and input
tokens are counted from those bodies with ``labeler.judges.pricing.chat_input_tokens`` (OpenAI's published
image-token rules, per model; the stand-in server bills the same way); output tokens are the judge's
own estimate of an answer, plus the reasoning a reasoning model is assumed to spend. Prices come
from ``labeler.judges.models_table`` — a dated, sourced table to edit when prices change — with
its Batch API discount. At ``detail: low`` the side-by-side composite is fitted to 512 px and
stacked top-bottom when that keeps more pixels per video (labeler.judges.composite).

Two frame geometries: the demo clips as they are (320x180), and a Wan 480p clip (832x480, the
common size of generated videos) resized by the engine to its default ``max_side`` 448.
Dense labeling of a pair of 5 s videos at 1 s segments costs 5 segment pairs; labeling the same pair
at video level costs one request per order showing the same number of frames spread over the
whole video (the engine with ``segment_seconds`` = the video's length).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_common_args,
    default_work_dir,
    markdown_table,
    report_errors,
    result_envelope,
    video_manifest,
    write_result,
)

NAME = "cost"
MODELS = ("gpt-4o", "gpt-4o-mini", "o3")
LAYOUTS = ("separate", "side-by-side")
DETAILS = ("low", "high")
#: The 10k-pairs scenario of the issue: 10,000 pairs of 5 s videos at 1 s segments.
SCENARIO = {"pairs": 10_000, "video_seconds": 5.0, "segment_seconds": 1.0}
GEOMETRIES = {"demo 320x180": None, "480p 832x480": (480, 832)}
TABLE_GEOMETRY = "480p 832x480"


def _judge(model: str, layout: str, detail: str) -> Any:
    from labeler.judges.openai_api import OpenAIJudge

    # Never called: only build_body/estimate are used, which need no server and no key.
    return OpenAIJudge(model, base_url="http://127.0.0.1:9/v1", layout=layout, detail=detail)


def _rescale(frames: np.ndarray, size: tuple[int, int] | None, max_side: int) -> np.ndarray:
    """The frames as a clip of ``size`` (h, w) would reach the judge: scaled to that size, then
    resized by the engine's own rule (long side ``max_side``)."""
    from PIL import Image

    from labeler.media.video import resize_max_side

    if size is None:
        return frames
    h, w = size
    big = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR)) for f in frames])
    return resize_max_side(big, max_side)


def sample_requests(manifest: Path) -> dict[str, dict[str, list[Any]]]:
    """For each geometry: the requests of one segment pair ("segment", both orders) and of the same
    pair labeled at video level ("video", both orders), built by the engine from a demo pair."""
    from labeler.cache import JudgmentCache
    from labeler.engine import Engine, EngineConfig
    from labeler.schemas import read_manifest

    entry = read_manifest(manifest)[0]
    engine = Engine(_judge(MODELS[0], "separate", "low"), EngineConfig(), JudgmentCache(None))
    plan = engine.plan_pair(entry)
    whole = entry.model_copy(update={"segment_seconds": plan.num_frames / plan.fps})
    video_plan = engine.plan_pair(whole)
    if len(video_plan.segments) != 1:
        raise RuntimeError(f"video-level plan of {entry.pair_id} has {len(video_plan.segments)} segments")

    async def frames() -> tuple[dict[int, tuple], dict[int, tuple]]:
        return (
            await engine.decode_segments(plan, plan.segments[:1]),
            await engine.decode_segments(video_plan, video_plan.segments),
        )

    seg_frames, video_frames = asyncio.run(frames())
    out: dict[str, dict[str, list[Any]]] = {}
    for geometry, size in GEOMETRIES.items():
        out[geometry] = {}
        for kind, pair_plan, decoded in (("segment", plan, seg_frames), ("video", video_plan, video_frames)):
            seg = pair_plan.segments[0]
            fa, fb, _ = decoded[seg.index]
            fa, fb = _rescale(fa, size, engine.config.max_side), _rescale(fb, size, engine.config.max_side)
            out[geometry][kind] = [
                engine.segment_request(
                    entry.prompt, seg, (fa, fb, None), order, len(pair_plan.segments), plan.fps
                )
                for order in ("ab", "ba")
            ]
    return out


def measure(requests: list[Any], model: str, layout: str, detail: str) -> dict[str, Any]:
    """Images, input and output tokens and USD of a list of requests (one segment pair: both orders)."""
    from labeler.judges.pricing import chat_input_tokens, estimate_cost

    judge = _judge(model, layout, detail)
    images = input_tokens = output_tokens = 0
    width = height = 0
    for request in requests:
        body = judge.build_body(request)
        tokens, count = chat_input_tokens(body["messages"], model)
        images += count
        input_tokens += tokens
        output_tokens += judge.estimate(request).output_tokens
        shown = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
        first = next(p for p in shown if p["type"] == "image_url")
        from labeler.media.images import data_uri_bytes, image_size

        width, height = image_size(data_uri_bytes(first["image_url"]["url"]))
    usd = estimate_cost(model, input_tokens, output_tokens)
    batch = estimate_cost(model, input_tokens, output_tokens, batch=True)
    return {
        "model": model,
        "layout": layout,
        "detail": detail,
        "image_size": f"{width}x{height}",
        "images": images,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "usd": usd,
        "usd_batch": batch,
        "reasoning_tokens": judge.settings.expected_reasoning_tokens * len(requests),
        "reasoning_effort": judge.settings.effort,
    }


def run(*, quick: bool = False, manifest: Path | None = None, work: Path | None = None) -> dict[str, Any]:
    """Every (geometry, model, layout, detail): per segment pair, then the 10k-pairs scenario."""
    from labeler.judges.pricing import BATCH_DISCOUNT, PRICES, PRICES_AS_OF

    started = time.perf_counter()
    work = work or default_work_dir()
    source = video_manifest(manifest, work)
    requests = sample_requests(source)
    models = MODELS[:1] if quick else MODELS
    segments_per_pair = round(SCENARIO["video_seconds"] / SCENARIO["segment_seconds"])
    rows, scenario = [], []
    for geometry in GEOMETRIES:
        for model in models:
            for layout in LAYOUTS:
                for detail in DETAILS:
                    seg = measure(requests[geometry]["segment"], model, layout, detail)
                    vid = measure(requests[geometry]["video"], model, layout, detail)
                    rows.append({"geometry": geometry, **seg, "usd_per_1k_pairs": _times(seg["usd"], 1000)})
                    dense = _times(seg["usd"], SCENARIO["pairs"] * segments_per_pair)
                    video = _times(vid["usd"], SCENARIO["pairs"])
                    scenario.append(
                        {
                            "geometry": geometry, "model": model, "layout": layout, "detail": detail,
                            "requests_dense": SCENARIO["pairs"] * segments_per_pair * len(requests[geometry]["segment"]),
                            "requests_video": SCENARIO["pairs"] * len(requests[geometry]["video"]),
                            "dense_usd": dense, "dense_batch_usd": _times(seg["usd_batch"], SCENARIO["pairs"] * segments_per_pair),
                            "video_usd": video, "video_batch_usd": _times(vid["usd_batch"], SCENARIO["pairs"]),
                            "dense_over_video": round(dense / video, 2) if dense and video else None,
                        }
                    )  # fmt: skip
    result = result_envelope(
        NAME,
        {"models": list(models), "layouts": list(LAYOUTS), "details": list(DETAILS), "geometries": list(GEOMETRIES),
         "frames_per_segment": 8, "max_side": 448, "swap": True, "jpeg_quality": 90, "manifest": str(source),
         "scenario": SCENARIO, "output_tokens": "the judge's estimate of an answer (labeler.judges.openai_api)",
         "quick": quick},
    )  # fmt: skip
    result.update(
        {
            "prices_as_of": PRICES_AS_OF,
            "batch_discount": BATCH_DISCOUNT,
            "prices_usd_per_1m_tokens": {m: {"input": PRICES[m][0], "output": PRICES[m][1]} for m in models},
            "rows": rows,
            "scenario_rows": scenario,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return result


def _times(usd: float | None, n: float) -> float | None:
    return round(usd * n, 4) if usd is not None else None


def table(result: dict[str, Any]) -> str:
    geometry = TABLE_GEOMETRY if any(r["geometry"] == TABLE_GEOMETRY for r in result["rows"]) else None
    rows = [r for r in result["rows"] if geometry is None or r["geometry"] == geometry]
    per_pair = markdown_table(
        rows,
        [("model", "model", ""), ("layout", "layout", ""), ("detail", "detail", ""), ("image_size", "image", ""),
         ("images", "images", "d"), ("input_tokens", "input tokens", "d"), ("output_tokens", "output tokens", "d"),
         ("usd", "USD", ".5f"), ("usd_batch", "USD (Batch API)", ".5f")],
    )  # fmt: skip
    scenario = [r for r in result["scenario_rows"] if geometry is None or r["geometry"] == geometry]
    ten_k = markdown_table(
        scenario,
        [("model", "model", ""), ("layout", "layout", ""), ("detail", "detail", ""),
         ("dense_usd", "dense USD", ",.0f"), ("dense_batch_usd", "dense, Batch API", ",.0f"),
         ("video_usd", "video-level USD", ",.0f"), ("video_batch_usd", "video-level, Batch API", ",.0f"),
         ("dense_over_video", "dense / video", ".1f")],
    )  # fmt: skip
    s = result["settings"]["scenario"]
    reasoning = sorted(
        {f"{r['model']} (effort {r['reasoning_effort']})" for r in rows if r.get("reasoning_tokens")}
    )
    if reasoning:
        per_pair += (
            f"\n\n{', '.join(reasoning)}: output tokens include the hidden reasoning a dry run assumes "
            "(labeler.judges.models_table.EXPECTED_REASONING_TOKENS), billed as output; the real amount varies."
        )
    return (
        f"Per segment pair (both orders), {geometry or 'all geometries'} frames, prices as of "
        f"{result['prices_as_of']}:\n\n{per_pair}\n\n"
        f"Labeling {s['pairs']:,} pairs of {s['video_seconds']:g} s videos at {s['segment_seconds']:g} s segments:\n\n"
        f"{ten_k}"
    )


@report_errors
def main(argv: list[str] | None = None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    result = run(quick=args.quick, manifest=args.manifest, work=args.work)
    print(table(result))
    print(f"-> {write_result(args.out, NAME, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
