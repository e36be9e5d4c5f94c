"""Whose control plane runs on Serve, and what `up` does about another store's."""

from __future__ import annotations

import pytest

from control_plane.errors import OwnershipConflictError
from control_plane.ownership import STORE_ID_ENV, AppOwner, claim_control_plane

MINE, THEIRS = "a" * 32, "b" * 32


def running(store_id: str | None, home: str) -> dict:
    env = {"MODELPLANE_HOME": home, **({STORE_ID_ENV: store_id} if store_id else {})}
    return {"applications": {"control-plane": {"deployments": {"ControlPlane": {
        "deployment_config": {"ray_actor_options": {"runtime_env": {"env_vars": env}}}}}}}}


def test_nothing_running_or_our_own_control_plane_is_no_conflict() -> None:
    assert claim_control_plane("/srv/a", MINE, take_over=False, details={"applications": {}}) is None
    assert claim_control_plane("/srv/a", MINE, take_over=False,
                               details=running(MINE, "/srv/elsewhere")) is None  # a shared database


def test_another_stores_control_plane_stops_up_naming_both_homes() -> None:
    with pytest.raises(OwnershipConflictError) as raised:
        claim_control_plane("/srv/b", MINE, take_over=False, details=running(THEIRS, "/srv/a"))
    message = raised.value.message
    assert "/srv/a" in message and "/srv/b" in message and THEIRS in message and MINE in message
    assert "--take-over" in message and "Nothing was changed" in message
    assert raised.value.http_status == 409 and raised.value.detail["running_home"] == "/srv/a"


def test_take_over_is_explicit_and_says_whom_it_replaces() -> None:
    replaced = claim_control_plane("/srv/b", MINE, take_over=True, details=running(THEIRS, "/srv/a"))
    assert replaced == AppOwner(THEIRS, "/srv/a")


def test_an_unmarked_control_plane_is_ours_only_from_its_own_home() -> None:
    assert claim_control_plane("/srv/a", MINE, take_over=False, details=running(None, "/srv/a")) is None
    with pytest.raises(OwnershipConflictError, match="/srv/a"):
        claim_control_plane("/srv/b", MINE, take_over=False, details=running(None, "/srv/a"))
