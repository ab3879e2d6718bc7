"""labeler.fileio: the one policy for atomic writes and JSONL that every writer and reader uses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labeler.fileio import (
    JsonlWriter,
    atomic_path,
    atomic_write_lines,
    iter_jsonl,
    read_lines,
    repair_jsonl_tail,
    split_lines,
)

SEPARATORS = "\u2028\u2029\u0085\x0b\x0c\x1c"  # str.splitlines splits on each of these


def test_jsonl_splits_on_newline_only() -> None:
    record = json.dumps({"prompt": f"a{SEPARATORS}b"}, ensure_ascii=False)
    assert len(record.splitlines()) > 1  # what the old readers did
    assert split_lines(record + "\n" + record + "\r\n") == [record, record]


def test_a_bom_is_dropped_and_a_bad_byte_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"b": \xff}\n{"c": 3}\n')
    lines = iter_jsonl(path)
    assert next(lines) == (1, '{"a": 1}')
    with pytest.raises(UnicodeDecodeError):
        next(lines)  # line 3; the caller records it against that line and goes on
    text_file = tmp_path / "lines.txt"
    text_file.write_bytes("\ufeffa\u2028b\nc\n".encode())
    assert read_lines(text_file) == ["a\u2028b", "c"]


def test_repair_drops_a_torn_tail_and_completes_a_whole_one(tmp_path: Path) -> None:
    torn, whole = tmp_path / "torn.jsonl", tmp_path / "whole.jsonl"
    torn.write_bytes(b'{"a": 1}\n{"b": ')
    whole.write_bytes(b'{"a": 1}\n{"b": 2}')
    repair_jsonl_tail(torn)
    repair_jsonl_tail(whole)
    repair_jsonl_tail(tmp_path / "missing.jsonl")  # nothing to repair is not an error
    assert torn.read_bytes() == b'{"a": 1}\n'
    assert whole.read_bytes() == b'{"a": 1}\n{"b": 2}\n'


def test_atomic_path_keeps_the_suffix_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".mp4" and tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def test_concurrent_writers_never_share_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "export.jsonl"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1\n")
        second.write_text("2\n")
    assert target.read_text() in ("1\n", "2\n")
    atomic_write_lines(target, ["x", "y"])
    assert target.read_text() == "x\ny\n"


def test_the_writer_refuses_a_raw_newline_and_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as writer:
        writer.write_json({"note": "a\u2028b"})
        with pytest.raises(ValueError, match="raw newline"):
            writer.write_line("a\nb")
    assert [json.loads(text)["note"] for _, text in iter_jsonl(path)] == ["a\u2028b"]
