"""A pipeline run's states and records as stored, and as the REST API shows them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from control_plane.pipelines.spec import STAGES
from control_plane.schemas import Wire


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


ACTIVE_RUN_STATES = (RunState.PENDING.value, RunState.RUNNING.value)


class StageState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self not in (StageState.PENDING, StageState.RUNNING)


class Trigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    DATA = "data"
    ALERT = "alert"


class StageRecord(Wire):
    """One stage of a run: its state and times, what it took in and gave out, and why it
    failed. ``progress`` is what a stage keeps between passes (a submitted job's id)."""

    name: str
    state: StageState = StageState.PENDING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    logs: str | None = Field(None, description="Where this stage's logs are (a command or a path).")
    stop_owed: bool = Field(False, description=(
        "The run ended while this stage's work (a training job, a rollout) went on, and "
        "stopping it has not succeeded yet: the control loop tries again, for a day after "
        "the run ended."))


def stored_stage(raw: dict[str, Any]) -> StageRecord:
    """A stage as the store keeps it. Fields this version does not know (written by a newer
    control plane beside it, during an upgrade) are left out, not refused: refused, the
    run could be neither advanced nor cancelled, and its pipeline took no other run."""
    known = {key: value for key, value in raw.items() if key in StageRecord.model_fields}
    return StageRecord.model_validate(known)


def fresh_stages() -> list[dict[str, Any]]:
    return [StageRecord(name=name).model_dump(mode="json") for name in STAGES]


class PipelineOut(Wire):
    name: str
    description: str
    spec: dict[str, Any]
    triggers: dict[str, Any]
    created_by: str
    # The subject of whoever last applied the spec: runs act for them (None: from before).
    author: str | None = None
    created_at: datetime
    updated_at: datetime
    last_run: int | None = None


class PipelineRunOut(Wire):
    id: int
    pipeline: str
    number: int
    state: RunState
    trigger: Trigger
    trigger_detail: dict[str, Any]
    stages: list[StageRecord]
    reason: str
    created_by: str
    author: str | None = None  # the spec's author when the run began: its job acts for them
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def current(self) -> StageRecord | None:
        return next((s for s in self.stages if not s.state.done), None)


class PipelineRunCreate(Wire):
    """``POST /api/pipelines/{name}/runs``: start a run by hand."""

    reason: str = Field("", max_length=2000)


class PipelineLogsOut(Wire):
    text: str = Field(description="Each stage's state and reason, then the training job's output.")
