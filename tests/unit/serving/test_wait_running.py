"""`up` submits its applications together and waits for them together: it returns once
all run, names the one that failed with Serve's message, and names those still waiting."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve.schema import ApplicationStatus

from serving.applications import SERVE_DETAILS_TIMEOUT_S, wait_running


def _serve(monkeypatch: pytest.MonkeyPatch, timeline: list[dict[str, tuple[str, str]]]) -> list[int]:
    """Serve's controller answering its instance details as ``timeline`` says, one entry
    per read (the last one from then on), with its enums as it sends them."""
    polls: list[int] = []

    def details(timeout_s: float) -> dict[str, Any]:
        assert 0 < timeout_s <= SERVE_DETAILS_TIMEOUT_S  # every read has a bound
        polls.append(1)
        now = timeline[min(len(polls), len(timeline)) - 1]
        return {"applications": {name: {"status": ApplicationStatus(state), "message": message}
                                 for name, (state, message) in now.items()}}

    monkeypatch.setattr("serving.applications.serve_instance_details", details)
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


@pytest.mark.parametrize(("timeline", "words"), [
    ([{"grpc-ingress": ("DEPLOY_FAILED", "Traceback (most recent call last):\n  OSError: "
                                         "[Errno 98] address already in use")}],
     "grpc-ingress failed: Traceback (most recent call last): … OSError: [Errno 98]"),
    ([{"grpc-ingress": ("DEPLOYING", "")}], "not running after 0 s: grpc-ingress"),
])
def test_up_says_what_serve_said_and_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                timeline: list, words: str) -> None:
    """An application that failed or is late was a raw traceback out of `modelplane up`."""
    from control_plane.errors import ControlPlaneUnavailableError
    from control_plane.platform import wait_platform_apps

    _serve(monkeypatch, timeline)
    with pytest.raises(ControlPlaneUnavailableError) as failed:
        wait_platform_apps(["grpc-ingress"], timeout_s=0.01, poll_s=0.001)
    assert words in failed.value.message and "modelplane up` again" in failed.value.message
    assert "\n" not in failed.value.message


def test_a_controller_that_does_not_answer_ends_the_wait_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` waited on Serve's own status read, which has no bound: a wedged controller
    held it for ever."""
    from control_plane.errors import ControlPlaneUnavailableError
    from control_plane.platform import wait_platform_apps
    from serving.applications import ServeControllerUnanswered

    def wedged(timeout_s: float) -> dict[str, Any]:
        raise ServeControllerUnanswered(f"Serve's controller did not answer within {timeout_s:g} s")

    monkeypatch.setattr("serving.applications.serve_instance_details", wedged)
    with pytest.raises(ControlPlaneUnavailableError, match="did not answer within") as failed:
        wait_platform_apps(["a"], timeout_s=0.01, poll_s=0.001)
    assert "modelplane up` again" in failed.value.message


def test_one_slow_answer_within_the_deadline_is_waited_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.applications import ServeControllerUnanswered

    reads: list[float] = []

    def slow_once(timeout_s: float) -> dict[str, Any]:
        reads.append(timeout_s)
        if len(reads) == 1:
            raise ServeControllerUnanswered("busy")
        return {"applications": {"a": {"status": ApplicationStatus("RUNNING"), "message": ""}}}

    monkeypatch.setattr("serving.applications.serve_instance_details", slow_once)
    wait_running(["a"], timeout_s=60, poll_s=0.001)
    assert len(reads) == 2
