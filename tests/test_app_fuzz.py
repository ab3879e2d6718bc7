"""Schema-driven fuzzing of the service: schemathesis generates valid and invalid requests from the
app's own OpenAPI schema for every operation, and none may be answered with a 5xx other than the
documented ones (502/503 cannot happen here: the judge is in-process and the queue is large)."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from labeler.engine import Engine, EngineConfig
from labeler.media import video
from labeler.service.app import create_app
from labeler.service.settings import ServiceSettings
from tests.fake_judges import BrightnessJudge, frames_with_level

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow

FUZZ_SETTINGS = hypothesis.settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is reproducible
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-media")
    # Files a generated path might hit by name: the by-path form is exercised past the path checks.
    video.write_video(root / "a.mp4", frames_with_level(8, 120), 8.0, crf=8)
    video.write_video(root / "b.mp4", frames_with_level(8, 90), 8.0, crf=8)
    settings = ServiceSettings(media_root=root, max_body_bytes=256 * 1024, max_segments=8, max_batch_pairs=4)
    app = create_app(settings, engine=Engine(BrightnessJudge(), EngineConfig(frames_per_segment=2)))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def assert_not_a_server_error(case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    content_type = response.headers.get("content-type") or [""]  # schemathesis keeps header lists
    json_error = response.status_code >= 400 and content_type[0].startswith("application/json")
    if json_error and case.method.upper() != "HEAD":  # a HEAD answer has the headers but no body
        body = response.json()
        assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]), body


# schemathesis' own pytest plugin (schema.parametrize / from_fixture) breaks on pytest 9's nodes, so
# hypothesis drives each operation's strategy directly: the same generation, checks and shrinking.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_is_a_server_error(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /label", "POST /label/batch", "GET /healthz"} <= labels, labels
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=mode)
        check = FUZZ_SETTINGS(hypothesis.given(case=strategy)(assert_not_a_server_error))
        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # An operation without parameters or body (GET /healthz) has no invalid variant to send.
            assert mode is GenerationMode.NEGATIVE, operation.label
