"""Writes to Serve's controller are waited for a bounded time, one at a time."""

from __future__ import annotations

import threading

import pytest
from ray.exceptions import GetTimeoutError, RayActorError

from control_plane.errors import ControlPlaneUnavailableError
from control_plane.serve_writes import BoundedWrites, ServeWriteUnanswered


def test_a_write_the_controller_does_not_take_fails_the_pass_and_holds_the_next() -> None:
    wedged = threading.Event()
    sent: list[str] = []
    writes = BoundedWrites(timeout_s=0.2)

    def deploy() -> None:
        sent.append("deploy")
        wedged.wait(30)

    try:
        with pytest.raises(ControlPlaneUnavailableError,
                           match="did not take the deploy of e1 within 0.2 s"):
            writes.run("the deploy of e1", deploy)
        # Another write would queue behind it in the controller: none is started.
        with pytest.raises(ControlPlaneUnavailableError,
                           match=r"earlier write to Serve \(the deploy of e1\) still waits"):
            writes.run("the delete of e2", lambda: sent.append("delete"))
        assert sent == ["deploy"]
    finally:
        wedged.set()
    assert writes.wait_for_stalled(5)
    writes.run("the delete of e2", lambda: sent.append("delete"))  # answering again
    assert sent == ["deploy", "delete"]


def test_writes_from_several_threads_past_their_bound_all_hold_the_next() -> None:
    """Two passes (the reconciler's and a rollout's) whose writes both outlive the bound:
    the second no longer replaced the first as the one waited for, so a third was sent
    while the first still waited, and could land after it."""
    wedged = threading.Event()
    writes = BoundedWrites(timeout_s=0.3)
    outcomes: list[str] = []

    def write_from_a_thread(name: str) -> None:
        try:
            writes.run(name, lambda: wedged.wait(30))
        except ControlPlaneUnavailableError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=write_from_a_thread, args=(f"the deploy of e{i}",))
               for i in (1, 2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(outcomes) == 2 and all("did not take" in o for o in outcomes), outcomes
        assert len(writes._stalled) == 2
        with pytest.raises(ControlPlaneUnavailableError, match="still waits"):
            writes.run("the delete of e3", lambda: None)
    finally:
        wedged.set()
    assert writes.wait_for_stalled(5)
    writes.run("the delete of e3", lambda: None)


def test_a_write_s_own_error_is_raised_as_it_is() -> None:
    def refused() -> None:
        raise ValueError("bad route prefix")

    with pytest.raises(ValueError, match="bad route prefix"):
        BoundedWrites(timeout_s=5).run("the deploy of e1", refused)


@pytest.mark.parametrize("error", [
    RayActorError(), GetTimeoutError("Get timed out"), ConnectionError("connection refused")],
    ids=["actor died", "get timed out", "connection refused"])
def test_a_controller_not_reached_is_unanswered_not_refused(error: Exception) -> None:
    """Said as a refusal, the reconciler held the write to the endpoint's backoff (up to
    5 minutes) after the controller came back."""
    def unreached() -> None:
        raise error

    with pytest.raises(ServeWriteUnanswered, match="could not be reached") as raised:
        BoundedWrites(timeout_s=5).run("the deploy of e1", unreached)
    assert raised.value.__cause__ is error
