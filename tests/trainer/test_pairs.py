"""Guided pair generation: the schedule, the shared-eta Euler denoising, inputs, outputs, resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from labeler.schemas import read_manifest
from tests.conftest import textured_frames
from trainer.media import read_video, write_video
from trainer.pairs import (
    PairGenerationError,
    _denoise,
    collect_videos,
    generate_pairs,
    guided_sigmas,
    load_prompts,
    main,
)


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
@pytest.mark.parametrize(("eta", "n"), [(0.65, 40), (0.72, 40), (0.8, 20), (0.7, 1)])
def test_guided_schedule_starts_at_eta_and_runs_round_eta_n_steps(shift, eta, n):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    unshifted, steps = guided_sigmas(shift, eta, n)
    scheduler.set_timesteps(sigmas=unshifted)
    sigmas = scheduler.sigmas.tolist()
    assert steps == max(1, round(eta * n))
    assert len(sigmas) == steps + 1  # the scheduler appends the terminal 0
    assert sigmas[0] == pytest.approx(eta, abs=1e-6)
    assert sigmas[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(sigmas))
    if shift == 1.0:  # no shift: evenly spaced from eta down to 0, like the tail of an N-step schedule
        assert sigmas == pytest.approx([eta * (1 - i / steps) for i in range(steps + 1)], abs=1e-6)


def test_guided_sigmas_rejects_bad_eta():
    with pytest.raises(PairGenerationError, match="eta"):
        guided_sigmas(3.0, 1.0, 40)


class _OracleAdapter:
    """Knows the true velocity noise - x0 of each side: Euler then lands on x0 exactly iff the
    schedule's first level equals the eta the starting point was noised to."""

    flow_shift = 3.0
    device = torch.device("cpu")

    def __init__(self, x0: torch.Tensor, noise: torch.Tensor):
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=self.flow_shift)
        self.velocity = noise - x0

    def predict_velocity(self, transformer, noisy, sigmas, text):
        return self.velocity


def test_shared_eta_euler_recovers_x0_with_the_exact_velocity():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 3, 2, 2, generator=gen)
    noise = torch.randn(2, 4, 3, 2, 2, generator=gen)  # independent noises of A and B
    eta = 0.73
    start = (1 - eta) * x0 + eta * noise
    out, used = _denoise(_OracleAdapter(x0, noise), None, start, eta, 40, torch.zeros(1, 2, 2), None, 1.0)
    assert used == round(0.73 * 40)
    assert torch.allclose(out, x0.expand(2, -1, -1, -1, -1), atol=1e-5)


def test_collect_videos_and_prompt_files(tmp_path, source_videos):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# sources\n{source_videos[1]}\n{source_videos[0]}\n")
    assert collect_videos([str(lst)]) == [source_videos[1], source_videos[0]]
    assert collect_videos([str(source_videos[0].parent)]) == sorted(source_videos)
    with pytest.raises(PairGenerationError, match="not a directory, video file or list"):
        collect_videos([str(tmp_path / "nothing")])
    per_line = tmp_path / "p.txt"
    per_line.write_text("first\nsecond\n")
    assert load_prompts(per_line, source_videos) == ["first", "second"]
    per_line.write_text("everyone\n")
    assert load_prompts(per_line, source_videos) == ["everyone", "everyone"]
    per_line.write_text("a\nb\nc\n")
    with pytest.raises(PairGenerationError, match="3 prompts for 2 videos"):
        load_prompts(per_line, source_videos)
    table = tmp_path / "p.jsonl"
    table.write_text(
        json.dumps({"video": "clip0.mp4", "prompt": "zero"})
        + "\n"
        + json.dumps({"video": "clip1", "prompt": "one"})
    )
    assert load_prompts(table, source_videos) == ["zero", "one"]
    table.write_text(json.dumps({"video": "clip0.mp4", "prompt": "zero"}))
    with pytest.raises(PairGenerationError, match=r"no prompt for video .*clip1"):
        load_prompts(table, source_videos)


def test_generated_pairs_are_aligned_videos_with_a_valid_manifest(tiny_pairs, source_videos):
    entries = read_manifest(tiny_pairs)
    assert [e.pair_id for e in entries] == ["clip0_0", "clip0_1", "clip1_0", "clip1_1"]
    for entry in entries:
        meta = entry.meta
        assert 0.65 <= meta["eta"] <= 0.8
        assert meta["steps"] == 20 and meta["denoise_steps"] == round(meta["eta"] * 20)
        assert entry.segment_seconds == 1.0 and entry.reference
        videos = {side: read_video(getattr(entry, side)) for side in ("video_a", "video_b", "reference")}
        for v in videos.values():
            assert v.frames.shape == (33, 64, 64, 3) and v.fps == pytest.approx(8.0)
        assert np.abs(videos["video_a"].frames.astype(int) - videos["video_b"].frames).mean() > 0.5
    raw = [json.loads(line) for line in tiny_pairs.read_text().splitlines()]
    assert raw[0]["video_a"] == "clips/clip0_0_a.mp4"  # relative to the manifest
    assert raw[0]["meta"]["eta"] != raw[1]["meta"]["eta"]  # each pair draws its own eta


def test_rerun_skips_done_pairs_and_the_same_seed_gives_the_same_pairs(tiny_pairs, source_videos, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a textured surface slides to the left\n")
    before = tiny_pairs.read_text()
    stamp = (tiny_pairs.parent / "clips" / "clip0_0_a.mp4").stat().st_mtime_ns
    manifest, failures = generate_pairs([str(source_videos[0])], str(prompts), "tiny", tiny_pairs.parent,
                                        pairs_per_video=2, progress=False)  # fmt: skip
    assert failures == [] and manifest.read_text() == before
    assert (tiny_pairs.parent / "clips" / "clip0_0_a.mp4").stat().st_mtime_ns == stamp
    again, _ = generate_pairs([str(source_videos[0])], str(prompts), "tiny", tmp_path / "again", pairs_per_video=2,
                              progress=False)  # fmt: skip
    first, second = read_manifest(tiny_pairs)[0], read_manifest(again)[0]
    assert second.meta["eta"] == first.meta["eta"]
    # Same eta and noises; decoded frames agree up to float reduction order and H.264 rounding.
    diff = np.abs(read_video(second.video_a).frames.astype(int) - read_video(first.video_a).frames)
    assert diff.mean() < 0.5


def test_a_too_short_video_fails_alone(tmp_path):
    short = write_video(tmp_path / "short.mp4", textured_frames(8, h=64, w=64), 8.0)
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    manifest, failures = generate_pairs([str(short)], str(prompts), "tiny", tmp_path / "out", progress=False)
    assert failures == [("short", failures[0][1])] and "too short" in failures[0][1]
    assert not manifest.exists() or manifest.read_text() == ""


def test_cli_reports_bad_inputs(tmp_path, source_videos, capsys):
    assert main(["--videos", str(source_videos[0]), "--prompts", str(tmp_path / "none.txt"), "--model", "tiny",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "prompts file" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    assert main(["--videos", str(source_videos[0]), "--prompts", str(prompts), "--model", "tiny", "--out",
                 str(tmp_path / "o"), "--eta-min", "0.9", "--eta-max", "0.8"]) == 2  # fmt: skip
    assert "eta_min" in capsys.readouterr().err
