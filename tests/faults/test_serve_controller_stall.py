"""Serve's controller stopped (SIGSTOP: wedged, or restarting without end) while the platform
runs: a read of Serve's applications gives up in its bound and says why, where Serve's own
read waited for ever and held the reconciler's passes, the rollout loop settling a step
through them, and `up` and `down` with it; a metrics scrape leaves the replica counts out
rather than holding one of the API's threads. Once the controller runs again, reads answer.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from control_plane.errors import ControlPlaneUnavailableError
from control_plane.ownership import serve_details
from tests.platform import Platform


def _controller_pid() -> int:
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    def getpid(_controller: object) -> int:
        import os

        return os.getpid()

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return int(ray.get(controller.__ray_call__.remote(getpid), timeout=30))


def test_a_wedged_serve_controller_costs_a_read_its_bound_not_for_ever(
        platform: Platform) -> None:
    from control_plane.observability import SERVE_READ_TIMEOUT_S, running_replicas

    assert "applications" in serve_details()
    assert running_replicas().get("control-plane", 0) >= 1
    pid = _controller_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ControlPlaneUnavailableError, match="did not answer within 2 s"):
            serve_details(timeout_s=2)
        read_took = time.monotonic() - started
        started = time.monotonic()
        counted = running_replicas()
        scrape_took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    # Their bounds, and a loaded host's lag; not the stop's length.
    assert read_took < 15, read_took
    assert counted == {} and scrape_took < SERVE_READ_TIMEOUT_S + 10, (counted, scrape_took)
    assert "applications" in serve_details()  # running again, it answers
    assert running_replicas().get("control-plane", 0) >= 1


def test_a_wedged_serve_controller_costs_the_reconciler_s_write_its_bound(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's deploy and delete wait on the controller without a bound: wedged between the
    reconciler's read and its write, it held the pass (and the rollout loop settling a step
    through it) for good. The write gives up in its bound; none other is sent while it
    waits; a read meanwhile still gives up in its own (the write dropped Serve's cached
    client, whose making again asks the controller without a bound); once the controller
    runs again the write lands, and writes go through."""
    from ray import serve

    import control_plane.serve_writes
    from control_plane.reconciler import RayServeBackend

    @serve.deployment(ray_actor_options={"num_cpus": 0.01})
    class Probe:
        def __call__(self) -> str:
            return "ok"

    monkeypatch.setattr(control_plane.serve_writes, "SERVE_WRITE_TIMEOUT_S", 8.0)
    backend = RayServeBackend()
    pid = _controller_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ControlPlaneUnavailableError,
                           match="did not take the deploy of stall-probe within 8 s"):
            backend.deploy("stall-probe", None, Probe.bind())
        deploy_took = time.monotonic() - started
        with pytest.raises(ControlPlaneUnavailableError, match="still waits"):
            backend.delete("stall-probe")
        started = time.monotonic()
        with pytest.raises(ControlPlaneUnavailableError, match="did not answer within 2 s"):
            serve_details(timeout_s=2)
        read_took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert deploy_took < 25 and read_took < 15, (deploy_took, read_took)  # bounds + lag
        assert backend._writes.wait_for_stalled(60), "the write never ended once answered"
        assert "stall-probe" in (serve_details().get("applications") or {})  # it landed
        backend.delete("stall-probe")  # the controller answers: the next write goes through
    finally:
        serve.delete("stall-probe", _blocking=False)
    deadline = time.monotonic() + 60
    while "stall-probe" in (serve_details().get("applications") or {}):
        assert time.monotonic() < deadline, "the probe application was never deleted"
        time.sleep(0.5)


def test_a_second_up_on_a_wedged_serve_controller_ends_in_its_bound_saying_what_to_do(
        platform: Platform) -> None:
    """`up` waited on Serve's controller without a bound (``serve.start`` asks it for its
    HTTP options, each application's submission for its deploy): wedged, it held `up`
    until Ctrl-C. Each write is now bounded by `up`'s own budget, and `up` stops at the
    first that is late, naming it and what to do; the platform serves on."""
    from control_plane.platform import start_platform

    said: list[str] = []
    pid = _controller_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ControlPlaneUnavailableError,
                           match=r"did not take the start of Serve within 6 s.*`modelplane up` again"):
            start_platform(platform.settings, progress=said.append, timeout_s=6)
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took < 30, (took, said)  # its bound, and a loaded host's lag
    assert any("starting Serve" in line for line in said), said
    assert platform.healthy()
    assert "applications" in serve_details()
