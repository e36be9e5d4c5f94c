"""`pipeline status --watch` ends with the run's outcome, as `pipeline run --wait` does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from control_plane.cli import pipelines
from control_plane.pipelines.records import PipelineRunOut, RunState, Trigger


class RunsApi:
    """A control plane whose run goes running → ``ends``."""

    def __init__(self, ends: RunState) -> None:
        self.looks = [RunState.RUNNING, RunState.RUNNING, ends]

    def pipeline_run(self, name: str, number: int | None) -> Any:
        state = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        now = datetime.now(UTC)
        return PipelineRunOut(id=1, pipeline="bc", number=4, state=state, trigger=Trigger.MANUAL,
                              trigger_detail={}, stages=[], reason="stage evaluate failed",
                              created_by="alice", created_at=now, updated_at=now,
                              finished_at=None)


@pytest.mark.parametrize(("ends", "code"), [(RunState.SUCCEEDED, 0), (RunState.FAILED, 1),
                                             (RunState.CANCELLED, 1)])
def test_watching_a_run_exits_with_its_outcome(monkeypatch: pytest.MonkeyPatch,
                                               ends: RunState, code: int) -> None:
    monkeypatch.setattr(pipelines, "client", lambda url: RunsApi(ends))
    monkeypatch.setattr(pipelines.time, "sleep", lambda seconds: None)
    result = CliRunner().invoke(pipelines.app, ["status", "bc", "--watch"])
    assert result.exit_code == code, result.output
    assert f"run #4: {ends.value}" in result.output


def test_watching_with_json_prints_one_json_document(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setattr(pipelines, "client", lambda url: RunsApi(RunState.FAILED))
    monkeypatch.setattr(pipelines.time, "sleep", lambda seconds: None)
    result = CliRunner().invoke(pipelines.app, ["status", "bc", "--watch", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "failed"
    assert "run #4: failed" in result.stderr
