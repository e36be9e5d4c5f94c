"""Writes to Serve's controller are waited for a bounded time, one at a time."""

from __future__ import annotations

import threading

import pytest

from control_plane.errors import ControlPlaneUnavailableError
from control_plane.serve_writes import BoundedWrites


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
    writes._waiting.join(5)  # type: ignore[union-attr]
    writes.run("the delete of e2", lambda: sent.append("delete"))  # answering again
    assert sent == ["deploy", "delete"]


def test_a_write_s_own_error_is_raised_as_it_is() -> None:
    def refused() -> None:
        raise ValueError("bad route prefix")

    with pytest.raises(ValueError, match="bad route prefix"):
        BoundedWrites(timeout_s=5).run("the deploy of e1", refused)
