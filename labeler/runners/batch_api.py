"""``--openai-batch``: fill the judgment cache through the OpenAI Batch API (half price, up to 24 h).

Every uncached (segment, order) request of the manifest becomes one line of a Batch API input
file whose ``custom_id`` is the request's cache key; the answers are joined back by ``custom_id``
straight into the cache, costed at the Batch API's price. The ordinary run that follows then finds
every answer cached and writes the records; whatever the batch could not answer goes online there.

- Budgets cap what is submitted (openai_batch_files.SubmissionBudget): ``--max-requests`` lines,
  ``--max-cost`` at each line's worst case.
- ``--batch-max-tokens`` splits the files by enqueued input tokens (OpenAI limits the tokens a
  model may have enqueued) and submits the next file only when the unfinished ones leave room. A
  batch failed with ``token_limit_exceeded`` while others were in flight is submitted again once
  nothing else is; one refused with nothing else in flight is over the limit on its own, so it is
  split in halves (at most MAX_SPLITS times) instead of being sent whole again.
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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
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
    line_tokens,
    write_batch_files,
)
from labeler.runners.batch_lifecycle import (
    MAX_SPLITS,
    BatchWaitOver,
    batch_errors,
    delete_batch_files,
    error_lines,
    split_in_halves,
    token_limited,
    with_retries,
    write_resubmission,
)
from labeler.schemas import JudgeError, ManifestEntry, iter_manifest

log = logging.getLogger(__name__)
DONE_STATES = {"completed", "failed", "expired", "cancelled"}
#: Times a batch refused for the enqueued-token limit is submitted again before its lines go online.
MAX_RESUBMITS = 5


#: Rounds of resubmission for lines a batch did not answer (failed, expired or cancelled lines).
MAX_ROUNDS = 2


@dataclass
class BatchApiReport:
    requests: int = 0  # lines submitted
    answered: int = 0  # cached from the batch output
    unusable: int = 0  # failed or unparseable lines (left for the online run)
    capped: int = 0  # lines a budget kept out of the batch (left for the online run)
    batch_ids: list[str] = field(default_factory=list)
    status: str | None = None
    #: Requests no batch answered after every round: cache key -> the last reason.
    left: dict[str, str] = field(default_factory=dict)
    #: What ``left`` would cost online at full price (None: unknown price).
    left_cost_usd: float | None = 0.0
    files_deleted: int = 0


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
) -> dict[str, str]:
    """Batch output lines into the cache, billed at Batch API price; custom_id -> reason for each
    line that gave no usable answer."""
    unusable: dict[str, str] = {}
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
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                unusable[line["custom_id"]] = f"unusable answer: {exc}"[:300]
            log.info("batch line without a usable answer: %s", exc)
            continue
        if billed:
            engine.record(key, judgment, batch=True)  # the Batch API bills half price
        else:
            engine.cache.set(key, judgment)
        report.answered += 1
    return unusable


async def _download(job: _Job, file_id: str) -> str:
    content = await with_retries(
        partial(job.client.files.content, file_id), f"downloading {file_id}", backoff=job.backoff
    )
    return str(content.text)


def _input_keys(path: Path) -> list[str]:
    return [
        json.loads(raw)["custom_id"] for raw in split_lines(path.read_text(encoding="utf-8")) if raw.strip()
    ]


async def _collect(job: _Job, item: BatchFile, batch: Any) -> None:
    """Cache a finished batch's answers, read why the other lines got none (errors.data, the
    error file), and queue those lines as a new batch while rounds are left."""
    reasons: dict[str, str] = {}
    for message in batch_errors(batch):
        job.progress(f"batch {batch.id} failed: {message}")
        reasons.setdefault("*", f"batch failed: {message}")
    if batch.output_file_id:
        text = await _download(job, batch.output_file_id)
        reasons.update(_cache_output_lines(split_lines(text), job.engine, job.report, billed=True))
    if batch.error_file_id:
        reasons.update(error_lines(await _download(job, batch.error_file_id)))
    job.file_ids += [batch.input_file_id, batch.output_file_id, batch.error_file_id]
    keys = _input_keys(Path(item.path))
    missing = [k for k in keys if k not in job.engine.cache]
    if not missing:
        return
    why = {k: reasons.get(k) or reasons.get("*") or f"no answer (batch {batch.status})" for k in missing}
    shown = list(why.items())[:5]
    job.progress(
        f"batch {batch.id} ({batch.status}): {len(missing)} of {len(keys)} requests without an answer"
        + "".join(f"\n  {k[:16]}: {r[:200]}" for k, r in shown)
    )
    if batch.status == "failed" or item.round + 1 > MAX_ROUNDS:
        # A batch that failed validation fails the same way again; the rounds are spent.
        job.report.left.update(why)
        return
    path = Path(item.path).with_name(f"{Path(item.path).stem}.r{item.round + 1}.jsonl")
    lines, size = write_resubmission(Path(item.path), set(missing), path)
    tokens = round(item.tokens * lines / max(1, item.requests))
    job.state.files.append(BatchFile(str(path), lines, size, tokens, round=item.round + 1))
    job.engine.ledger.submitted(lines)
    job.report.requests += lines
    job.progress(
        f"submitting the {lines} requests again as a new batch (round {item.round + 1} of {MAX_ROUNDS})"
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
    backoff: float = 2.0  # first wait before retrying a failed polling/download call
    deadline: float | None = None  # time.monotonic() after which waiting stops (--batch-max-wait)
    #: Uploaded input and output/error files of collected batches, deleted at the end.
    file_ids: list[str | None] = field(default_factory=list)


async def _run_files(job: _Job) -> None:
    """Submit files while the enqueued-token budget allows, collect each as it finishes. A file
    once refused for the token limit goes in only alone, so it either fits or is too big on its
    own (then it is split): whether it fails never depends on what else happens to be running."""
    max_tokens = job.state.max_tokens
    items = job.state.files
    while True:
        inflight = [i for i in items if i.batch_id and not i.collected]
        enqueued = sum(i.tokens for i in inflight)
        for item in (i for i in items if not i.batch_id and not i.collected):
            alone_first = item.resubmits or any(i.resubmits for i in inflight)
            if inflight and (alone_first or (max_tokens is not None and enqueued + item.tokens > max_tokens)):
                break
            item.batch_id = await _submit(job.client, item)
            job.state.save(job.state_path)  # saved at once: a restart polls it instead of paying again
            job.progress(
                f"submitted OpenAI batch {item.batch_id}: {item.requests} requests, ~{item.tokens} tokens"
            )
            inflight.append(item)
            enqueued += item.tokens
            if item.resubmits:
                break  # alone
        if not inflight:
            return
        finished = await _wait_any(job, inflight)
        running = [i for i in inflight if all(i is not done for done, _ in finished)]
        for item, batch in finished:
            if token_limited(batch):
                _settle(job, item, batch, alone=not running)
            if not item.collected and item.batch_id is not None:
                await _collect(job, item, batch)
                job.report.batch_ids.append(batch.id)
                item.collected, item.status = True, batch.status
            job.state.save(job.state_path)


def _settle(job: _Job, item: BatchFile, batch: Any, *, alone: bool) -> None:
    """A batch refused for the enqueued-token limit: submitted again once nothing else is in flight,
    or, refused alone, split in halves. Left as it is (collected as failed) when neither is allowed."""
    if not alone and item.resubmits < MAX_RESUBMITS:
        job.progress(
            f"batch {batch.id} hit the enqueued-token limit; submitting it again when it can go alone"
        )
        item.batch_id, item.resubmits = None, item.resubmits + 1
    elif alone and item.requests > 1 and item.splits < MAX_SPLITS:
        parts = split_in_halves(item)
        job.progress(
            f"batch {batch.id} is over the enqueued-token limit on its own: submitting its {item.requests} "
            f"requests as two batches of {parts[0].requests} and {parts[1].requests}"
        )
        job.state.files.extend(parts)
        job.report.batch_ids.append(batch.id)
        job.file_ids.append(batch.input_file_id)
        item.collected, item.status = True, "split"


async def _wait_any(job: _Job, inflight: list[BatchFile]) -> list[tuple[BatchFile, Any]]:
    """The in-flight items whose batch has finished, polling every ``poll_seconds`` (a transient
    failure of a poll is retried with backoff: a 24-hour batch must not end on one 500)."""
    while True:
        finished = []
        for item in inflight:
            batch_id = str(item.batch_id)
            batch = await with_retries(
                partial(job.client.batches.retrieve, batch_id), f"polling {batch_id}", backoff=job.backoff
            )
            if batch.status in DONE_STATES:
                finished.append((item, batch))
        if finished:
            return finished
        if job.deadline is not None and time.monotonic() >= job.deadline:
            ids = ", ".join(str(i.batch_id) for i in inflight)
            raise BatchWaitOver(
                f"--batch-max-wait reached with {len(inflight)} batch(es) unfinished ({ids}); they go on "
                f"at the provider and {job.state_path} keeps them: rerun the same command to collect them"
            )
        await asyncio.sleep(job.poll_seconds)


async def prefill_with_batch_api(
    manifest: str | Path,
    out: str | Path,
    engine: Engine,
    *,
    poll_seconds: float = 30.0,
    max_lines: int = MAX_LINES_PER_BATCH,
    max_tokens: int | None = None,
    progress: Progress = _log_progress,
    keep_files: bool = False,
    retry_backoff: float = 2.0,
    max_wait: float | None = None,
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
    deadline = None if max_wait is None else time.monotonic() + max_wait
    job = _Job(
        client,
        state,
        state_path,
        engine,
        report,
        poll_seconds,
        progress,
        backoff=retry_backoff,
        deadline=deadline,
    )
    await _run_files(job)
    report.status = ",".join(sorted({i.status or "?" for i in state.files}))
    report.left_cost_usd = _online_cost(state.files, set(report.left), engine)
    if not keep_files:
        report.files_deleted = await delete_batch_files(client, job.file_ids, retry_backoff)
    for item in state.files:
        Path(item.path).unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    cost = "unknown" if report.left_cost_usd is None else f"${report.left_cost_usd:.4f}"
    progress(
        f"openai batch: {report.status}; {report.answered} answers cached, {len(report.left)} requests "
        f"without an answer (online at full price: ~{cost}), {report.capped} kept out by the budget"
        + ("" if keep_files else f"; {report.files_deleted} uploaded/result files deleted")
    )
    return report


def _online_cost(files: list[BatchFile], keys: set[str], engine: Engine) -> float | None:
    """Full-price USD of sending the ``keys`` lines online (their worst case: whole completion budget)."""
    total = 0.0
    for item in files:
        for raw in split_lines(Path(item.path).read_text(encoding="utf-8")) if keys else []:
            if not raw.strip():
                continue
            line = json.loads(raw)
            if line["custom_id"] in keys:
                keys = keys - {line["custom_id"]}
                cost = engine.judge.cost_usd(*line_tokens(line["body"]))
                if cost is None:
                    return None
                total += cost
    return total


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
