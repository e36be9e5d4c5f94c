"""Pipeline data from local files: read only within MODELPLANE_DATA_ROOTS. The control
plane reads them with its own rights for whoever holds a deployer token, and its data
report names a file's columns and values: any CSV it can read would be shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from control_plane.errors import InvalidInputError
from control_plane.pipelines.data_sources import load_dataset, outside_data_roots
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.spec import parse_pipeline_spec
from control_plane.store import Database
from modelplane.errors import ConfigurationError
from modelplane.settings import Settings, reset_settings_cache
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.test_pipeline_runner import all_passing, spec_document

TABLE = "a,b,target\n1,2.5,0\n3,4.5,1\n"


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a data root, a folder beside it that is not one), each with a table."""
    data, private = tmp_path / "data", tmp_path / "private"
    for folder in (data, private):
        folder.mkdir()
        (folder / "table.csv").write_text(TABLE)
    monkeypatch.setenv("MODELPLANE_DATA_ROOTS", f"/srv/none, {data}")
    reset_settings_cache()
    return data, private


def test_a_file_within_a_root_is_read_by_path_or_file_url(roots: tuple[Path, Path]) -> None:
    data, _ = roots
    for uri in (str(data / "table.csv"), f"file://{data}/table.csv",
                f"{data}/sub/../table.csv"):
        assert outside_data_roots(uri) is None
        assert load_dataset(uri)["target"].tolist() == [0, 1]


def test_a_file_outside_every_root_is_refused_naming_the_setting(
        roots: tuple[Path, Path]) -> None:
    data, private = roots
    for uri in (str(private / "table.csv"), f"file://{private}/table.csv",
                f"{data}/../private/table.csv"):
        with pytest.raises(InvalidInputError, match="MODELPLANE_DATA_ROOTS") as refused:
            load_dataset(uri)
        assert str(data) in refused.value.message and "a,b" not in refused.value.message


def test_a_link_within_a_root_to_a_file_outside_it_is_refused(roots: tuple[Path, Path]) -> None:
    data, private = roots
    os.symlink(private / "table.csv", data / "linked.csv")
    os.symlink(private, data / "linked-folder")
    for uri in (str(data / "linked.csv"), str(data / "linked-folder" / "table.csv")):
        assert outside_data_roots(uri) is not None
        with pytest.raises(InvalidInputError, match="outside the folders"):
            load_dataset(uri)


def test_unset_the_root_is_the_homes_data_folder_and_a_root_must_be_absolute(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    assert settings.local_data_roots == (tmp_path / "home" / "data",)
    with pytest.raises(ConfigurationError, match="MODELPLANE_DATA_ROOTS"):
        Settings.from_env({"MODELPLANE_DATA_ROOTS": "/srv/data,relative/data"})


@pytest.mark.parametrize("field", ["data.uri", "evaluate.data_uri"])
def test_a_pipeline_naming_a_file_outside_the_roots_is_refused_naming_the_field(
        db: Database, roots: tuple[Path, Path], field: str) -> None:
    data, private = roots
    inside, outside = str(data / "table.csv"), str(private / "table.csv")
    document = spec_document(data={"uri": inside}, evaluate={"data_uri": inside})
    if field == "data.uri":  # the job's file too (they must match): what evaluate reads
        document = spec_document(data={"uri": outside}, evaluate={})
    else:
        document["evaluate"]["data_uri"] = outside
    pipelines = Pipelines(db, all_passing())
    with pytest.raises(InvalidInputError, match="MODELPLANE_DATA_ROOTS") as refused:
        pipelines.apply(parse_pipeline_spec(document), ALICE)
    assert refused.value.detail == {"field": field}
    pipelines.apply(parse_pipeline_spec(spec_document(data={"uri": inside})), ALICE)


def test_a_job_file_only_the_workers_read_is_no_concern_of_the_roots(
        db: Database, roots: tuple[Path, Path]) -> None:
    """With held-out rows of its own and no data section, the control plane never reads
    the job's file: a path on the workers' shared disk is theirs to read."""
    data, _ = roots
    document = spec_document(evaluate={"data_uri": str(data / "table.csv")})
    document["training"]["job"]["data"] = {"path": "/mnt/workers-only/train.csv",
                                           "target": "target"}
    Pipelines(db, all_passing()).apply(parse_pipeline_spec(document), ALICE)


def test_a_home_relative_path_is_read_where_it_leads(
        roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = roots
    monkeypatch.setenv("HOME", str(data.parent))
    assert outside_data_roots("~/data/table.csv") is None
    assert outside_data_roots("~/private/table.csv") is not None
    assert load_dataset("~/data/table.csv")["target"].tolist() == [0, 1]
