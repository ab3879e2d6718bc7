"""labeler.judges.prompts: shipped templates, prompt ids, both image layouts, and the Jinja sandbox."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from labeler.judges.prompts import PromptTemplateError, available_prompts, load_prompt
from labeler.media.images import side_by_side
from labeler.schemas import SegmentRequest

SHIPPED = Path(__file__).resolve().parents[1] / "prompts"


def _request(k: int = 4, h: int = 12, w: int = 16, **kw) -> SegmentRequest:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (k, h, w, 3), dtype=np.uint8)
    second = rng.integers(0, 256, (k, h, w, 3), dtype=np.uint8)
    defaults = {
        "prompt": "a dog catches a frisbee",
        "start_s": 2.0,
        "end_s": 3.0,
        "index": 2,
        "num_segments": 5,
    }
    return SegmentRequest(frames_first=first, frames_second=second, **{**defaults, **kw})


def _images(messages: list[dict]) -> list[np.ndarray]:
    return [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]


def _texts(messages: list[dict], role: str = "user") -> list[str]:
    return [p["text"] for m in messages if m["role"] == role for p in m["content"] if p["type"] == "text"]


def test_shipped_templates_are_listed_and_load_by_name():
    names = available_prompts()
    assert {"conservative", "artifacts_motion_text"} <= set(names)
    for name in names:
        prompt = load_prompt(name)
        digest = hashlib.sha256((SHIPPED / f"{name}.j2").read_bytes()).hexdigest()[:8]
        assert prompt.name == name
        assert prompt.prompt_id == f"{name}@{digest}"


def test_unknown_name_lists_available_prompts():
    with pytest.raises(ValueError, match=r"unknown prompt 'nope'.*conservative"):
        load_prompt("nope")
    with pytest.raises(PromptTemplateError, match="does not exist"):
        load_prompt("/no/such/template.j2")


def test_prompt_id_changes_when_template_bytes_change(tmp_path):
    copy = tmp_path / "mine.j2"
    copy.write_bytes((SHIPPED / "conservative.j2").read_bytes())
    before = load_prompt(str(copy))
    assert before.name == "mine" and before.prompt_id.split("@")[1] == load_prompt().prompt_id.split("@")[1]
    copy.write_bytes(copy.read_bytes().replace(b"meticulous", b"careful"))
    after = load_prompt(str(copy))
    assert re.fullmatch(r"mine@[0-9a-f]{8}", after.prompt_id) and after.prompt_id != before.prompt_id


def test_separate_layout_shows_all_first_frames_then_all_second_with_captions():
    request = _request(k=3, frame_times=(2.1, 2.5, 2.9))
    messages = load_prompt("conservative").render(request, layout="separate")
    assert [m["role"] for m in messages] == ["system", "user"]
    images = _images(messages)
    assert len(images) == 6
    for i in range(3):
        assert np.array_equal(images[i], request.frames_first[i])
        assert np.array_equal(images[3 + i], request.frames_second[i])
    parts = messages[1]["content"]
    # Each image follows its caption.
    captions = [parts[j - 1]["text"] for j, p in enumerate(parts) if p["type"] == "image"]
    assert captions[0] == "Video A, frame 1 at 2.10 s" and captions[4] == "Video B, frame 2 at 2.50 s"
    intro, closing = parts[0]["text"], parts[-1]["text"]
    assert '"a dog catches a frisbee"' in intro and "segment 3 of 5" in intro and "2.00 s to 3.00 s" in intro
    assert "2.10 s, 2.50 s, 2.90 s" in intro
    assert '"label": "A" | "B" | "tie"' in closing and "conservative" in closing.lower()
    system = _texts(messages, "system")[0]
    assert "tie" in system and "structurally" in system


def test_side_by_side_layout_halves_the_images_and_puts_first_on_the_left():
    request = _request(k=4, w=16)
    messages = load_prompt("conservative").render(request, layout="side-by-side")
    images = _images(messages)
    assert len(images) == 4
    for i, image in enumerate(images):
        assert np.array_equal(image, side_by_side(request.frames_first[i], request.frames_second[i]))
    assert "left: Video A, right: Video B" in " ".join(_texts(messages))
    assert "Video A is on the left" in _texts(messages)[0]


def test_missing_frame_times_are_spread_over_the_segment():
    messages = load_prompt("conservative").render(_request(k=4, start_s=0.0, end_s=1.0))
    assert "0.12 s, 0.38 s, 0.62 s, 0.88 s" in _texts(messages)[0]


def test_reference_frames_are_not_shown():
    request = _request(k=2, reference=np.zeros((2, 12, 16, 3), np.uint8))
    assert len(_images(load_prompt("conservative").render(request))) == 4


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown layout"):
        load_prompt().render(_request(), layout="grid")  # type: ignore[arg-type]


def test_motion_text_template_asks_about_motion_and_prompt_alignment():
    text = " ".join(_texts(load_prompt("artifacts_motion_text").render(_request())))
    assert "Motion quality" in text and "Text alignment" in text


def test_reask_quotes_the_error_and_the_format():
    message = load_prompt().reask('"label" is "maybe"')
    assert '"label" is "maybe"' in message and '"label": "A" | "B" | "tie"' in message


def _variant(tmp_path: Path, system_body: str, name: str = "variant.j2") -> Path:
    source = (SHIPPED / "conservative.j2").read_text()
    path = tmp_path / name
    path.write_text(source.replace("{% block system -%}", "{% block system -%}" + system_body, 1))
    return path


@pytest.mark.parametrize(
    "unsafe",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ prompt.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
    ],
)
def test_sandbox_refuses_unsafe_template_code(tmp_path, unsafe):
    with pytest.raises(PromptTemplateError, match="tried an unsafe operation"):
        load_prompt(str(_variant(tmp_path, unsafe)))


def test_sandbox_limits_huge_ranges(tmp_path):
    with pytest.raises(PromptTemplateError, match="Range too big"):
        load_prompt(str(_variant(tmp_path, "{% for i in range(10**9) %}{% endfor %}")))


def test_template_errors_name_the_file(tmp_path):
    with pytest.raises(PromptTemplateError, match=r"variant\.j2 fails to render.*undefined"):
        load_prompt(str(_variant(tmp_path, "{{ no_such_variable }}")))
    with pytest.raises(PromptTemplateError, match="does not compile"):
        load_prompt(str(_variant(tmp_path, "{% if %}")))
    lacking = tmp_path / "lacking.j2"
    lacking.write_text("{% block system %}s{% endblock %}{% block user %}u{% endblock %}")
    with pytest.raises(PromptTemplateError, match=r"lacks block.*caption, reask"):
        load_prompt(str(lacking))
