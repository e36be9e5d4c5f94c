"""The store's tables, as SQLAlchemy 2 typed ORM classes.

Times are timezone-aware UTC. JSON columns hold small documents (tags, manifests,
policies); anything queried by value gets its own column.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores no zone and returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(128))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The highest version number ever handed out. Incremented under the row lock in the
    # same transaction that inserts the version, so numbers are gapless and never reused.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    versions: Mapped[list[ModelVersionRow]] = relationship(back_populates="model")


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),
                      Index("uq_model_version_idempotency_key", "model_id", "idempotency_key",
                            unique=True))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16), default="none")
    status: Mapped[str] = mapped_column(String(16), default="ready")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    artifact_digest: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column()
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    # The registrant's subject (the person or service behind the token): approvals compare it.
    created_by_subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The registrant's key for this registration: asked again, it answers this version.
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)

    model: Mapped[ModelRow] = relationship(back_populates="versions")


class AliasRow(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_model_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApprovalRow(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    approver: Mapped[str] = mapped_column(String(128))
    approver_subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StageEventRow(Base):
    """Audit trail of stage changes (who moved which version where, and why)."""

    __tablename__ = "stage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EndpointRow(Base):
    """Desired serving state: an endpoint and its configuration (the reconciler's input)."""

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    placement: Mapped[str] = mapped_column(String(16), default="colocated")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EndpointRouteRow(Base):
    """One version's place in an endpoint's route table: its weight, or a shadow."""

    __tablename__ = "endpoint_routes"
    __table_args__ = (UniqueConstraint("endpoint_id", "version_id", name="uq_endpoint_route"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    # Per-version serving settings: batching, and scaling in the isolated placement.
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ExperimentRow(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    parent_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="running")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    environment: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    start_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When its job's driver last said it was alive (None: it never did, as before drivers
    # did): one silent too long is ended by the control plane's sweep.
    alive_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RunMetricRow(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (Index("ix_run_metrics_run_key_step", "run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer, default=0)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RunArtifactRow(Base):
    __tablename__ = "run_artifacts"
    __table_args__ = (UniqueConstraint("run_id", "path", name="uq_run_artifact_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # sha256 of the secret: tokens are 256-bit random, so a fast hash is enough and lets a
    # lookup by hash stay one indexed query.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    # The person or service the token was issued to; several tokens may share one subject.
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # A trainer token's one model (a training job's): the only one it registers versions
    # of and points aliases of. None: any (an older token, or any other role).
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # A labeler token's one endpoint: the only one whose feedback it posts. None: any.
    endpoint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A trainer token's uploads to the artifact store, counted against its allowance
    # (control_plane.upload_allowance); other roles' are not counted.
    uploaded_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # And the metric points it logged, over all its runs (control_plane.tracking).
    metric_points: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class StoreIdentityRow(Base):
    """The store's identity: one row, created on first start, carried by every Serve
    application this store's control plane creates (see control_plane.ownership)."""

    __tablename__ = "store_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LeaseRow(Base):
    """A lease one process holds at a time (control_plane.leadership). Times are Unix
    seconds from the holders' clocks, which must agree to well within a lease's length."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    # Counts the holders: a new holder's term is one more than the last one's.
    term: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[float] = mapped_column(Float)
    renewed_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    # The holder's Ray cluster (its session): a store led from another cluster is refused
    # to `up` (control_plane.leadership.leader_elsewhere). None: outside Ray.
    cluster: Mapped[str | None] = mapped_column(String(200), nullable=True)


class ApplyRequestRow(Base):
    """An endpoint a control plane that does not lead changed, for the leader to apply to
    Serve at once (control_plane.leadership); None: every endpoint."""

    __tablename__ = "apply_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    requested_at: Mapped[float] = mapped_column(Float)


class RolloutRow(Base):
    """A rollout: the persisted state machine the controller advances (see control_plane.rollouts).

    ``endpoint`` is a name, not a key: the history outlives the endpoint. At most one
    rollout per endpoint is active (not terminal); the controller enforces it inside the
    transaction that creates one.
    """

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_endpoint_state", "endpoint", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    candidate_version: Mapped[int] = mapped_column(Integer)
    stable_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    strategy: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24), default="pending")
    # The plan (steps), analysis thresholds and options, fixed when the rollout starts.
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Consecutive failing analyses, persisted so a restart neither forgets nor resets a streak.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_analysis: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    # A version left loaded at 0% (drained) that the controller removes at ``retire_at``.
    retire_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retire_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Follow-ups still owed after a terminal state (rejecting the candidate, the rollback
    # alert): written in the transaction that ends the rollout, each removed once done, so a
    # crash in between leaves them for the next pass (see control_plane.rollouts.followups).
    followups: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RolloutEventRow(Base):
    """Audit log of a rollout: every transition and traffic change, who or what, and why."""

    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    from_state: Mapped[str] = mapped_column(String(24), default="")
    to_state: Mapped[str] = mapped_column(String(24), default="")
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    # The metric values, weights or checks that decided it.
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AlertRuleRow(Base):
    """An alert rule (control_plane.alerts): the whole spec as a document, named uniquely."""

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Who last created or replaced its spec (None: a rule from before this was kept).
    updated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AlertingChangeRow(Base):
    """Audit trail of alerting: a rule or receiver created, replaced, deleted, silenced or
    unsilenced, by whom, with the spec it has afterwards (before, for a deletion); written
    in the change's own transaction."""

    __tablename__ = "alerting_changes"
    __table_args__ = (Index("ix_alerting_changes_kind_name", "kind", "name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # rule | receiver
    name: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))  # the token's name
    subject: Mapped[str] = mapped_column(String(128))  # whom the token was issued to
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RequestReplyRow(Base):
    """A write's idempotency key and, once it is answered, the answer kept for the calls
    that ask it again (control_plane.idempotency). ``status`` None: being answered, by a
    call that holds the key until ``held_until``."""

    __tablename__ = "request_replies"
    __table_args__ = (Index("ix_request_replies_created_at", "created_at"),)

    # The token's name: keys are the caller's own, one caller's never meets another's.
    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # sha256 of the method, path, query and body: the key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # The call holding the key (one id per hold): only it keeps its answer or frees it.
    holder: Mapped[str] = mapped_column(String(32))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    headers: Mapped[list[Any]] = mapped_column(default=list)  # [[name, value], …]
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    held_until: Mapped[datetime] = mapped_column(UTCDateTime())


class AlertSilenceRow(Base):
    """A silence on an alert rule: its alerts are evaluated and recorded, never notified,
    until ``until``."""

    __tablename__ = "alert_silences"

    rule: Mapped[str] = mapped_column(String(128), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AlertReceiverRow(Base):
    """A webhook receiver of alert notifications."""

    __tablename__ = "alert_receivers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxRow(Base):
    """A notification a receiver has not acknowledged yet (control_plane.alerts.outbox):
    written as its receiver's thread takes it, removed once delivered or given up."""

    __tablename__ = "notification_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)  # the Idempotency-Key
    receiver: Mapped[str] = mapped_column(String(128), index=True)
    description: Mapped[str] = mapped_column(String(500))
    body: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float] = mapped_column(Float)  # not tried again before (Unix seconds)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claimed_until: Mapped[float] = mapped_column(Float, default=0.0)


class AlertRow(Base):
    """An alert that is pending or firing now, so a restarted control plane neither
    forgets a firing alert (and never resolves it) nor notifies it a second time."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    summary: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AlertEventRow(Base):
    """Alert history: every firing and resolution of a rule's alert, and one-shot events."""

    __tablename__ = "alert_events"
    __table_args__ = (Index("ix_alert_events_name_created", "name", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    # The ``endpoint`` label, as a column: history is read per endpoint.
    endpoint: Mapped[str] = mapped_column(String(128), default="", index=True)
    severity: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    summary: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class PipelineRow(Base):
    """A pipeline (control_plane.pipelines): its spec as a document, and its triggers' memory
    (the last data digest seen, the last scheduled and alert-started runs) in ``state``."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    # The subject of whoever last applied the spec (None: a pipeline from before authors).
    author_subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PipelineRunRow(Base):
    """One run of a pipeline: the spec as it was when the run started, and its ordered stage
    records (state, times, inputs, outputs, reason) as one document, rewritten whole in the
    transaction that moves the run on, so a restart resumes the stage it was in."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (Index("ix_pipeline_runs_pipeline_state", "pipeline", "state"),
                      Index("ix_pipeline_runs_owes_stop", "owes_stop"),
                      UniqueConstraint("pipeline", "number"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(128))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    trigger: Mapped[str] = mapped_column(String(16))
    trigger_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column()
    stages: Mapped[list[Any]] = mapped_column(default=list)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    # The subject of the spec's author when the run began: its job acts for them.
    author_subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Optimistic lock: two control planes advancing one run cannot both write a stage.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # Whether a stage's work is owed a stop (a stage record's ``stop_owed``), kept with
    # every write of the stages: the owed are found by this index, however many runs ended
    # since (a scan of the newest 500 lost the older ones).
    owes_stop: Mapped[bool] = mapped_column(Boolean, default=False)

    __mapper_args__ = {"version_id_col": revision}

    @validates("stages")
    def _mark_owed_stop(self, key: str, stages: list[Any]) -> list[Any]:
        self.owes_stop = any(isinstance(stage, dict) and stage.get("stop_owed")
                             for stage in stages or [])
        return stages


class VersionBenchmarkRow(Base):
    """A version's measured performance (control_plane.benchmarking): the settings it was
    served and loaded with, the figures as a document, and its progress or error. At most
    one per version runs at a time; the benchmark service checks it under the version's
    row lock."""

    __tablename__ = "version_benchmarks"
    __table_args__ = (Index("ix_version_benchmarks_version_status", "version_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="running")
    settings: Mapped[dict[str, Any]] = mapped_column()
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
