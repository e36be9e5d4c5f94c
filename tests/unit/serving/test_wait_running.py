"""`up` submits its applications together and waits for them together: it returns once
all run, names the one that failed with Serve's message, and names those still waiting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.serve.schema import ApplicationStatus

from serving.applications import wait_running


def _serve(monkeypatch: pytest.MonkeyPatch, timeline: list[dict[str, tuple[str, str]]]) -> list[int]:
    polls: list[int] = []

    def status() -> SimpleNamespace:
        polls.append(1)
        now = timeline[min(len(polls), len(timeline)) - 1]
        return SimpleNamespace(applications={
            name: SimpleNamespace(status=ApplicationStatus(state), message=message)
            for name, (state, message) in now.items()})

    monkeypatch.setattr("ray.serve.status", status)
    return polls


def test_returns_once_every_application_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = _serve(monkeypatch, [
        {"a": ("DEPLOYING", ""), "b": ("DEPLOYING", "")},
        {"a": ("RUNNING", ""), "b": ("DEPLOYING", "")},
        {"a": ("RUNNING", ""), "b": ("RUNNING", "")},
    ])
    wait_running(["a", "b"], timeout_s=10, poll_s=0.001)
    assert len(polls) == 3


def test_a_failed_application_is_named_with_serves_message(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, [{"a": ("RUNNING", ""),
                          "grpc-ingress": ("DEPLOY_FAILED", "cannot listen for gRPC on 0.0.0.0:8001")}])
    with pytest.raises(RuntimeError, match="grpc-ingress failed: cannot listen for gRPC"):
        wait_running(["a", "grpc-ingress"], timeout_s=10, poll_s=0.001)


def test_a_timeout_names_what_still_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, [{"a": ("RUNNING", ""), "b": ("DEPLOYING", "")}])
    with pytest.raises(TimeoutError, match=r"b \(DEPLOYING\), c \(not submitted\)"):
        wait_running(["a", "b", "c"], timeout_s=0.05, poll_s=0.001)
