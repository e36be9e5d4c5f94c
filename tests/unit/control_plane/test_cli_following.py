"""Commands that follow progress wait out a control plane, store or Monitor that cannot
answer for a moment, and give up after a while; any other error ends them at once."""

from __future__ import annotations

import pytest

from control_plane.cli.following import follow
from control_plane.errors import (
    ConflictError,
    ControlPlaneUnavailableError,
    MonitorUnavailableError,
    NotFoundError,
    SchemaOutdatedError,
    StoreUnavailableError,
    cannot_answer_now,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def failing(errors: list[Exception], answer: str = "answer"):
    def fetch() -> str:
        if errors:
            raise errors.pop(0)
        return answer
    return fetch


def test_a_control_plane_or_store_away_for_a_moment_is_waited_out_and_said() -> None:
    clock, said = Clock(), []
    away = [ControlPlaneUnavailableError("cannot reach the control plane at http://cp"),
            StoreUnavailableError("the store cannot be reached", detail={"status": 503}),
            MonitorUnavailableError("the Monitor did not answer", detail={"status": 503})]
    assert follow(failing(away), said.append, pause_s=2, sleep=clock.sleep,
                  clock=lambda: clock.now) == "answer"
    assert len(said) == 3 and clock.now == 6
    assert said[0].startswith("cannot reach the control plane at http://cp (waiting 0s of 60s)")
    assert said[2].startswith("the Monitor did not answer (waiting 4s")


def test_patience_runs_out_with_the_last_error() -> None:
    clock, said = Clock(), []
    away = [StoreUnavailableError(f"down {n}", detail={"status": 503}) for n in range(100)]
    with pytest.raises(StoreUnavailableError, match="down 10"):
        follow(failing(away), said.append, patience_s=10, pause_s=1, sleep=clock.sleep,
               clock=lambda: clock.now)
    assert len(said) == 10


@pytest.mark.parametrize("error", [
    NotFoundError("rollout #9 does not exist", detail={"status": 404}),
    SchemaOutdatedError("run `modelplane db upgrade`", detail={"status": 503}),
    ConflictError("rollout #9 ended already", detail={"status": 409}),
])
def test_an_answer_that_time_does_not_change_ends_the_watch_at_once(error: Exception) -> None:
    said: list[str] = []
    with pytest.raises(type(error)):
        follow(failing([error]), said.append, sleep=lambda s: None)
    assert said == [] and not cannot_answer_now(error)
