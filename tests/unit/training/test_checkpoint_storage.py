"""Where a job's checkpoints go: a store every node reaches is checked before the run
starts (against moto's S3-protocol server), and a local folder on a cluster of several
nodes is called out."""

from __future__ import annotations

import socket

import pytest

from tests.s3_server import S3Server
from training.errors import InvalidJobSpecError
from training.storage import check_storage, is_remote


def test_a_reachable_bucket_passes_and_an_unreachable_one_names_the_field(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = S3Server().start()
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        said: list[str] = []
        check_storage(server.uri("checkpoints"), nodes=3, echo=said.append)
        assert said == []
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
        with pytest.raises(InvalidJobSpecError) as caught:
            check_storage(server.uri("checkpoints"), nodes=3, echo=said.append)
    finally:
        server.stop()
    assert caught.value.detail == {"field": "checkpoint.storage_path"}
    message = caught.value.message
    assert message.startswith(f"checkpoint.storage_path: {server.uri('checkpoints')} cannot be "
                              "reached from the job: ") and "ray start" in message, message
    assert "\n" not in message


def test_a_local_folder_is_fine_on_one_node_and_called_out_on_several(tmp_path) -> None:
    said: list[str] = []
    check_storage(str(tmp_path), nodes=1, echo=said.append)
    assert said == []
    check_storage(str(tmp_path), nodes=3, echo=said.append)
    assert len(said) == 1 and "every node mounts" in said[0] and "s3://" in said[0]
    assert is_remote("s3://bucket/x") and not is_remote("/tmp/x") and not is_remote("file:///x")
