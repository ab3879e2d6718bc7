"""labeler.standin: the local OpenAI-compatible server, exercised over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import numpy as np
import pytest

from labeler.judges.openai_api import OpenAIJudge
from labeler.schemas import SegmentRequest
from labeler.standin import StandinServer, canonical_hash, image_digest, start_standin_process
from labeler.standin.behaviour import GARBAGE, decide, sharpness_scores
from tests.conftest import textured_frames


def _body(text: str = "hello", **extra) -> dict:
    return {"model": "standin-vlm", "messages": [{"role": "user", "content": text}], **extra}


def _post(server: StandinServer, body: dict, **kw) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=10, **kw)


def _blurred(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.int32)
    out = f.copy()
    out[:, 1:-1, 1:-1] = (
        f[:, :-2, 1:-1] + f[:, 2:, 1:-1] + f[:, 1:-1, :-2] + f[:, 1:-1, 2:] + 4 * f[:, 1:-1, 1:-1]
    ) // 8
    return out.astype(np.uint8)


def _pair(sharp_first: bool = True) -> SegmentRequest:
    sharp = textured_frames(4, 64, 96)
    blurred = _blurred(sharp)
    first, second = (sharp, blurred) if sharp_first else (blurred, sharp)
    return SegmentRequest(prompt="a dog", frames_first=first, frames_second=second, start_s=0.0, end_s=1.0)


def test_counts_requests_per_canonical_body(standin):
    body = _body()
    assert _post(standin, body).status_code == 200
    assert _post(standin, dict(reversed(list(body.items())))).status_code == 200  # same body, other key order
    _post(standin, _body("other"))
    stats = standin.stats()
    key = canonical_hash(body)
    assert stats["requests_total"] == 3 and stats["answered"] == 3
    assert stats["requests_by_hash"][key] == 2 and stats["answered_twice"] == [key]
    standin.control(reset=True)
    assert standin.stats()["requests_total"] == 0 and standin.stats()["answered_by_hash"] == {}


def test_fault_queue_serves_the_next_requests_in_order(standin):
    standin.control(faults=[{"status": 429, "retry_after": 0.05}, {"status": 500}, {"garbage": True}])
    first = _post(standin, _body())
    assert first.status_code == 429 and first.headers["retry-after"] == "0.05"
    assert first.json()["error"]["message"] == "injected fault 429"
    assert _post(standin, _body()).status_code == 500
    garbage = _post(standin, _body())
    assert garbage.status_code == 200 and garbage.json()["choices"][0]["message"]["content"] == GARBAGE
    normal = _post(standin, _body()).json()["choices"][0]["message"]["content"]
    assert json.loads(normal)["label"] in ("A", "B", "tie")
    stats = standin.stats()
    assert stats["faults_served"] == 3 and stats["faults_pending"] == 0
    assert stats["by_status"] == {"429": 1, "500": 1, "200": 2}
    assert stats["answered"] == 2  # only 200s count as answered


def test_a_hang_until_released_answers_only_after_the_release():
    """No clock: the hung request is not done however long the loop runs, and answers once released."""
    from labeler.standin import StandinConfig, StandinState

    async def scenario() -> None:
        state = StandinState(StandinConfig(faults=[{"hang": "until_released"}]))
        hung = asyncio.create_task(state.complete(_body(), None))
        for _ in range(200):  # let it reach the hang, then give it many more turns of the loop
            await asyncio.sleep(0)
        assert state.in_flight == 1 and not hung.done()
        state.control({"release_hangs": True})
        status, payload, _ = await hung
        assert status == 200 and payload["choices"][0]["finish_reason"] == "stop"
        assert state.faults_served["hang"] == 1 and state.in_flight == 0

    asyncio.run(scenario())


def test_rules_fail_matching_requests_every_time(standin):
    standin.control(rules=[{"match": "FAILME", "status": 500, "message": "pair is cursed"}])
    for _ in range(3):
        response = _post(standin, _body("prompt FAILME here"))
        assert response.status_code == 500 and response.json()["error"]["message"] == "pair is cursed"
    assert _post(standin, _body("fine")).status_code == 200
    # Rules can also pin one set of images (one segment of one pair), whatever the text says.
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    cursed, other = judge.build_body(_pair(True)), judge.build_body(_pair(False))
    standin.control(rules=[{"image_hash": image_digest(_image_urls(cursed)), "status": 503}])
    assert _post(standin, cursed).status_code == 503 and _post(standin, other).status_code == 200
    assert standin.requests(2)[0]["image_hash"] == image_digest(_image_urls(cursed))


def test_concurrency_limit_queues_excess_requests(standin):
    standin.control(latency_ms=100, max_concurrency=2)

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post(standin.base_url + "/chat/completions", json=_body(f"r{i}")) for i in range(6))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(fire()) == [200] * 6
    assert standin.stats()["max_concurrency_observed"] == 2


def test_logprobs_split_the_answer_so_the_label_is_its_own_token(standin):
    choice = _post(standin, _body(logprobs=True, top_logprobs=3)).json()["choices"][0]
    content, entries = choice["message"]["content"], choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == content
    label = json.loads(content)["label"]
    label_entry = next(
        e for i, e in enumerate(entries) if i and entries[i - 1]["token"] == ' "' and e["token"] == label
    )
    alternatives = {a["token"]: math.exp(a["logprob"]) for a in label_entry["top_logprobs"]}
    assert set(alternatives) == {"A", "B", "tie"} and sum(alternatives.values()) == pytest.approx(1.0)
    assert max(alternatives, key=alternatives.get) == label
    # Not asked for, or switched off: no logprobs.
    assert _post(standin, _body()).json()["choices"][0]["logprobs"] is None
    standin.control(logprobs=False)
    assert _post(standin, _body(logprobs=True)).json()["choices"][0]["logprobs"] is None


def test_usage_reports_prompt_and_completion_tokens(standin):
    from labeler.judges.pricing import chat_input_tokens

    body = _body("x" * 400)
    data = _post(standin, body).json()
    assert data["usage"]["prompt_tokens"] == chat_input_tokens(body["messages"], body["model"])[0]
    assert data["usage"]["completion_tokens"] > 5
    assert (
        data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    )


@pytest.mark.parametrize(("policy", "label"), [("first", "A"), ("second", "B"), ("tie", "tie")])
def test_fixed_policies(standin, policy, label):
    standin.control(policy=policy)
    content = _post(standin, _body()).json()["choices"][0]["message"]["content"]
    assert json.loads(content)["label"] == label


def test_garbage_policy_answers_prose(standin):
    standin.control(policy="garbage")
    assert _post(standin, _body()).json()["choices"][0]["message"]["content"] == GARBAGE


def test_hash_policy_is_deterministic_in_the_images():
    a = ["data:image/jpeg;base64,AAAA"]
    b = ["data:image/jpeg;base64,BBBB"]
    assert decide("hash", a) == decide("hash", a)
    labels = {max(p, key=p.get) for p, _ in (decide("hash", [f"data:x;base64,{i}"]) for i in range(30))}
    assert labels == {"A", "B", "tie"}  # the hash spreads answers over all labels
    assert decide("hash", a)[0] != decide("hash", b)[0] or decide("hash", a)[1] != decide("hash", b)[1]


@pytest.mark.parametrize("layout", ["separate", "side-by-side"])
def test_sharpness_policy_prefers_the_sharper_video_in_both_layouts(standin, layout):
    standin.control(policy="sharpness")
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url, layout=layout, jpeg_quality=95)
    for sharp_first, expected in ((True, "A"), (False, "B")):
        body = judge.build_body(_pair(sharp_first))
        answer = json.loads(_post(standin, body).json()["choices"][0]["message"]["content"])
        assert answer["label"] == expected
        assert f"({layout} layout)" in answer["rationale"]
    same = _pair()
    same = SegmentRequest(
        prompt="x", frames_first=same.frames_first, frames_second=same.frames_first, start_s=0, end_s=1
    )
    answer = json.loads(_post(standin, judge.build_body(same)).json()["choices"][0]["message"]["content"])
    assert answer["label"] == "tie"


def _image_urls(body: dict) -> list[str]:
    return [p["image_url"]["url"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]


def test_sharpness_scores_split_composites_at_the_white_stripe():
    unused = "http://127.0.0.1:1/v1"
    composites = _image_urls(OpenAIJudge("m", base_url=unused, layout="side-by-side").build_body(_pair()))
    s_first, s_second, layout = sharpness_scores(composites)
    assert len(composites) == 4 and layout == "side-by-side" and s_first > 1.5 * s_second
    frames = _image_urls(OpenAIJudge("m", base_url=unused, layout="separate").build_body(_pair()))
    assert len(frames) == 8 and sharpness_scores(frames)[2] == "separate"
    with pytest.raises(ValueError, match="3 separate images cannot be split"):
        sharpness_scores(frames[:3])


def test_auth_unknown_model_and_unsupported_parameters(standin):
    standin.control(api_key="sk-right", models=["m1"])
    assert _post(standin, _body()).status_code == 401
    ok = {"Authorization": "Bearer sk-right"}
    assert _post(standin, {**_body(), "model": "m2"}, headers=ok).status_code == 404
    assert _post(standin, {**_body(), "model": "m1"}, headers=ok).status_code == 200
    models = httpx.get(standin.base_url + "/models", headers=ok).json()
    assert [m["id"] for m in models["data"]] == ["m1"]
    standin.control(api_key=None, models=[], supports_logprobs=False, supports_response_format=False)
    refused = _post(standin, _body(logprobs=True))
    assert refused.status_code == 400 and "logprobs" in refused.json()["error"]["message"]
    assert _post(standin, _body(response_format={"type": "json_object"})).status_code == 400
    assert _post(standin, {"messages": "nope"}).status_code == 400


def test_control_rejects_unknown_settings(standin):
    assert httpx.post(standin.url + "/_control", json={"polcy": "first"}).status_code == 422
    assert httpx.post(standin.url + "/_control", json={"policy": "best"}).status_code == 422


def test_request_log_replaces_images_with_hashes(standin):
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    _post(standin, judge.build_body(_pair()))
    entry = standin.requests(1)[0]
    assert entry["images"] == 8 and entry["status"] == 200 and "a dog" in entry["text"]
    assert "base64" not in json.dumps(entry["body"])


# --------------------------------------------------------------------------- Batch API


def _batch_lines(standin: StandinServer, n: int = 3, cursed: int | None = None) -> bytes:
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    lines = []
    for i in range(n):
        request = _pair(sharp_first=i % 2 == 0)
        prompt = "FAILME" if i == cursed else f"pair {i}"
        request = SegmentRequest(
            prompt=prompt,
            frames_first=request.frames_first,
            frames_second=request.frames_second,
            start_s=0,
            end_s=1,
        )
        body = judge.build_body(request)
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def _wait(client, batch_id: str, seen: list[str]):
    for _ in range(1000):
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.01)
    raise AssertionError(f"batch stuck in {seen}")


def test_batch_api_through_the_official_client(standin):
    from openai import OpenAI

    standin.control(latency_ms=150, max_concurrency=2, rules=[{"match": "FAILME", "status": 500}])
    client = OpenAI(base_url=standin.base_url, api_key="unused", max_retries=0)
    uploaded = client.files.create(
        file=("requests.jsonl", _batch_lines(standin, 3, cursed=1)), purpose="batch"
    )
    assert uploaded.purpose == "batch" and uploaded.filename == "requests.jsonl" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    seen: list[str] = [batch.status]
    batch = _wait(client, batch.id, seen)
    assert batch.status == "completed" and "in_progress" in seen
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        3,
        2,
        1,
    )
    outputs = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["req-0", "req-2"]
    assert [e["custom_id"] for e in errors] == ["req-1"] and errors[0]["response"]["status_code"] == 500
    judge = OpenAIJudge("standin-vlm", base_url=standin.base_url)
    for out in outputs:
        assert out["id"].startswith("batch_req_") and out["error"] is None
        assert out["response"]["status_code"] == 200 and out["response"]["request_id"]
        judgment = judge.parse_body(out["response"]["body"])
        assert judgment.label in ("A", "B", "tie") and judgment.prob_source == "logprobs"


def test_batch_cancel_stops_remaining_requests(standin):
    from openai import OpenAI

    standin.control(latency_ms=300, max_concurrency=1, batch_delay_s=0)
    client = OpenAI(base_url=standin.base_url, api_key="unused", max_retries=0)
    uploaded = client.files.create(file=("requests.jsonl", _batch_lines(standin, 4)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    seen: list[str] = []
    while client.batches.retrieve(batch.id).status != "in_progress":
        time.sleep(0.01)
    assert client.batches.cancel(batch.id).status == "cancelling"
    batch = _wait(client, batch.id, seen)
    assert batch.status == "cancelled" and batch.request_counts.completed < 4


def test_batch_with_invalid_lines_fails_with_line_errors(standin):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=standin.base_url, api_key="unused", max_retries=0)
    uploaded = client.files.create(file=("bad.jsonl", b'not json\n{"custom_id": "x"}\n'), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = _wait(client, batch.id, [])
    assert batch.status == "failed"
    assert [e.line for e in batch.errors.data] == [1, 2]
    with pytest.raises(NotFoundError):
        client.files.retrieve("file-nope")


# --------------------------------------------------------------------------- separate process


def test_standin_process_serves_and_takes_settings():
    proc, base_url = start_standin_process(policy="first", logprobs=False)
    try:
        data = httpx.post(base_url + "/chat/completions", json=_body(logprobs=True), timeout=10).json()
        assert json.loads(data["choices"][0]["message"]["content"])["label"] == "A"
        assert data["choices"][0]["logprobs"] is None  # the logprobs=False setting went through /_control
    finally:
        proc.terminate()
        proc.wait(timeout=10)
