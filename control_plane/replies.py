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
    """``data`` (a decoded JSON answer) as ``model``, without the fields it does not know.

    Only fields whose place in ``data`` is plain (keys and list indexes) are left out. Inside
    a union of models, pydantic names each member tried in the location, and a field one
    member knows is "unknown" to another: leaving those out could pick the wrong member and
    lose a value, so such an answer is refused as before."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = error.errors()
        unknown = [problem["loc"] for problem in problems if problem["type"] == "extra_forbidden"]
        if not unknown or len(unknown) != len(problems):
            raise
        trimmed = copy.deepcopy(data)
        if not all(_drop(trimmed, location) for location in unknown):
            raise
    return model.model_validate(trimmed)


def read_replies(model: type[M], data: Any) -> list[M]:
    """A JSON list of answers, each as ``model``."""
    if not isinstance(data, list):
        raise TypeError(f"expected a list of {model.__name__}, got {type(data).__name__}")
    return [read_reply(model, item) for item in data]


def _drop(document: Any, location: Sequence[int | str]) -> bool:
    """Remove the field at ``location``; False where a step of it is not a key or an index
    of ``document`` (the name of a union's member)."""
    *path, last = location
    node = document
    for step in path:
        is_key = isinstance(node, dict) and step in node
        is_index = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if not (is_key or is_index):
            return False
        node = node[step]
    if not isinstance(node, dict) or last not in node:
        return False
    del node[last]
    return True
