"""Batch API input files: one line per uncached (segment, order) request, split so each file stays
within OpenAI's per-batch limits and the enqueued-token budget, and cut short where a budget ends.

The same JSONL is what ``vllm run-batch -i FILE -o OUT --model M`` reads (docs/endpoints.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from labeler.engine import Engine
from labeler.judges.pricing import chat_input_tokens
from labeler.schemas import ManifestEntry

log = logging.getLogger(__name__)

#: OpenAI's limits per batch: 50,000 requests and a 200 MB input file.
MAX_LINES_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 2**20


@dataclass
class BatchFile:
    """One Batch API input file and where its batch stands (saved in the job's state file)."""

    path: str
    requests: int = 0  # lines
    bytes: int = 0
    tokens: int = 0  # enqueued input tokens
    batch_id: str | None = None  # set once submitted; None again when resubmitted later
    collected: bool = False  # its answers are in the cache
    status: str | None = None  # the batch's final status, once collected
    resubmits: int = 0  # times refused for the enqueued-token limit and submitted again
    round: int = 0  # 0: the first submission; k: lines of an earlier batch that got no answer
    splits: int = 0  # times halved: a part of a file over the enqueued-token limit on its own

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchFile:
        """Read a saved entry; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class SubmissionBudget:
    """What may still be submitted: requests and USD (None: unlimited). A line is submitted only if
    its worst case (input tokens plus the full completion budget, at Batch API price) still fits."""

    requests: int | None = None
    cost_usd: float | None = None
    capped: int = 0  # lines left out because a budget ended

    @classmethod
    def of(cls, engine: Engine) -> SubmissionBudget:
        """What the engine's ledger still allows."""
        return cls(*engine.ledger.left())

    def take(self, cost: float | None) -> bool:
        if (self.requests is not None and self.requests < 1) or (
            self.cost_usd is not None and (cost is None or cost > self.cost_usd)
        ):
            self.capped += 1
            return False
        if self.requests is not None:
            self.requests -= 1
        if self.cost_usd is not None and cost is not None:
            self.cost_usd -= cost
        return True


def line_tokens(body: dict[str, Any]) -> tuple[int, int]:
    """(input tokens, completion token budget) of one request body, as the Batch API enqueues it."""
    input_tokens = chat_input_tokens(body["messages"], str(body["model"]))[0]
    return input_tokens, int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)


class _Splitter:
    """Appends lines to numbered files, starting a new one at any limit."""

    def __init__(self, stem: Path, max_lines: int, max_bytes: int, max_tokens: int | None) -> None:
        self.stem, self.max_lines, self.max_bytes, self.max_tokens = stem, max_lines, max_bytes, max_tokens
        self.files: list[BatchFile] = []
        self._fh: IO[str] | None = None

    def _full(self, current: BatchFile, size: int, tokens: int) -> bool:
        if not current.requests:
            return False
        return (
            current.requests >= self.max_lines
            or current.bytes + size > self.max_bytes
            or (self.max_tokens is not None and current.tokens + tokens > self.max_tokens)
        )

    def add(self, text: str, tokens: int) -> None:
        current = self.files[-1] if self.files else None
        if current is None or self._fh is None or self._full(current, len(text), tokens):
            self.close()
            path = self.stem.with_name(f"{self.stem.name}.input-{len(self.files):03d}.jsonl")
            current = BatchFile(str(path))
            self.files.append(current)
            self._fh = path.open("w", encoding="utf-8")
        self._fh.write(text)
        current.requests += 1
        current.bytes += len(text)
        current.tokens += tokens

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def write_batch_files(
    entries: list[ManifestEntry],
    engine: Engine,
    stem: Path,
    *,
    max_lines: int = MAX_LINES_PER_BATCH,
    max_bytes: int = MAX_BYTES_PER_BATCH,
    max_tokens: int | None = None,
    budget: SubmissionBudget | None = None,
) -> list[BatchFile]:
    """Stream one Batch API line per uncached (segment, order) into input files of at most
    ``max_lines`` lines, ``max_bytes`` bytes and ``max_tokens`` enqueued input tokens
    (``custom_id`` = cache key), up to what ``budget`` allows. Pairs that cannot be planned, and
    lines past the budget, are left to the online run. Frames are decoded ``decode_window``
    segments at a time (``Engine.pending_requests``), so memory stays bounded on long videos."""

    def skipped(entry: ManifestEntry, exc: Exception) -> None:
        log.warning("%s: skipped in the batch (%s)", entry.pair_id, exc)

    budget = budget or SubmissionBudget()
    splitter = _Splitter(stem, max_lines, max_bytes, max_tokens)
    try:
        async for pending in engine.pending_requests(entries, skipped=skipped):
            body = engine.judge.build_body(pending.request)
            tokens, completion = line_tokens(body)
            if not budget.take(engine.ledger.price(tokens, completion, batch=True)):
                continue
            line = {"custom_id": pending.key, "method": "POST", "url": "/v1/chat/completions", "body": body}
            splitter.add(json.dumps(line, separators=(",", ":")) + "\n", tokens)
    finally:
        splitter.close()
    return splitter.files
