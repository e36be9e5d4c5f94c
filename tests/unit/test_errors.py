"""One exception tree: every package's errors root in ModelplaneError, pickle intact, and
answer both planes with one body."""

from __future__ import annotations

import inspect
import pickle

import pytest

import control_plane.errors
import kernels.errors
import serving.errors
import training.errors
from control_plane.schemas import ErrorBody
from modelplane.errors import ModelplaneError, error_body

_MODULES = [kernels.errors, serving.errors, control_plane.errors, training.errors]
_ERRORS = [
    cls
    for module in _MODULES
    for _, cls in inspect.getmembers(module, inspect.isclass)
    if issubclass(cls, Exception) and cls.__module__ == module.__name__
]


def test_every_package_has_errors() -> None:
    assert {cls.__module__ for cls in _ERRORS} == {m.__name__ for m in _MODULES}


@pytest.mark.parametrize("cls", _ERRORS, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_error_roots_in_modelplane_error_and_pickles(cls: type[ModelplaneError]) -> None:
    assert issubclass(cls, ModelplaneError)
    assert 400 <= cls.http_status <= 599
    assert cls.code and cls.code == cls.code.lower()
    error = cls("what went wrong; what to do", detail={"field": "inputs[0].shape"})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == "what went wrong; what to do"
    assert copy.detail == {"field": "inputs[0].shape"}
    assert error_body(copy, "r1") == {"error": "what went wrong; what to do", "code": cls.code,
                                      "request_id": "r1", "detail": {"field": "inputs[0].shape"}}


def test_the_error_body_is_the_documented_schema() -> None:
    # The message, not the code, is under "error": tritonclient prints that field.
    body = error_body(serving.errors.InvalidRequestError("shape [2] is not [1, 4]"), "abc")
    assert ErrorBody.model_validate(body).model_dump() == body
    assert body["error"] == "shape [2] is not [1, 4]" and body["code"] == "invalid_request"
    assert body["detail"] == {}


def test_error_codes_are_unique_within_a_package() -> None:
    # The same condition may recur across packages (payload_too_large) under one code.
    for module in _MODULES:
        codes = [cls.code for cls in _ERRORS if cls.__module__ == module.__name__]
        assert len(codes) == len(set(codes)), module.__name__
