"""One exception tree: every package's errors root in ModelplaneError and pickle intact."""

from __future__ import annotations

import inspect
import pickle

import pytest

import control_plane.errors
import kernels.errors
import serving.errors
import training.errors
from modelplane.errors import ModelplaneError

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
    assert copy.to_dict()["error"] == cls.code


def test_error_codes_are_unique_within_a_package() -> None:
    # The same condition may recur across packages (payload_too_large) under one code.
    for module in _MODULES:
        codes = [cls.code for cls in _ERRORS if cls.__module__ == module.__name__]
        assert len(codes) == len(set(codes)), module.__name__
