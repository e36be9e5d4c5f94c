"""Parsing ``POST /v2/models/{endpoint}/feedback`` bodies into (request id, labels) pairs.

Body: ``{"feedback": [{"request_id": "…", "label": 1}, …]}``, where ``request_id`` is the
server's id of the answer (its ``x-modelplane-request-id`` header). A label is a class index,
a class name or a value; a request of several rows takes a list with one label per row.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from serving.errors import InvalidRequestError
from serving.schemas import FeedbackRequest

_FIELDS = {"feedback"}


def parse_feedback(body: bytes) -> list[tuple[str, list[Any]]]:
    """The body's items as ``(request_id, [label per row])``; 400 naming the bad field."""
    try:
        request = FeedbackRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field(first["loc"])
        raise InvalidRequestError(
            f"{field}: {first['msg']}; send {{\"feedback\": [{{\"request_id\": \"<x-modelplane-request-id of the answer>\", "
            f"\"label\": <true class or value>}}]}}",
            detail={"field": field, "reason": "malformed"},
        ) from None
    except (ValueError, json.JSONDecodeError) as error:  # not JSON at all
        raise InvalidRequestError(f"the feedback body is not JSON: {error}",
                                  detail={"field": "body", "reason": "malformed"}) from None
    return [(item.request_id, item.label if isinstance(item.label, list) else [item.label])
            for item in request.feedback]


def _field(location: tuple[Any, ...]) -> str:
    """``feedback[3].label`` from pydantic's location (union branch names dropped)."""
    text, after_index = "", False
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in _FIELDS or after_index:  # after an index: a field of an item, even unknown
            text += f".{part}" if text else part
        else:
            break
        after_index = isinstance(part, int)
    return text or "body"
