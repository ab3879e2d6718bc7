"""The README as a newcomer reads it (#24 item 6): its install lines install this checkout's extras
(densepref is not on PyPI), and the curl examples name files the demo set it just built holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labeler.demo.build import build_demo

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _extras() -> set[str]:
    """The names of pyproject.toml's [project.optional-dependencies] (tomllib is 3.11+)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, flags=re.M))


def test_the_first_lines_keep_the_two_set_up_commands():
    blocks = _bash_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert blocks[0].strip() == "pip install -e . && python -m labeler.batch --demo demo_out/"
    assert blocks[1].strip().startswith("pip install torch==2.13.0 && pip install -e '.[dev]'")


def test_every_install_line_names_an_extra_of_this_checkout():
    extras = _extras()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "densepref[" not in text, (
            f"{doc.name}: densepref is not on PyPI; use pip install -e '.[extra]'"
        )
        for extra in re.findall(r"pip install -e '\.\[([\w,-]+)\]'", text):
            assert set(extra.split(",")) <= extras, (doc.name, extra)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for extra in ("train", "ray", "openai", "hf", "dev"):  # one install line for every extra a reader needs
        assert f"pip install -e '.[{extra}]'" in readme, extra


@pytest.mark.slow
def test_the_curl_examples_name_files_of_the_demo_set(tmp_path):
    demo = build_demo(tmp_path / "demo_out")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    curls = [b for b in _bash_blocks(readme) if "curl" in b and "video_a" in b]
    assert len(curls) >= 2
    named = {m for block in curls for m in re.findall(r'"(clips/[^"]+\.mp4)"', block)}
    assert named, "the by-path examples name no file"
    for name in named:
        assert (tmp_path / "demo_out" / name).is_file(), name
    pair_ids = {json.loads(line)["pair_id"] for line in demo.manifest.read_text().splitlines()}
    for block in curls:
        for pair_id in re.findall(r'"pair_id": "([^"]+)"', block):
            assert pair_id in pair_ids, pair_id
