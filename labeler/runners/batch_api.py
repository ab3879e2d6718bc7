"""``--openai-batch``: fill the judgment cache through the OpenAI Batch API (half price, up to 24 h).

Every uncached (segment, order) request of the manifest becomes one line of a Batch API input
file whose ``custom_id`` is the request's cache key; the answers are joined back by ``custom_id``
straight into the cache, costed at the Batch API's price. The ordinary run that follows then finds
every answer cached and writes the records; whatever the batch could not answer goes online there.

- Budgets cap what is submitted (openai_batch_files.SubmissionBudget): ``--max-requests`` lines,
  ``--max-cost`` at each line's worst case.
- ``--batch-max-tokens`` splits the files by enqueued input tokens (OpenAI limits the tokens a
  model may have enqueued) and submits the next file only when the unfinished ones leave room; a
  batch failed with ``token_limit_exceeded`` is submitted again later.
- Each batch id is saved beside the output as soon as it exists, and each collected file is marked,
  so a run killed while polling resumes the same batches instead of paying for them again.
- A server without the Files API (plain ``vllm serve``) is detected before anything is written:
  :class:`BatchApiUnavailable`, and nothing is left behind. Self-hosted models take the same JSONL
  offline with ``vllm run-batch`` (:func:`export_batch_files`; labeler.runners.batch_import reads the answers back).

The runner talks to the engine through its public API only: ``Engine.pending_requests`` for the
lines, ``Engine.record`` for each answer (cached and billed at the Batch API's price), and the
engine's ledger for the budgets and the requests submitted. It prints nothing: what a person
should see goes to ``progress`` (the CLI passes ``print``), the rest to logging.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler import jobfiles
from labeler.engine import Engine
from labeler.errors import BatchApiUnavailable
from labeler.fileio import atomic_write_json, split_lines
from labeler.runners.batch_api_files import (
    MAX_LINES_PER_BATCH,
    BatchFile,
    SubmissionBudget,
    write_batch_files,
)
from labeler.schemas import JudgeError, ManifestEntry, iter_manifest

log = logging.getLogger(__name__)
DONE_STATES = {"completed", "failed", "expired", "cancelled"}
#: Times a batch refused for the enqueued-token limit is submitted again before its lines go online.
MAX_RESUBMITS = 5


@dataclass
class BatchApiReport:
    requests: int = 0  # lines submitted
    answered: int = 0  # cached from the batch output
    unusable: int = 0  # failed or unparseable lines (left for the online run)
    capped: int = 0  # lines a budget kept out of the batch (left for the online run)
    batch_ids: list[str] = field(default_factory=list)
    status: str | None = None


#: Where the runner tells a person what it is doing (the CLI passes ``print``).
Progress = Callable[[str], None]


def _log_progress(message: str) -> None:
    log.info("%s", message)


@dataclass
class BatchJobState:
    """The job's files and the enqueued-token limit, saved beside the output after every change
    (``OUT.openai-batch.json``) so a killed run resumes the same batches."""

    files: list[BatchFile]
    max_tokens: int | None = None

    def save(self, path: Path) -> None:
        atomic_write_json(path, {"files": [f.as_dict() for f in self.files], "max_tokens": self.max_tokens})

    @classmethod
    def load(cls, path: Path) -> BatchJobState:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls([BatchFile.from_dict(f) for f in data["files"]], data.get("max_tokens"))


def state_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".openai-batch.json")


async def _submit(client: Any, item: BatchFile) -> str:
    with open(item.path, "rb") as fh:
        uploaded = await client.files.create(file=(Path(item.path).name, fh), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"source": "densepref"},
    )
    return batch.id


def _cache_output_lines(
    lines: Iterable[str], engine: Engine, report: BatchApiReport, *, billed: bool
) -> None:
    """Batch output lines (OpenAI's or ``vllm run-batch``'s, same format) into the cache."""
    for raw in lines:
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key = line["custom_id"]
            response = line.get("response") or {}
            if response.get("status_code") != 200:
                raise JudgeError(f"status {response.get('status_code')}: {line.get('error')}")
            judgment = engine.judge.parse_body(response["body"])
        except (ValueError, KeyError, TypeError, JudgeError) as exc:
            report.unusable += 1
            log.info("batch line left for the online run: %s", exc)
            continue
        if billed:
            engine.record(key, judgment, batch=True)  # the Batch API bills half price
        else:
            engine.cache.set(key, judgment)
        report.answered += 1


async def _collect(client: Any, batch: Any, engine: Engine, report: BatchApiReport) -> None:
    if not batch.output_file_id:
        return
    content = await client.files.content(batch.output_file_id)
    _cache_output_lines(split_lines(content.text), engine, report, billed=True)


def _token_limited(batch: Any) -> bool:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return batch.status == "failed" and any(
        getattr(e, "code", None) == "token_limit_exceeded" for e in errors
    )


async def _check_files_api(client: Any, base_url: str) -> None:
    import openai

    try:
        await client.files.list(limit=1)
    except openai.NotFoundError as exc:
        raise BatchApiUnavailable(
            f"{base_url} has no Files API (404), so --openai-batch cannot run there; a plain `vllm serve` "
            "has none. Run without --openai-batch, or label offline with `vllm run-batch` "
            "(--batch-export / --batch-import, docs/endpoints.md)."
        ) from exc
    except openai.APIStatusError as exc:
        raise BatchApiUnavailable(
            f"{base_url} refused the Files API ({exc.status_code}): {exc.message}"
        ) from exc
    except openai.APIConnectionError as exc:
        raise BatchApiUnavailable(f"cannot reach {base_url}: {exc}") from exc


@dataclass
class _Job:
    """What one run of the Batch API lifecycle works with."""

    client: Any
    state: BatchJobState
    state_path: Path
    engine: Engine
    report: BatchApiReport
    poll_seconds: float
    progress: Progress


async def _run_files(job: _Job) -> None:
    """Submit files while the enqueued-token budget allows, collect each as it finishes."""
    max_tokens = job.state.max_tokens
    items = job.state.files
    while True:
        inflight = [i for i in items if i.batch_id and not i.collected]
        enqueued = sum(i.tokens for i in inflight)
        for item in (i for i in items if not i.batch_id and not i.collected):
            if inflight and max_tokens is not None and enqueued + item.tokens > max_tokens:
                break
            item.batch_id = await _submit(job.client, item)
            job.state.save(job.state_path)  # saved at once: a restart polls it instead of paying again
            job.progress(
                f"submitted OpenAI batch {item.batch_id}: {item.requests} requests, ~{item.tokens} tokens"
            )
            inflight.append(item)
            enqueued += item.tokens
        if not inflight:
            return
        for item, batch in await _wait_any(job.client, inflight, job.poll_seconds):
            if _token_limited(batch) and item.resubmits < MAX_RESUBMITS:
                job.progress(f"batch {batch.id} hit the enqueued-token limit; submitting it again later")
                item.batch_id, item.resubmits = None, item.resubmits + 1
                await asyncio.sleep(job.poll_seconds)
            else:
                await _collect(job.client, batch, job.engine, job.report)
                job.report.batch_ids.append(batch.id)
                item.collected, item.status = True, batch.status
            job.state.save(job.state_path)


async def _wait_any(
    client: Any, inflight: list[BatchFile], poll_seconds: float
) -> list[tuple[BatchFile, Any]]:
    """The in-flight items whose batch has finished, polling every ``poll_seconds``."""
    while True:
        finished = []
        for item in inflight:
            batch = await client.batches.retrieve(item.batch_id)
            if batch.status in DONE_STATES:
                finished.append((item, batch))
        if finished:
            return finished
        await asyncio.sleep(poll_seconds)


async def prefill_with_batch_api(
    manifest: str | Path,
    out: str | Path,
    engine: Engine,
    *,
    poll_seconds: float = 30.0,
    max_lines: int = MAX_LINES_PER_BATCH,
    max_tokens: int | None = None,
    progress: Progress = _log_progress,
) -> BatchApiReport:
    """Answer the manifest's uncached requests through the Batch API into the engine's cache;
    ``progress`` receives the lines a person watching should see."""
    judge = engine.judge
    if not judge.supports_batch_api:
        raise ValueError(f"--openai-batch needs the openai judge, not {judge.name!r}")
    if engine.cache.directory is None:
        raise ValueError("--openai-batch needs the judgment cache (drop --no-cache)")
    report = BatchApiReport()
    state_path = state_path_for(out)
    client = judge.batch_client()
    await _check_files_api(client, str(client.base_url))
    if state_path.exists():
        state = BatchJobState.load(state_path)
        progress(f"resuming the OpenAI batch job recorded in {state_path}")
    else:
        done = jobfiles.prepare_output(out)
        entries = [
            e for e in iter_manifest(manifest) if isinstance(e, ManifestEntry) and e.pair_id not in done
        ]
        budget = SubmissionBudget.of(engine)
        files = await write_batch_files(
            entries, engine, state_path, max_lines=max_lines, max_tokens=max_tokens, budget=budget
        )
        report.capped = budget.capped
        if budget.capped:
            progress(f"openai batch: the budget leaves {budget.capped} requests out of the batch")
        state = BatchJobState(files, max_tokens)
        if not files:
            progress("openai batch: nothing to submit")
            return report
        state.save(state_path)
    report.requests += sum(item.requests for item in state.files)
    engine.ledger.submitted(sum(i.requests for i in state.files if not i.collected))
    await _run_files(_Job(client, state, state_path, engine, report, poll_seconds, progress))
    report.status = ",".join(sorted({i.status or "?" for i in state.files}))
    for item in state.files:
        Path(item.path).unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    progress(
        f"openai batch: {report.status}; {report.answered} answers cached, "
        f"{report.unusable} left for the online run"
    )
    return report


async def export_batch_files(
    manifest: str | Path, out: str | Path, engine: Engine, directory: Path
) -> list[Path]:
    """Write the uncached requests as Batch API JSONL into ``directory`` (for ``vllm run-batch``)."""
    directory.mkdir(parents=True, exist_ok=True)
    done = jobfiles.prepare_output(out)
    entries = [e for e in iter_manifest(manifest) if isinstance(e, ManifestEntry) and e.pair_id not in done]
    budget = SubmissionBudget.of(engine)
    files = await write_batch_files(entries, engine, directory / "requests", budget=budget)
    return [Path(f.path) for f in files]
