"""Reading a control plane's answers in a client that may be older than the server.

Every wire model forbids fields it does not know, so a request with a misspelt field is
refused rather than half-applied. An answer is the other way round: a newer control plane
adds fields (a token's ``model``, a pipeline's ``author``), and a client from before must
read past them, not fail on them. :func:`read_reply` validates as strictly as the model
asks, and where the only complaints are fields the model does not know, leaves those out
and validates what is left, so a missing or malformed known field is still an error.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_reply(model: type[M], data: Any) -> M:
    """``data`` (a decoded JSON answer) as ``model``, without the fields it does not know."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = error.errors()
        unknown = [problem["loc"] for problem in problems if problem["type"] == "extra_forbidden"]
        if not unknown or len(unknown) != len(problems):
            raise
    trimmed = copy.deepcopy(data)
    for location in unknown:
        _drop(trimmed, location)
    return model.model_validate(trimmed)


def read_replies(model: type[M], data: Any) -> list[M]:
    """A JSON list of answers, each as ``model``."""
    if not isinstance(data, list):
        raise TypeError(f"expected a list of {model.__name__}, got {type(data).__name__}")
    return [read_reply(model, item) for item in data]


def _drop(document: Any, location: Sequence[int | str]) -> None:
    """Remove the field at ``location``. Pydantic puts the names of union members and
    validators in a location too; a step that is not a key or index here is one of them."""
    *path, last = location
    node = document
    for step in path:
        is_key = isinstance(node, dict) and step in node
        is_index = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if is_key or is_index:
            node = node[step]
    if isinstance(node, dict):
        node.pop(last, None)
