"""The openai judge against stand-ins that behave like the real servers (issue 14):

- like ``vllm serve``: no Files or Batch API (its router answers 404), grammar-masked logprobs
  (the whitespace loop and vLLM's own checks: tests/test_vllm_real.py);
- like OpenAI's Batch API: an enqueued-token limit, and half price.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labeler.cache import JudgmentCache
from labeler.engine import BudgetExceeded, Engine, EngineConfig
from labeler.judges.openai_api import OpenAIJudge
from labeler.runners import batch_api as openai_batch
from labeler.runners.batch_api_files import line_tokens
from labeler.schemas import JudgeParseError, SegmentRequest, read_records
from labeler.standin import StandinServer
from tests.conftest import level_pairs_manifest
from tests.fake_judges import frames_with_level

REPO = Path(__file__).resolve().parents[1]
FPS = 8.0
PRICED = "gpt-4o-mini"  # a priced family: the stand-in bills it at the models_table price


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    return level_pairs_manifest(
        root, 2, 2, a=(90, 20), b=(150, -20), fps=FPS
    )  # 2 pairs x 2 segments x 2 orders = 8 requests


def cli(manifest: Path, out: Path, server: StandinServer, cache: Path, *extra: str, model: str = PRICED):
    args = [sys.executable, "-m", "labeler.batch", str(manifest), "--out", str(out), "--judge", "openai",
            "--model", model, "--base-url", server.base_url, "--cache-dir", str(cache), "--quiet",
            "--frames-per-segment", "3", *extra]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def engine_for(server: StandinServer, cache: Path, model: str = PRICED, **config) -> Engine:
    judge = OpenAIJudge(model, base_url=server.base_url, api_key="k")
    return Engine(judge, EngineConfig(frames_per_segment=3, **config), JudgmentCache(cache))


# --------------------------------------------------------------------------- like vllm serve


def test_openai_batch_on_vllm_fails_clearly_and_leaves_nothing(manifest, tmp_path):
    with StandinServer(flavour="vllm") as server:
        out = tmp_path / "out.jsonl"
        proc = cli(manifest, out, server, tmp_path / "cache", "--openai-batch", model="Qwen/Qwen2.5-VL-7B")
        assert proc.returncode == 2, proc.stderr
        assert "no Files API" in proc.stderr and "vllm run-batch" in proc.stderr
        assert "Traceback" not in proc.stderr
        # no output, no batch state, no input files; only the run's lock file, which no rerun minds
        assert [p.name for p in tmp_path.glob("out.jsonl*")] in ([], ["out.jsonl.lock"])
        assert server.stats()["requests_total"] == 0
        again = cli(manifest, out, server, tmp_path / "cache", model="Qwen/Qwen2.5-VL-7B")  # a plain rerun
        assert again.returncode == 0, again.stderr
        records = read_records(out)
        assert len(records) == 2 and all(r.labeler.answer_order == "label-first" for r in records)


def test_vllm_router_answers_404_for_the_batch_api():
    import httpx

    with StandinServer(flavour="vllm") as server:
        for method, path in (
            ("GET", "/files"),
            ("POST", "/files"),
            ("POST", "/batches"),
            ("GET", "/batches/b"),
        ):
            response = httpx.request(method, server.base_url + path)
            assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
        server.control(flavour="openai")
        assert httpx.get(server.base_url + "/files").status_code == 200


def test_dry_run_states_frames_and_reasoning(manifest, tmp_path):
    with StandinServer() as server:
        proc = cli(manifest, tmp_path / "o.jsonl", server, tmp_path / "c", "--dry-run", model="o3")
        assert proc.returncode == 0, proc.stderr
        assert "reasoning tokens per request" in proc.stdout and "effort 'medium'" in proc.stdout
        assert (
            "48x32 decoded, 48x32 sent (separate images), 48x32 seen by OpenAI at detail low" in proc.stdout
        )
        assert server.stats()["requests_total"] == 0


def test_vllm_run_batch_path_exports_and_imports_the_same_jsonl(manifest, tmp_path):
    """--batch-export writes what `vllm run-batch -i` reads; its output (same format as OpenAI's
    batch output, produced here by the stand-in answering each line) comes back with --batch-import."""
    with StandinServer(flavour="vllm") as server:
        model = "Qwen/Qwen2.5-VL-7B"
        out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
        proc = cli(manifest, out, server, cache, "--batch-export", str(tmp_path / "jobs"), model=model)
        assert proc.returncode == 0, proc.stderr
        (inputs,) = sorted((tmp_path / "jobs").glob("*.jsonl"))
        outputs = tmp_path / "jobs" / "out.jsonl"
        with outputs.open("w") as fh:  # what vllm run-batch writes: one output line per input line
            for text in inputs.read_text().splitlines():
                line = json.loads(text)
                status, body, _ = asyncio.run(server.state.complete(line["body"], None))
                response = {"status_code": status, "request_id": "r", "body": body}
                fh.write(
                    json.dumps(
                        {"id": "vllm-1", "custom_id": line["custom_id"], "response": response, "error": None}
                    )
                    + "\n"
                )
        assert server.stats()["requests_total"] == 8
        good = outputs.read_text().splitlines()
        hostile = tmp_path / "jobs" / "hostile.jsonl"
        first = json.loads(good[0])
        other_model = json.loads(good[1])
        other_model["response"]["body"]["model"] = "someone-else/7B"
        negative = json.loads(good[2])
        negative["response"]["body"]["usage"]["prompt_tokens"] = -(10**9)
        hostile.write_text(
            "\n".join(
                [
                    "{not json",
                    json.dumps({**first, "custom_id": "foreign-key"}),
                    json.dumps({**first, "custom_id": 12345}),
                    json.dumps(other_model),
                    json.dumps(negative),
                    "[1, 2]",
                    good[3],
                ]
            )
            + "\n"
        )
        # The hostile file first: its lines are each rejected and counted, none cached or billed.
        proc = cli(manifest, out, server, cache, "--batch-import", str(hostile), str(outputs), model=model)
        assert proc.returncode == 0, proc.stderr
        assert (
            "15 lines, 11 match the current plan (8 requests planned), 8 answers cached, not billed"
            in proc.stdout
        )
        for reason in ("1 not JSON", "1 custom_id not in the current plan", "2 no custom_id string",
                       "1 answered by another model", "1 unusable answer", "1 duplicate custom_id"):  # fmt: skip
            assert reason in proc.stdout, (reason, proc.stdout)
        assert "hostile.jsonl:1: not JSON" in proc.stdout and "impossible" in proc.stdout
        assert server.stats()["requests_total"] == 8  # nothing went online
        assert all(r.usage.cache_hits == 4 for r in read_records(out))
        assert "estimated cost $0.0000" in proc.stdout  # self-hosted answers are not billed


def test_batch_import_of_a_missing_file_or_a_folder_is_a_clear_exit_2(manifest, tmp_path):
    with StandinServer(flavour="vllm") as server:
        for path, words in ((tmp_path / "nope.jsonl", "does not exist"), (tmp_path, "is a directory")):
            proc = cli(manifest, tmp_path / "o.jsonl", server, tmp_path / "c", "--batch-import", str(path))
            assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_batch_import_bounds_each_line(tmp_path):
    from labeler.runners.batch_import import _bounded_lines

    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 5000 + b"\n" + b'{"b": 2}\n')
    lines = list(_bounded_lines(path, max_bytes=100))
    assert lines == [(1, b'{"a": 1}\n'), (2, None), (3, b'{"b": 2}\n')]


def _request() -> SegmentRequest:
    a, b = frames_with_level(3, 80, h=32, w=48), frames_with_level(3, 160, h=32, w=48)
    return SegmentRequest(prompt="p", frames_first=a, frames_second=b, start_s=0.0, end_s=1.0)


async def _ask(judge: OpenAIJudge, request: SegmentRequest):
    try:
        return await judge.judge(request)
    finally:
        await judge.aclose()


@pytest.mark.parametrize("order", ["label-first", "rationale-first"])
def test_grammar_masked_logprobs_give_the_label_distribution(order):
    with StandinServer(flavour="vllm", policy="first") as server:
        judge = OpenAIJudge(
            "Qwen/Qwen2.5-VL-7B", base_url=server.base_url, answer_order=order, top_logprobs=5
        )
        j = asyncio.run(_ask(judge, _request()))
        assert server.state.log[-1]["status"] == 200
        assert j.prob_source == "logprobs" and j.p_a == pytest.approx(0.9) and j.p_tie == pytest.approx(0.08)
        raw = json.loads(j.raw)
        assert next(iter(raw)) == order.split("-")[0]  # the stand-in answered in schema order


# --------------------------------------------------------------------------- cost accounting


def test_failed_reasks_are_counted_as_requests_tokens_and_dollars(tmp_path):
    with StandinServer(policy="garbage") as server:
        engine = engine_for(server, tmp_path / "c", max_attempts=1)
        with pytest.raises(JudgeParseError):
            asyncio.run(engine.ask(_request()))
        stats = server.stats()
        assert stats["requests_total"] == 3 == engine.stats.requests  # 1 ask + 2 re-asks
        assert engine.stats.input_tokens > 0 and engine.stats.output_tokens > 0
        assert engine.stats.cost_usd == pytest.approx(stats["billed_usd"]["online"], rel=1e-9)
        assert engine.stats.cost_usd > 0
        engine.cache.close()


def test_max_requests_counts_http_requests(tmp_path):
    with StandinServer(policy="garbage") as server:
        engine = engine_for(server, tmp_path / "c", max_attempts=1, max_requests=2)
        with pytest.raises(BudgetExceeded):
            asyncio.run(engine.ask(_request()))
        assert server.stats()["requests_total"] == 2 == engine.stats.requests
        engine.cache.close()


# --------------------------------------------------------------------------- like OpenAI's Batch API


def _batch(manifest: Path, out: Path, engine: Engine, **kwargs) -> openai_batch.BatchApiReport:
    async def go() -> openai_batch.BatchApiReport:
        try:
            return await openai_batch.prefill_with_batch_api(
                manifest, out, engine, poll_seconds=0.02, **kwargs
            )
        finally:
            await engine.aclose()

    return asyncio.run(go())


def test_batch_answers_are_costed_at_half_price(manifest, tmp_path):
    with StandinServer() as server:
        engine = engine_for(server, tmp_path / "c")
        report = _batch(manifest, tmp_path / "o.jsonl", engine)
        billed = server.stats()["billed_usd"]
        assert report.answered == 8 and billed["online"] == 0 and billed["batch"] > 0
        assert engine.stats.cost_usd == pytest.approx(billed["batch"], rel=1e-9)
        online = engine_for(server, tmp_path / "c2")
        from labeler.runners.local import run_batch

        async def label() -> None:
            try:
                await run_batch(manifest, tmp_path / "online.jsonl", online, workers=2, progress=False)
            finally:
                await online.aclose()

        asyncio.run(label())
        assert online.stats.cost_usd == pytest.approx(2 * engine.stats.cost_usd, rel=1e-9)


def test_budgets_cap_what_is_submitted(manifest, tmp_path):
    with StandinServer() as server:
        out = tmp_path / "out.jsonl"
        proc = cli(manifest, out, server, tmp_path / "cache", "--openai-batch", "--batch-poll-seconds", "0.02",
                   "--max-requests", "3")  # fmt: skip
        assert proc.returncode == 3, proc.stdout + proc.stderr  # stopped: the budget is spent
        assert "leaves 5 requests out" in proc.stdout
        assert server.stats()["requests_total"] == 3

    with StandinServer() as server:
        engine = engine_for(server, tmp_path / "c3")
        body = engine.judge.build_body(_request())
        tokens, completion = line_tokens(body)
        worst = engine.judge.cost_usd(tokens, completion, batch=True)
        engine.config.max_cost = 2.5 * worst  # room for two worst-case lines
        report = _batch(manifest, tmp_path / "o3.jsonl", engine)
        assert report.requests == 2 and report.capped == 6
        assert engine.stats.cost_usd <= engine.config.max_cost


def _line_tokens() -> int:
    """Input tokens of one line of the manifest (same frame count and size as _request)."""
    return line_tokens(OpenAIJudge(PRICED, base_url="http://127.0.0.1:1/v1").build_body(_request()))[0]


def test_enqueued_token_limit_splits_and_submits_in_turn(manifest, tmp_path):
    per_line = _line_tokens()
    limit = 3 * per_line + per_line // 2
    with StandinServer(batch_enqueued_token_limit=limit, batch_delay_s=0.05) as server:
        report = _batch(manifest, tmp_path / "o.jsonl", engine_for(server, tmp_path / "c"), max_tokens=limit)
        batches = list(server.state.batches.values())
        assert report.answered == 8 and len(report.batch_ids) == 3  # 3 + 3 + 2 lines
        # The server enforces the limit: had the files gone in at once, some would have failed.
        assert all(b["status"] == "completed" for b in batches) and len(batches) == 3
        assert not server.stats()["answered_twice"]
    with StandinServer(batch_enqueued_token_limit=limit, batch_delay_s=0.01) as server:
        # Without --batch-max-tokens: the one 8-line file is over the limit on its own. It is never
        # sent whole again: halved (4 + 4, still over), halved again (2-line parts), all answered.
        report = _batch(manifest, tmp_path / "o2.jsonl", engine_for(server, tmp_path / "c2"), keep_files=True)
        batches = list(server.state.batches.values())
        whole = [b for b in batches if _lines_of(server, b) == 8]
        assert len(whole) == 1 and whole[0]["status"] == "failed"
        assert whole[0]["errors"]["data"][0]["code"] == "token_limit_exceeded"
        assert report.answered == 8 and report.left == {}
        assert max(_lines_of(server, b) for b in batches if b["status"] == "completed") <= 3
        assert server.stats()["billed_usd"]["online"] == 0 and not server.stats()["answered_twice"]


def test_a_line_over_the_token_limit_alone_is_left_with_the_reason_after_bounded_splits(manifest, tmp_path):
    with StandinServer(batch_enqueued_token_limit=_line_tokens() // 2, batch_delay_s=0.01) as server:
        report = _batch(manifest, tmp_path / "o.jsonl", engine_for(server, tmp_path / "c"), keep_files=True)
        batches = list(server.state.batches.values())
        assert report.answered == 0 and len(report.left) == 8
        assert all("token_limit_exceeded" in reason for reason in report.left.values())
        assert all(b["status"] == "failed" for b in batches)
        assert sum(_lines_of(server, b) == 8 for b in batches) == 1  # the whole file once
        assert sum(_lines_of(server, b) == 1 for b in batches) >= 8  # split down to single lines
        assert server.stats()["requests_total"] == 0  # nothing ran, nothing went online


def _lines_of(server: StandinServer, batch: dict) -> int:
    content = server.state.files[batch["input_file_id"]]["content"]
    return sum(1 for raw in content.splitlines() if raw.strip())


def test_split_submission_resumes_after_a_kill(manifest, tmp_path, monkeypatch):
    with StandinServer(batch_delay_s=0.05) as server:
        per_line = _line_tokens()
        out = tmp_path / "o.jsonl"
        real = openai_batch._collect
        calls = {"n": 0}

        async def dies_after_first(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # killed while collecting the second file
            await real(*args, **kwargs)

        monkeypatch.setattr(openai_batch, "_collect", dies_after_first)
        with pytest.raises(KeyboardInterrupt):
            _batch(manifest, out, engine_for(server, tmp_path / "c"), max_tokens=4 * per_line + per_line // 2)
        state = json.loads(openai_batch.state_path_for(out).read_text())
        assert [f["collected"] for f in state["files"]] == [True, False]
        monkeypatch.setattr(openai_batch, "_collect", real)
        report = _batch(
            manifest, out, engine_for(server, tmp_path / "c"), max_tokens=4 * per_line + per_line // 2
        )
        assert report.answered == 4 and len(server.state.batches) == 2  # nothing submitted twice
        assert not server.stats()["answered_twice"]


# --------------------------------------------------------------------------- Batch API lifecycle


def test_server_errors_while_polling_and_downloading_are_retried(manifest, tmp_path):
    """One 500 while polling or a 502 on the download must not end a 24-hour job."""
    with StandinServer(batch_route_faults=[500, 502, 503, 500]) as server:
        engine = engine_for(server, tmp_path / "c")
        report = _batch(manifest, tmp_path / "o.jsonl", engine, retry_backoff=0.0)
        assert report.answered == 8 and not report.left
        assert server.stats()["faults_served"] == 4 and not server.state.config.batch_route_faults


def test_expired_lines_are_resubmitted_in_bounded_rounds_and_never_sent_online_unasked(manifest, tmp_path):
    """Each batch expires after 2 lines (max_concurrency 1: one line at a time): round 0 answers 2
    of 8, rounds 1 and 2 answer 2 more each, and the last 2 are left. Without --batch-online-rest
    nothing goes online and the rest is stated with its full-price cost; with it, they go online."""
    with StandinServer(batch_expire_after=2, max_concurrency=1) as server:
        out = tmp_path / "out.jsonl"
        proc = cli(
            manifest, out, server, tmp_path / "cache", "--openai-batch", "--batch-poll-seconds", "0.02"
        )
        assert "batch_expired" in proc.stdout, proc.stdout
        assert "submitting the 6 requests again as a new batch (round 1 of 2)" in proc.stdout
        assert "submitting the 4 requests again as a new batch (round 2 of 2)" in proc.stdout
        assert "6 answers cached, 2 requests without an answer (online at full price: ~$" in proc.stdout
        assert "not sent online (full price) without --batch-online-rest" in proc.stdout
        assert server.stats()["requests_total"] == 6  # batch lines only: nothing online
        assert proc.returncode == 3, proc.stdout + proc.stderr  # the pair left unanswered is not written
        assert not server.state.files  # uploaded inputs and result files deleted after collecting

    with StandinServer(batch_expire_after=2, max_concurrency=1) as server:
        out = tmp_path / "out2.jsonl"
        proc = cli(manifest, out, server, tmp_path / "cache2", "--openai-batch", "--batch-poll-seconds", "0.02",
                   "--batch-online-rest", "--keep-batch-files")  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert server.stats()["requests_total"] == 8  # 6 batch lines + the 2 left, online
        assert len(read_records(out)) == 2
        assert len(server.state.files) == 3 * 3  # kept: input, output and error file of each round


def test_batch_options_need_openai_batch(manifest, tmp_path):
    with StandinServer() as server:
        proc = cli(manifest, tmp_path / "o.jsonl", server, tmp_path / "c", "--batch-online-rest")
        assert proc.returncode == 2 and "need --openai-batch" in proc.stderr


def test_batch_max_wait_stops_and_a_rerun_collects_the_same_batches(manifest, tmp_path):
    """A batch slower than --batch-max-wait: exit 3, state kept; the rerun pays nothing twice."""
    with StandinServer(batch_delay_s=4.0) as server:
        out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
        proc = cli(manifest, out, server, cache, "--openai-batch", "--batch-poll-seconds", "0.02",
                   "--batch-max-wait", "0")  # fmt: skip
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "--batch-max-wait reached with 1 batch(es) unfinished" in proc.stderr
        assert openai_batch.state_path_for(out).exists() and len(server.state.batches) == 1
        proc = cli(manifest, out, server, cache, "--openai-batch", "--batch-poll-seconds", "0.05")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "resuming" in proc.stdout and len(server.state.batches) == 1  # the same batch, once
        assert server.stats()["requests_total"] == 8
