"""A data URI with a credential in it is refused where it would be stored for every reader
to see: a pipeline's data and evaluation URIs, and a training job's data path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from control_plane.pipelines.spec import DataStage, EvaluateStage
from modelplane.uri_credentials import credentials_in
from training.spec import parse_job_spec

SECRET_URIS = [
    ("https://alice:hunter2@data.example.com/d.csv", "a user and password"),
    ("https://alice@data.example.com/d.csv", "a user and password"),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/d.parquet", "a key and secret"),
    ("https://bucket.s3.amazonaws.com/d.csv?X-Amz-Credential=a&X-Amz-Signature=b",
     "'X-Amz-Credential'"),
    ("https://acct.blob.core.windows.net/c/d.csv?sv=2024&sig=abc", "'sig'"),
    ("https://storage.googleapis.com/b/d.csv?X-Goog-Signature=abc", "'X-Goog-Signature'"),
    ("https://api.example.com/d.csv?access_token=abc", "'access_token'"),
]
PLAIN_URIS = ["s3://bucket/d.parquet", "https://data.example.com/d.csv?version=3",
              "/data/d.csv", "sklearn://digits", "gs://b/path/d.csv", "file:///tmp/d.csv"]


@pytest.mark.parametrize(("uri", "found"), SECRET_URIS)
def test_a_credential_in_a_data_uri_is_found(uri: str, found: str) -> None:
    assert found in (credentials_in(uri) or "")


@pytest.mark.parametrize("uri", PLAIN_URIS)
def test_a_plain_data_uri_holds_none(uri: str) -> None:
    assert credentials_in(uri) is None


@pytest.mark.parametrize(("uri", "found"), SECRET_URIS[:4])
def test_pipelines_and_jobs_refuse_a_credential_in_a_data_uri(uri: str, found: str) -> None:
    for build, where in ((lambda: DataStage(uri=uri), ("uri",)),
                         (lambda: EvaluateStage(data_uri=uri), ("data_uri",))):
        with pytest.raises(ValidationError) as raised:
            build()
        error = raised.value.errors()[0]
        assert error["loc"] == where and "environment" in error["msg"], error
    with pytest.raises(Exception, match="credential") as refused:
        parse_job_spec({"experiment": {"name": "e"}, "data": {"path": uri, "target": "y"}})
    assert "data.path" in str(refused.value) or "path" in str(refused.value)


def test_a_plain_data_uri_still_passes() -> None:
    assert DataStage(uri="s3://bucket/d.parquet").uri == "s3://bucket/d.parquet"
