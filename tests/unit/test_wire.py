"""Documents from outside refuse JSON true and false where a number is meant: read laxly,
``{"version": true}`` moved an alias to version 1 and ``"max_attempts": false`` set 0."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, ValidationError

from modelplane.wire import ClosedModel


class Document(ClosedModel):
    count: int = 0
    share: Annotated[float, Field(ge=0)] | None = None
    weights: dict[int, float] = Field(default_factory=dict)
    versions: list[int] = Field(default_factory=list)
    flag: bool = False
    either: int | bool = 0
    workers: int | Literal["auto"] = "auto"
    switch: int | Literal[True] = 0


@pytest.mark.parametrize(("raw", "field"), [
    ('{"count": true}', "count"),
    ('{"share": false}', "share"),
    ('{"weights": {"1": true}}', "weights"),
    ('{"versions": [1, true]}', "versions"),
    ('{"workers": true}', "workers"),
])
def test_a_boolean_where_a_number_is_meant_is_refused_naming_the_field(raw: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Document.model_validate_json(raw)
    (error,) = caught.value.errors()
    assert error["loc"] == (field,) and "not true or false" in error["msg"]


def test_numbers_and_booleans_where_they_are_meant_still_read() -> None:
    read = Document.model_validate_json(
        '{"count": 3, "share": 0.5, "weights": {"1": 100}, "versions": [1, 2], "flag": true, '
        '"either": true, "workers": 4, "switch": true}')
    assert (read.count, read.share, read.weights, read.versions, read.flag, read.either,
            read.workers, read.switch) == (3, 0.5, {1: 100.0}, [1, 2], True, True, 4, True)
    with pytest.raises(ValidationError):
        Document.model_validate_json('{"cuont": 3}')  # still closed


def test_the_platforms_documents_refuse_it() -> None:
    from control_plane.alerts.schemas import ReceiverSpec
    from control_plane.schemas import AliasSet, TrafficUpdate
    from training import InvalidJobSpecError
    from training.spec import parse_job_spec

    refused: list[tuple[Any, dict[str, Any]]] = [
        (AliasSet, {"version": True}),
        (TrafficUpdate, {"weights": {"1": True}}),
        (ReceiverSpec, {"name": "ops", "url": "https://hooks.example.com/x", "max_attempts": False}),
    ]
    for model, raw in refused:
        with pytest.raises(ValidationError, match="not true or false"):
            model.model_validate(raw)
    with pytest.raises(InvalidJobSpecError, match="hyperparameters.epochs: must be a number"):
        parse_job_spec({"experiment": {"name": "digits"}, "model": {"architecture": "mlp_classifier"},
                        "data": {"dataset": "digits"}, "hyperparameters": {"epochs": True}})
