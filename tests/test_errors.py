"""The one exception tree (labeler/errors.py) and the service's error table built on it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import labeler
import labeler.errors as errors
import trainer
from labeler.engine import Engine, EngineConfig
from labeler.schemas import Judgment, SegmentRequest
from labeler.service.errors import ERROR_TABLE, ServiceError, service_error
from labeler.service.settings import ServiceSettings
from tests.conftest import textured_frames
from tests.fake_judges import BrightnessJudge
from tests.service_helpers import b64_image

#: Modules that need an optional heavy dependency or start something on import.
_SKIP = ("labeler.standin.__main__", "labeler.agreement.__main__", "labeler.app")


def _exception_classes(package: Any) -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name in _SKIP:
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


@pytest.mark.parametrize("package", [labeler, trainer], ids=["labeler", "trainer"])
def test_every_exception_class_derives_from_the_root(package: Any) -> None:
    classes = _exception_classes(package)
    assert classes, "the walk found no exception classes: it is broken"
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, errors.DenseprefError)]
    assert not strays


def test_every_class_of_the_tree_is_drawn_in_its_docstring() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, name


def test_old_import_places_still_give_the_same_classes() -> None:
    from labeler.cli_options import UsageError
    from labeler.engine import BudgetExceeded
    from labeler.media.video import VideoReadError
    from labeler.schemas import FramesTooSmallError, InputError, JudgeError, TransientJudgeError

    assert UsageError is errors.UsageError and BudgetExceeded is errors.BudgetExceeded
    assert VideoReadError is errors.VideoReadError and JudgeError is errors.JudgeError
    assert issubclass(FramesTooSmallError, InputError) and issubclass(InputError, ValueError)
    assert TransientJudgeError("slow", retry_after=2.0).retry_after == 2.0


def test_the_service_table_maps_only_the_projects_own_classes() -> None:
    for rule in ERROR_TABLE:
        assert issubclass(rule.kind, errors.DenseprefError) or rule.kind is ValidationError, rule
    with pytest.raises(ValueError, match="a bug"):
        service_error(ValueError("a bug"))  # no rule: raised again, the app answers 500
    refused = service_error(errors.InputError("bad frames"))
    assert isinstance(refused, ServiceError) and refused.status_code == 400


class _BuggyJudge(BrightnessJudge):
    """A judge with an internal bug: a bare ValueError that is nobody's input."""

    name = "test-buggy"

    async def judge(self, request: SegmentRequest) -> Judgment:
        raise ValueError("internal bug: an index went out of range")


def test_a_bare_value_error_is_an_internal_error_not_the_clients_fault() -> None:
    from labeler.service.app import create_app

    frames = [b64_image(f) for f in textured_frames(2, h=32, w=32, seed=0)]
    body = {"prompt": "p", "segments": [{"frames_a": frames, "frames_b": frames, "start_s": 0, "end_s": 1}]}
    engine = Engine(_BuggyJudge(), EngineConfig(max_attempts=1))
    app = create_app(ServiceSettings(engine_args=["--no-cache"]), engine=engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/label", json=body)
    assert response.status_code == 500, response.text
    assert response.json()["error"]["type"] == "InternalError"
