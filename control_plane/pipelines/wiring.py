"""The pipeline runner built from the control plane's services: its stages, the drift
alerts and data digests its triggers watch, and where its events go."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from control_plane.pipelines.gates import BenchmarkStage, EvaluateStage, ValidateDataStage
from control_plane.pipelines.offload import Offload
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.stages import ApproveStage, DeployStage, Stage, TrainStage
from control_plane.store import Database
from control_plane.store.models import AlertEventRow, AlertRuleRow

# Alert rule metrics that mean "the data moved": a firing alert on one starts a retraining.
DRIFT_METRICS = frozenset({"drift", "drifted_features", "drift_p_value", "prediction_drift"})


def build_pipelines(plane: Any, *, job_client: Any = None) -> Pipelines:
    """The runner for ``plane`` (a :class:`control_plane.service.ControlPlane`)."""
    offload = Offload()  # one bound on the threads of every pipeline's reads
    stages: dict[str, Stage] = {
        "validate_data": ValidateDataStage(plane, offload),
        "train": TrainStage(plane, job_client),
        "evaluate": EvaluateStage(plane, offload),
        "benchmark": BenchmarkStage(plane),
        "approve": ApproveStage(plane),
        "deploy": DeployStage(plane),
    }
    return Pipelines(plane.db, stages, drift_alerts=drift_alerts(plane.db), digest=_digest,
                     listener=notifier(plane.settings.url), offload=offload)


# The runner's words for what happened to a run → the notification kinds.
_EVENTS = {"started": "run_started", "stage_passed": "stage_passed",
           "stage_failed": "stage_failed", "failed": "run_failed",
           "succeeded": "run_succeeded", "cancelled": "run_cancelled"}


def notifier(base_url: str) -> Any:
    """Send each run event to the receivers that chose it (control_plane.notifications)."""
    from control_plane.notifications.sources import pipeline_event

    def tell(run: Any, kind: str, stage: str | None, reason: str) -> None:
        if kind in _EVENTS:
            pipeline_event(run.number, run.pipeline, _EVENTS[kind], stage, reason or None,
                           link=f"{base_url.rstrip('/')}/api/pipelines/{run.pipeline}/runs/{run.number}")
    return tell


def _digest(uri: str) -> str:
    from control_plane.pipelines.data_sources import dataset_digest

    return dataset_digest(uri)


def drift_alerts(db: Database) -> Any:
    """``(endpoint, since) → firing times`` of drift alerts on ``endpoint`` after ``since``."""
    def fired(endpoint: str, since: datetime) -> list[datetime]:
        with db.session(readonly=True) as session:
            rules = {name for name, spec in session.execute(
                select(AlertRuleRow.name, AlertRuleRow.spec)).all()
                if (spec or {}).get("metric") in DRIFT_METRICS}
            if not rules:
                return []
            # Fired by a rule's evaluation: an event posted through the API under a drift
            # rule's name (a deployer's, say) is no drift the Monitor found.
            rows = session.execute(select(AlertEventRow.name, AlertEventRow.created_at).where(
                AlertEventRow.endpoint == endpoint, AlertEventRow.state == "firing",
                AlertEventRow.kind == "rule", AlertEventRow.created_at > since)).all()
            return [created for name, created in rows if name in rules]
    return fired
