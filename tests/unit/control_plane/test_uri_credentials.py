"""A data URI with a credential in it is refused where it would be stored for every reader
to see: a pipeline's data and evaluation URIs, and a training job's data path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from control_plane.errors import InvalidInputError
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.spec import PipelineSpec, parse_pipeline_spec
from control_plane.store import Database
from modelplane.uri_credentials import credentials_in
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.test_pipeline_runner import EXAMPLES, spec_document
from training.errors import InvalidJobSpecError
from training.spec import load_job_spec

SECRET_URIS = [
    ("https://alice:hunter2@data.example.com/d.csv", "a user and password"),
    ("https://alice@data.example.com/d.csv", "a user before the host"),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/d.parquet", "a key and secret"),
    ("https://bucket.s3.amazonaws.com/d.csv?X-Amz-Credential=a&X-Amz-Signature=b",
     "'X-Amz-Credential'"),
    ("https://acct.blob.core.windows.net/c/d.csv?sv=2024&sig=abc", "'sig'"),
    ("https://storage.googleapis.com/b/d.csv?X-Goog-Signature=abc", "'X-Goog-Signature'"),
    ("https://api.example.com/d.csv?access_token=abc", "'access_token'"),
]
PLAIN_URIS = ["s3://bucket/d.parquet", "https://data.example.com/d.csv?version=3",
              "/data/d.csv", "sklearn://digits", "gs://b/path/d.csv", "file:///tmp/d.csv",
              # Azure's usual form: the container before the account's host.
              "abfss://data@acct.dfs.core.windows.net/t/d.parquet",
              "az://data@acct.blob.core.windows.net/d.csv"]


@pytest.mark.parametrize(("uri", "found"), SECRET_URIS)
def test_a_credential_in_a_data_uri_is_found(uri: str, found: str) -> None:
    assert found in (credentials_in(uri) or "")


@pytest.mark.parametrize("uri", PLAIN_URIS)
def test_a_plain_data_uri_holds_none(uri: str) -> None:
    assert credentials_in(uri) is None


@pytest.mark.parametrize(("uri", "found"), SECRET_URIS[:4])
def test_pipelines_and_jobs_refuse_a_credential_in_a_data_uri(
        db: Database, tmp_path: Path, uri: str, found: str) -> None:
    pipelines = Pipelines(db, {})
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    with_path = {**job, "data": {"path": uri, "target": "y"}}
    for field, document in (
            ("data.uri", spec_document(data={"uri": uri})),
            ("evaluate.data_uri", spec_document(data={"uri": "sklearn://breast_cancer"},
                                                evaluate={"data_uri": uri})),
            ("training.job.data.path", spec_document(training={"job": with_path}))):
        with pytest.raises(InvalidInputError) as refused:
            pipelines.apply(parse_pipeline_spec(document), ALICE)
        assert refused.value.detail == {"field": field} and "environment" in refused.value.message
    assert pipelines.list() == []
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(with_path))
    with pytest.raises(InvalidJobSpecError, match="data.path holds a credential"):
        load_job_spec(config)
    # Where checkpoints go, or come from: the run keeps these as parameters and tags, and
    # the job's log prints them.
    for name in ("storage_path", "resume_from"):
        checkpointed = {**job, "checkpoint": {name: uri}}
        config.write_text(yaml.safe_dump(checkpointed))
        with pytest.raises(InvalidJobSpecError, match=f"checkpoint.{name} holds a credential") \
                as refused_job:
            load_job_spec(config)
        assert refused_job.value.detail == {"field": f"checkpoint.{name}"}
        with pytest.raises(InvalidInputError) as refused:
            pipelines.apply(parse_pipeline_spec(spec_document(training={"job": checkpointed})),
                            ALICE)
        assert refused.value.detail == {"field": f"training.job.checkpoint.{name}"}


def test_a_stored_spec_is_read_back_as_it_was(db: Database) -> None:
    """Checked as specs come in: one stored before still reads (its runs keep going)."""
    stored = spec_document(data={"uri": SECRET_URIS[0][0]})
    assert PipelineSpec.model_validate(stored).data.uri == SECRET_URIS[0][0]


def test_a_plain_data_uri_still_passes(db: Database) -> None:
    applied = Pipelines(db, {}).apply(parse_pipeline_spec(spec_document(
        data={"uri": "s3://bucket/d.parquet"})), ALICE)
    assert applied.spec["data"]["uri"] == "s3://bucket/d.parquet"
