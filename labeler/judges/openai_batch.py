"""``--openai-batch``: fill the judgment cache through the OpenAI Batch API (half price, up to 24 h).

Every uncached (segment, order) request of the manifest becomes one line of a Batch API input
file whose ``custom_id`` is the request's cache key; the answers are joined back by ``custom_id``
straight into the cache. The ordinary run that follows then finds every answer cached and writes
the records; whatever the batch could not answer goes online there, so nothing is lost.

The submitted batch id is saved beside the output before waiting, so a run killed while polling
resumes the same batch on restart instead of paying for a second one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler import jobfiles
from labeler.engine import Engine
from labeler.fileio import atomic_write_json, split_lines
from labeler.schemas import JudgeError, ManifestEntry, iter_manifest
from labeler.video import VideoError

log = logging.getLogger(__name__)
DONE_STATES = {"completed", "failed", "expired", "cancelled"}


@dataclass
class BatchApiReport:
    requests: int = 0  # lines submitted
    answered: int = 0  # cached from the batch output
    unusable: int = 0  # failed or unparseable lines (left for the online run)
    batch_ids: list[str] = field(default_factory=list)
    status: str | None = None


def state_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".openai-batch.json")


#: OpenAI's limits per batch: 50,000 requests and a 200 MB input file.
MAX_LINES_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 2**20


async def write_batch_files(
    entries: list[ManifestEntry],
    engine: Engine,
    stem: Path,
    *,
    max_lines: int = MAX_LINES_PER_BATCH,
    max_bytes: int = MAX_BYTES_PER_BATCH,
) -> list[dict[str, Any]]:
    """Stream one Batch API line per uncached (segment, order) into input files of at most
    ``max_lines`` lines / ``max_bytes`` bytes (``custom_id`` = cache key). Pairs that cannot be
    planned are left to the online run, which writes their error records."""
    judge, seen = engine.judge, set()
    files: list[dict[str, Any]] = []
    fh = None

    def start_file() -> Any:
        path = stem.with_name(f"{stem.name}.input-{len(files):03d}.jsonl")
        files.append({"path": str(path), "requests": 0, "bytes": 0, "batch_id": None})
        return path.open("w", encoding="utf-8")

    try:
        for entry in entries:
            try:
                plan = await asyncio.to_thread(engine.plan_pair, entry)
            except (VideoError, ValueError) as exc:
                log.warning("%s: skipped in the batch (%s)", entry.pair_id, exc)
                continue
            hits = engine.cached_judgments(plan.segments)
            missing = [s for s in plan.segments if any(k not in hits for k in s.keys.values())]
            if not missing:
                continue
            frames = await engine.decode_segments(plan, missing)
            for seg in missing:
                for order, key in seg.keys.items():
                    if key in hits or key in seen:
                        continue
                    seen.add(key)
                    request = engine.segment_request(
                        entry.prompt, seg, frames[seg.index], order, len(plan.segments), plan.fps
                    )
                    line = {
                        "custom_id": key,
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": judge.build_body(request),
                    }  # type: ignore[attr-defined]
                    text = json.dumps(line, separators=(",", ":")) + "\n"
                    current = files[-1] if files else None
                    if (
                        current is None
                        or current["requests"] >= max_lines
                        or (current["requests"] and current["bytes"] + len(text) > max_bytes)
                    ):
                        if fh is not None:
                            fh.close()
                        fh = start_file()
                        current = files[-1]
                    fh.write(text)
                    current["requests"] += 1
                    current["bytes"] += len(text)
    finally:
        if fh is not None:
            fh.close()
    return files


def _save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_json(path, state)


async def _submit(client: Any, item: dict[str, Any]) -> str:
    with open(item["path"], "rb") as fh:
        uploaded = await client.files.create(file=(Path(item["path"]).name, fh), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"source": "densepref"},
    )
    return batch.id


async def _wait(client: Any, batch_id: str, poll_seconds: float) -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"openai batch {batch_id}", unit="req", dynamic_ncols=True)
    try:
        while True:
            batch = await client.batches.retrieve(batch_id)
            counts = getattr(batch, "request_counts", None)
            if counts is not None:
                bar.total = counts.total
                bar.n = counts.completed + counts.failed
                bar.set_postfix(status=batch.status, failed=counts.failed, refresh=True)
            if batch.status in DONE_STATES:
                return batch
            await asyncio.sleep(poll_seconds)
    finally:
        bar.close()


async def _collect(client: Any, batch: Any, engine: Engine, report: BatchApiReport) -> None:
    if not batch.output_file_id:
        return
    content = await client.files.content(batch.output_file_id)
    for raw in split_lines(content.text):
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
        engine.cache.set(key, judgment)
        engine._account(judgment)
        report.answered += 1


async def prefill_with_batch_api(
    manifest: str | Path,
    out: str | Path,
    engine: Engine,
    *,
    poll_seconds: float = 30.0,
    max_lines: int = MAX_LINES_PER_BATCH,
) -> BatchApiReport:
    """Answer the manifest's uncached requests through the Batch API into the engine's cache."""
    judge = engine.judge
    if not judge.supports_batch_api:
        raise ValueError(f"--openai-batch needs the openai judge, not {judge.name!r}")
    if engine.cache.directory is None:
        raise ValueError("--openai-batch needs the judgment cache (drop --no-cache)")
    report = BatchApiReport()
    state_path = state_path_for(out)
    client = judge.batch_client()
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        print(f"resuming the OpenAI batch job recorded in {state_path}")
    else:
        done = jobfiles.prepare_output(out)
        entries = [
            e for e in iter_manifest(manifest) if isinstance(e, ManifestEntry) and e.pair_id not in done
        ]
        state = {"files": await write_batch_files(entries, engine, state_path, max_lines=max_lines)}
        if not state["files"]:
            print("openai batch: every request is already cached; nothing to submit")
            return report
        _save_state(state_path, state)
    for item in state["files"]:
        report.requests += item["requests"]
        if item["batch_id"] is None:
            item["batch_id"] = await _submit(client, item)
            _save_state(state_path, state)  # saved at once: a restart polls it instead of paying again
            print(f"submitted OpenAI batch {item['batch_id']} with {item['requests']} requests")
    statuses = []
    for item in state["files"]:
        batch = await _wait(client, item["batch_id"], poll_seconds)
        statuses.append(batch.status)
        await _collect(client, batch, engine, report)
    report.batch_ids = [item["batch_id"] for item in state["files"]]
    report.status = ",".join(sorted(set(statuses)))
    for item in state["files"]:
        Path(item["path"]).unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    print(
        f"openai batch: {report.status}; {report.answered} answers cached, "
        f"{report.unusable} left for the online run"
    )
    return report
