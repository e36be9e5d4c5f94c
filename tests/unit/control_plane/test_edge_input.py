"""What a client sends is checked at the edge: non-finite numbers, other scripts' digits and
integers past the store's range are 4xx naming the field, never a 500 later (issue 13)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from control_plane.auth import Principal
from control_plane.errors import InvalidInputError, PermissionDeniedError
from control_plane.registry import parse_ref
from control_plane.schemas import ParamsUpdate, Role, RunCreate, TrafficUpdate
from modelplane.errors import ConfigurationError
from modelplane.settings import Settings
from serving.feedback_auth import LABEL_SOURCE_ROLES


@pytest.mark.parametrize(("body", "where"), [
    ('{"experiment": "e", "params": {"lr": NaN}}', "lr is nan"),
    ('{"experiment": "e", "params": {"grid": {"lr": [0.1, Infinity]}}}', "grid.lr[1] is inf"),
    ('{"experiment": "e", "environment": {"load": -Infinity}}', "load is -inf"),
])
def test_non_finite_run_params_are_refused_naming_where(body: str, where: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RunCreate.model_validate_json(body)
    error = raised.value.errors()[0]
    assert error["loc"][0] in ("params", "environment") and where in error["msg"]


def test_finite_params_of_any_shape_pass_unchanged() -> None:
    params = {"lr": 0.1, "layers": [64, 32], "opt": {"name": "adam", "beta": [0.9, 0.999]},
              "note": "nan", "on": True, "none": None}
    assert RunCreate(experiment="e", params=params).params == params
    with pytest.raises(ValidationError, match="x is nan"):
        ParamsUpdate.model_validate_json('{"params": {"x": NaN}}')


@pytest.mark.parametrize("ref", ["m:²", "m:\u0663", "m:99999999999", "m:" + "9" * 5000,
                                 "m@champion\n", "m:3\n", "m\n"])
def test_model_refs_take_ascii_versions_the_store_can_hold(ref: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        parse_ref(ref)
    assert raised.value.detail["field"] == "model_ref"


def test_a_digest_or_run_id_with_a_trailing_newline_is_refused() -> None:
    """A regular expression's $ also matches before a final newline: "champion\n" was an
    alias of its own, listed beside the real one."""
    from control_plane.artifacts import check_digest
    from training.checkpoints import is_run_id

    with pytest.raises(InvalidInputError):
        check_digest("a" * 64 + "\n")
    assert check_digest("a" * 64) == "a" * 64
    assert not is_run_id("0" * 32 + "\n") and is_run_id("0" * 32)


def test_model_refs_still_parse() -> None:
    assert parse_ref("m:2147483647") == ("m", 2147483647, None)
    assert parse_ref("m@champion") == ("m", None, "champion")


@pytest.mark.parametrize("body", [
    '{"weights": {"99999999999999999999": 100}}',
    '{"weights": {"0": 100}}',
    '{"weights": {"1": 100}, "shadows": [99999999999999999999]}',
])
def test_traffic_versions_are_bounded_like_every_version(body: str) -> None:
    with pytest.raises(ValidationError):
        TrafficUpdate.model_validate_json(body)


def test_labeler_sits_between_reader_and_deployer() -> None:
    labeler = Principal(name="labels", role=Role.LABELER)
    labeler.require(Role.READER)
    labeler.require(Role.LABELER)
    with pytest.raises(PermissionDeniedError, match="needs deployer"):
        labeler.require(Role.DEPLOYER)
    with pytest.raises(PermissionDeniedError):
        Principal(name="eyes", role=Role.READER).require(Role.LABELER)
    Principal(name="ops", role=Role.DEPLOYER).require(Role.LABELER)
    # The data plane's own list of who may post labels (it cannot import the control plane)
    # is exactly the roles the control plane ranks at labeler or above.
    ranked = set()
    for role in Role:
        try:
            Principal(name="any", role=role).require(Role.LABELER)
        except PermissionDeniedError:
            continue
        ranked.add(role.value)
    assert ranked == LABEL_SOURCE_ROLES


def test_the_edge_settings_are_read_checked_and_handed_on(tmp_path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path),
                                  "MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS": "yes",
                                  "MODELPLANE_MAX_REQUEST_MB": "8"})
    assert settings.feedback_allows_anonymous and settings.max_request_bytes == 8 * 1024 * 1024
    assert Settings.from_env(settings.to_env()) == settings
    default = Settings.from_env({"MODELPLANE_HOME": str(tmp_path)})
    assert not default.feedback_allows_anonymous and default.max_request_bytes == 64 * 1024 * 1024
    for name, value in (("MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS", "maybe"),
                        ("MODELPLANE_MAX_REQUEST_MB", "0"), ("MODELPLANE_MAX_REQUEST_MB", "5000")):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({"MODELPLANE_HOME": str(tmp_path), name: value})


@pytest.mark.parametrize(("model", "body", "field"), [
    (RunCreate, '{"experiment": "e", "name": "%s"}' % ("x" * 129), "name"),
    (RunCreate, '{"experiment": "e", "parent_run_id": "%s"}' % ("a" * 33), "parent_run_id"),
])
def test_run_strings_are_bounded_as_the_store_holds_them(model, body: str, field: str) -> None:
    """PostgreSQL refused them at the flush (a 500); SQLite kept a name of 4 MiB."""
    with pytest.raises(ValidationError) as raised:
        model.model_validate_json(body)
    assert raised.value.errors()[0]["loc"] == (field,)


def test_a_version_s_run_id_is_bounded_where_it_is_registered(registry) -> None:
    """PostgreSQL refused a longer one at the flush (a 500); a version stored before the
    bound still reads."""
    from control_plane.schemas import Lineage, VersionCreate
    from tests.onnx_models import linear_classifier, linear_classifier_manifest
    from tests.unit.control_plane.conftest import ALICE

    info = registry.artifacts.put([linear_classifier(seed=0)])
    manifest = {**linear_classifier_manifest(), "lineage": {"run_id": "a" * 33}}
    with pytest.raises(InvalidInputError) as refused:
        registry.register_version("iris", VersionCreate(artifact_digest=info.digest,
                                                        manifest=manifest), ALICE)
    assert refused.value.detail == {"field": "manifest.lineage.run_id"}
    assert Lineage.model_validate({"run_id": "entity/project/run-" + "x" * 40}).run_id


def test_a_nan_bound_of_a_data_range_is_refused() -> None:
    """NaN compares false with every value: the range check passed whatever data came."""
    from control_plane.pipelines.data_validation import DataExpectations

    with pytest.raises(ValidationError) as raised:
        DataExpectations.model_validate_json('{"ranges": {"age": {"min": NaN}}}')
    assert raised.value.errors()[0]["loc"][:3] == ("ranges", "age", "min")
