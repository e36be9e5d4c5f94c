"""The one base of every document the platform reads from outside (REST bodies, specs,
replica configurations): closed (a misspelt field is an error, not dropped), frozen, and
strict where JSON's lax reading lies.

Pydantic reads JSON ``true`` as ``1`` for an int or float field, so ``{"version": true}``
moved an alias to version 1 and ``"max_attempts": false`` set 0. Such a value is refused,
naming its field, in fields, lists and dict values alike; fields that take booleans as well
as numbers (a union with ``bool``) keep them.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_NUMBERS = (int, float)
_CONTAINERS = (list, tuple, set, frozenset)


class ClosedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and holds_boolean_for_number(field.annotation, value):
            raise ValueError("must be a number, not true or false")
        return value


def holds_boolean_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` puts a boolean where ``annotation`` wants a number."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return holds_boolean_for_number(get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if bool in options or any(isinstance(value, bool) for o in options
                                  if get_origin(o) is typing.Literal for value in get_args(o)):
            return False  # booleans are among what it takes
        return any(holds_boolean_for_number(o, value) for o in options if o is not type(None))
    if isinstance(value, bool):
        return annotation in _NUMBERS
    arguments = get_args(annotation)
    if origin in _CONTAINERS and isinstance(value, list | tuple) and arguments:
        return any(holds_boolean_for_number(arguments[0], item) for item in value)
    if origin is dict and isinstance(value, dict) and len(arguments) == 2:
        return any(holds_boolean_for_number(arguments[1], item) for item in value.values())
    return False
