"""The torch-free parts of the ``hf`` judge (labeler.judges.hf_local): which tokens spell the
labels, the JSON text written around the model's rationale, and the identity of a checkpoint
folder for the cache key. Kept apart so they import nothing heavy and are tested on their own.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeler.schemas import FatalJudgeError

__all__ = [
    "AFTER_RATIONALE",
    "LABELS",
    "LABEL_PREFIX",
    "RATIONALE_PREFIX",
    "LabelTokens",
    "checkpoint_identity",
    "is_local_path",
    "json_string_body",
    "json_unescape",
    "resolve_label_tokens",
]

LABELS = ("A", "B", "tie")
#: The answer start written for the model when it gives no rationale: the next token is the label.
LABEL_PREFIX = '{"label": "'
#: The answer start when the model writes a rationale first (the prompt's own key order).
RATIONALE_PREFIX = '{"rationale": "'
#: What closes the rationale string and opens the label value, after a generated rationale.
AFTER_RATIONALE = '", "label": "'
# Files up to this size are content-hashed for the fingerprint; bigger ones (weight shards) are
# identified by size and mtime, since hashing gigabytes at every start would be too slow.
_HASH_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class LabelTokens:
    """Where to score and which token stands for each label.

    ``text`` is the prompt to run (possibly a few characters shorter than asked, see
    ``resolve_label_tokens``); ``ids`` are the token ids of "A", "B", "tie" at the next position;
    ``last_id`` is the token ``text`` ends with (to check the processor tokenized it the same way).
    """

    text: str
    ids: tuple[int, int, int]
    last_id: int


def resolve_label_tokens(tokenizer: Any, text: str, *, max_backoff: int = 4) -> LabelTokens:
    """Find the next-token ids that spell each label right after ``text``.

    ``text`` ends where the label value starts (after its opening quote). Usually tokenizing
    ``text + label`` just appends the label's first token. Some tokenizers merge the label with
    the characters before it (``"A`` as one token); then ``text`` is cut back a character at a
    time (at most ``max_backoff``) until every label's tokenization extends the cut text's
    tokenization by a token that differs between the labels, and those tokens are scored at the
    cut. Multi-token labels ("tie" as "t"+"ie") are scored by their first token.
    """

    def encode(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"])

    tried: list[str] = []
    for back in range(0, max_backoff + 1):
        cut = len(text) - back
        if cut <= 0:
            break
        base = encode(text[:cut])
        firsts: list[int] = []
        for label in LABELS:
            ids = encode(text + label)
            if len(ids) <= len(base) or ids[: len(base)] != base:
                break
            firsts.append(ids[len(base)])
        else:
            if len(set(firsts)) == len(LABELS):
                return LabelTokens(text[:cut], (firsts[0], firsts[1], firsts[2]), base[-1])
        tried.append(repr(text[max(0, cut - 12) : cut]))
    raise FatalJudgeError(
        "the tokenizer gives the labels A, B, tie no distinct single next token after the answer prefix "
        f"(tried text ending in {', '.join(tried)}); this model cannot be scored from logits"
    )


def is_local_path(model: str) -> bool:
    """A path (rather than a hub id like ``org/name``): it exists, or it can only be a path."""
    if Path(model).expanduser().exists():
        return True
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def checkpoint_identity(directory: Path) -> str:
    """A hash of a checkpoint folder's files: contents of small files (config, tokenizer, chat
    template, small weights), size + mtime of big ones. Any change to the weights or to what the
    processor does changes it, so the cache never serves answers of a different model."""
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix == ".md" or not path.is_file():
            continue
        stat = path.stat()
        h.update(f"{path.name}\0{stat.st_size}\0".encode())
        if stat.st_size <= _HASH_LIMIT:
            with path.open("rb") as fh:
                for block in iter(functools.partial(fh.read, 1 << 20), b""):
                    h.update(block)
        else:
            h.update(str(stat.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def json_unescape(fragment: str) -> str:
    """The text of a JSON string body the model wrote (``\\n`` -> newline), verbatim if invalid."""
    try:
        value = json.loads(f'"{fragment}"')
    except json.JSONDecodeError:
        return fragment
    return value if isinstance(value, str) else fragment


def json_string_body(generated: str) -> str:
    """The generated text up to the first unescaped double quote (the end of the JSON string)."""
    escaped = False
    for i, ch in enumerate(generated):
        if ch == '"' and not escaped:
            return generated[:i]
        escaped = ch == "\\" and not escaped
    # Cut short (token limit, or a stop on an escaped quote): drop a dangling escape character,
    # or it would escape the quote the judge appends to close the string.
    return generated[:-1] if escaped else generated
