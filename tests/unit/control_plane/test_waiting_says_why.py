"""A deploy that cannot run says why: Serve's message on the application, else its
deployment's (an application deploying says nothing itself), reaches the endpoint's
serving state and a `--wait` that times out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from control_plane.cli.serving import _saying_why
from control_plane.errors import ControlPlaneUnavailableError, NotFoundError
from control_plane.reconciler import _message

UNSCHEDULABLE = ("Deployment 'endpoint' in application 'endpoint-big' has 1 replicas that have "
                 "taken more than 30s to be scheduled. Resources required for each replica: "
                 '{"CPU": 64.0}, total resources available: {"CPU": 1.65}.')


def test_an_application_deploying_takes_its_deployment_s_message() -> None:
    app = {"status": "DEPLOYING", "message": "",
           "deployments": {"endpoint": {"status": "UPDATING", "message": UNSCHEDULABLE}}}
    assert _message(app) == UNSCHEDULABLE
    assert _message({**app, "message": "the application's own"}) == "the application's own"
    assert _message({"status": "RUNNING", "deployments": {"endpoint": {"message": ""}}}) == ""


class Api:
    def __init__(self, serving: object | Exception) -> None:
        self.serving = serving

    def get_endpoint(self, name: str) -> SimpleNamespace:
        if isinstance(self.serving, Exception):
            raise self.serving
        return SimpleNamespace(serving=self.serving)


def _wait_times_out() -> None:
    raise ControlPlaneUnavailableError("big did not load version 1 within 60s; `modelplane status` "
                                       "and `serve status` show why")


def test_a_wait_that_times_out_says_what_serve_said() -> None:
    pending = SimpleNamespace(state="pending", error=f"endpoint-big is DEPLOYING: {UNSCHEDULABLE}")
    with pytest.raises(ControlPlaneUnavailableError) as raised, _saying_why(Api(pending), "big"):
        _wait_times_out()
    assert "big did not load version 1 within 60s" in raised.value.message
    assert 'the control plane last saw it pending: endpoint-big is DEPLOYING: Deployment' in raised.value.message
    assert '"CPU": 64.0' in raised.value.message


@pytest.mark.parametrize("serving", [None, SimpleNamespace(state="applied", error=None),
                                     NotFoundError("no endpoint named big")])
def test_with_nothing_more_to_say_the_wait_s_own_error_stands(serving: object) -> None:
    with pytest.raises(ControlPlaneUnavailableError, match=r"show why$"), \
            _saying_why(Api(serving), "big"):
        _wait_times_out()
