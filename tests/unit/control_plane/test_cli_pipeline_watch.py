"""`pipeline status --watch` ends with the run's outcome, as `pipeline run --wait` does."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from control_plane.cli import pipelines
from control_plane.pipelines.records import RunState


class RunsApi:
    """A control plane whose run goes running → ``ends``."""

    def __init__(self, ends: RunState) -> None:
        self.looks = [RunState.RUNNING, RunState.RUNNING, ends]

    def pipeline_run(self, name: str, number: int | None) -> Any:
        state = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        return SimpleNamespace(number=4, state=state, stages=[], reason="stage evaluate failed",
                               model_dump=lambda **_: {"number": 4, "state": state.value})


@pytest.mark.parametrize(("ends", "code"), [(RunState.SUCCEEDED, 0), (RunState.FAILED, 1),
                                             (RunState.CANCELLED, 1)])
def test_watching_a_run_exits_with_its_outcome(monkeypatch: pytest.MonkeyPatch,
                                               ends: RunState, code: int) -> None:
    monkeypatch.setattr(pipelines, "client", lambda url: RunsApi(ends))
    monkeypatch.setattr(pipelines.time, "sleep", lambda seconds: None)
    result = CliRunner().invoke(pipelines.app, ["status", "bc", "--watch"])
    assert result.exit_code == code, result.output
    assert f"run #4: {ends.value}" in result.output
