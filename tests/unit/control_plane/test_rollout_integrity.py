"""Rollout integrity: approval gating, registry failures, resumable rollbacks, the
inconclusive deadline. A real store (SQLite, and PostgreSQL when configured), an injected
clock and Monitor numbers, as in test_rollout_controller."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from control_plane.auth import Principal, TokenService
from control_plane.errors import ConflictError, PermissionDeniedError
from control_plane.registry import Registry
from control_plane.rollouts.controller import RolloutController
from control_plane.rollouts.states import RolloutState
from control_plane.schemas import (
    ApprovalCreate,
    DeployRequest,
    ModelPolicy,
    ModelUpdate,
    Role,
    Stage,
    StageChange,
    TokenCreate,
    TrafficUpdate,
)
from control_plane.store.models import ModelVersionRow, RolloutRow, StageEventRow
from tests.unit.control_plane.conftest import ADMIN, ALICE, BOB
from tests.unit.control_plane.test_rollout_controller import World


class Crash(BaseException):
    """Stands for the control plane dying: not an Exception, so nothing catches it."""


@pytest.fixture
def world(registry: Registry) -> World:
    return World(registry)


def _gate(world: World, **policy: Any) -> None:
    world.registry.update_model("iris", ModelUpdate(policy=ModelPolicy(
        require_approval_for_production=True, **policy)), ADMIN)


def _walk(world: World, rollout_id: int, seconds: int) -> list[float]:
    """Tick once a second; the candidate's stored weight after each tick."""
    seen = []
    for _ in range(seconds):
        world.run(1)
        seen.append(world.weights().get(2, 0.0))
    return seen


# ---------------------------------------------------------------- approval gating


def test_unapproved_candidate_waits_at_the_last_step_below_100(world: World) -> None:
    _gate(world)
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[10, 50, 100])
    seen = _walk(world, rollout_id, 30)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.AWAITING_APPROVAL, rollout.reason
    assert max(seen) == 50.0 and world.weights() == {1: 50.0, 2: 50.0}
    assert "more than 50%" in rollout.reason
    world.registry.approve("iris", 2, ApprovalCreate(decision="approved"), BOB)
    seen = _walk(world, rollout_id, 10)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED
    assert 100.0 in seen and world.registry.get_version("iris", 2).stage == "production"


def test_the_policy_limit_and_a_rollout_cannot_weaken_it(world: World) -> None:
    """max_unapproved_weight holds the candidate lower; require_approval: false is no escape."""
    _gate(world, max_unapproved_weight=10)
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[5, 25, 100], require_approval=False)
    created = world.controller.events(rollout_id)[0]
    assert created.data["approval"] == {"required": True, "limit": 10.0}
    seen = _walk(world, rollout_id, 20)
    assert max(seen) == 5.0
    assert world.controller.get(rollout_id).state == RolloutState.AWAITING_APPROVAL
    with pytest.raises(ConflictError, match="requires approval") as refused:
        world.controller.promote(rollout_id, ALICE)
    assert refused.value.detail["policy"] == "require_approval_for_production"
    assert world.weights()[2] == 5.0
    world.registry.approve("iris", 2, ApprovalCreate(decision="rejected", comment="no"), BOB)
    world.run(2)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK and "rejected" in rollout.reason
    assert world.weights() == {1: 100.0, 2: 0.0}


def test_a_rollout_may_ask_for_approval_the_policy_does_not_require(world: World) -> None:
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[20, 100], require_approval=True)
    assert max(_walk(world, rollout_id, 15)) == 20.0
    assert world.controller.get(rollout_id).state == RolloutState.AWAITING_APPROVAL
    world.registry.approve("iris", 2, ApprovalCreate(decision="approved"), BOB)
    world.run(10)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED


def test_a_second_token_of_the_registrant_cannot_approve(world: World) -> None:
    """Versions were registered by alice; her approver token under another name is refused."""
    _gate(world)
    tokens = TokenService(world.registry.db)
    second = tokens.create(TokenCreate(name="alice-approver", role=Role.APPROVER,
                                       subject="alice"), ADMIN)
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[100])
    world.run(5)
    with pytest.raises(PermissionDeniedError, match="'alice' registered iris:2"):
        world.registry.approve("iris", 2, ApprovalCreate(decision="approved"),
                               tokens.authenticate(second.token))
    world.run(5)
    assert world.controller.get(rollout_id).state == RolloutState.AWAITING_APPROVAL
    assert world.weights().get(2, 0.0) == 0.0


def test_unapproved_versions_together_may_take_no_more_than_the_limit(world: World) -> None:
    """Each at 50%, two unapproved versions took all of production's traffic: the limit
    was checked per version."""
    _gate(world)
    world.registry.approve("iris", 1, ApprovalCreate(decision="approved"), BOB)
    with pytest.raises(ConflictError, match="together may take at most 50%") as refused:
        world.deployments.set_traffic("iris", TrafficUpdate(weights={2: 50, 3: 50}), ALICE)
    assert refused.value.detail["versions"] == [2, 3]
    assert world.weights() == {1: 100.0}
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 50, 2: 25, 3: 25}), ALICE)
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 50, 2: 40, 3: 10}), ALICE)


def test_manual_traffic_over_the_limit_to_an_unapproved_version_is_refused(
        world: World) -> None:
    _gate(world)
    with pytest.raises(ConflictError, match="require_approval_for_production") as refused:
        world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 40, 2: 60}), ALICE)
    assert refused.value.detail == {"field": "weights", "policy": "require_approval_for_production",
                                    "version": 2, "limit": 50.0}
    with pytest.raises(ConflictError, match="at most 50%"):
        world.deployments.deploy(DeployRequest(endpoint="iris", model_ref="iris:3", weight=80),
                                 ALICE)
    with pytest.raises(ConflictError, match="iris:3 is not approved"):
        world.deployments.deploy(DeployRequest(endpoint="fresh", model_ref="iris:3"), ALICE)
    assert world.weights() == {1: 100.0}
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 50, 2: 50}), ALICE)
    world.registry.approve("iris", 2, ApprovalCreate(decision="approved"), BOB)
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 10, 2: 90}), ALICE)
    # Turning an unapproved version down is always allowed, even above the limit...
    world.registry.approve("iris", 2, ApprovalCreate(decision="rejected"), BOB)
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 20, 2: 80}), ALICE)
    # ...and v1, unapproved, may not gain; once in production it counts as approved.
    with pytest.raises(ConflictError, match="iris:1 is not approved"):
        world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 60, 2: 40}), ALICE)
    world.registry.transition_stage("iris", 1, StageChange(stage=Stage.STAGING), ALICE)
    with world.registry.db.session() as session:  # production before the policy existed
        session.execute(text("UPDATE model_versions SET stage = 'production' WHERE version = 1"))
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 60, 2: 40}), ALICE)
    assert world.weights() == {1: 60.0, 2: 40.0}


# ---------------------------------------------------------------- registry failures


def _refuse_in_store(world: World, column: str) -> None:
    """Make the store itself refuse updates of ``model_versions.<column>``."""
    engine = world.registry.db.engine
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text(
                f"CREATE TRIGGER refuse_{column} BEFORE UPDATE OF {column} ON model_versions "
                f"BEGIN SELECT RAISE(ABORT, 'the store refuses {column} changes'); END"))
        else:
            connection.execute(text(
                f"CREATE FUNCTION refuse_{column}() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                f"'the store refuses {column} changes'; END $$ LANGUAGE plpgsql"))
            connection.execute(text(
                f"CREATE TRIGGER refuse_{column} BEFORE UPDATE OF {column} ON model_versions "
                f"FOR EACH ROW EXECUTE FUNCTION refuse_{column}()"))


def test_a_failing_promotion_step_ends_the_rollout_failed_once(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[50, 100])
    _refuse_in_store(world, "stage")
    with caplog.at_level(logging.ERROR):
        world.run(20)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED
    assert "promotion failed moving v2 to staging" in rollout.reason
    assert "refuses stage changes" in rollout.reason
    assert world.weights().get(2, 0.0) == 0.0 and world.weights()[1] == 100.0
    assert world.registry.get_version("iris", 2).status == "ready"  # not judged bad
    assert [r for r in caplog.records if "rollout" in r.getMessage()] == []


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03"])
def test_a_promotion_that_loses_to_another_transaction_is_tried_again_not_failed(
        world: World, sqlstate: str) -> None:
    """A deadlock, a serialization failure or a lock timeout says nothing about the
    candidate: the promotion's transaction is rolled back and the next pass promotes."""
    from sqlalchemy.exc import DBAPIError

    class Conflict(Exception):
        def __init__(self) -> None:
            super().__init__(f"conflict {sqlstate}")
            self.sqlstate = sqlstate

    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[100], step_duration_s=2)
    point_alias = world.registry.point_alias
    lost: list[str] = []

    def losing_once(*args: Any, **kwargs: Any) -> Any:
        if not lost:
            lost.append(sqlstate)
            raise DBAPIError("UPDATE aliases ...", {}, Conflict())
        return point_alias(*args, **kwargs)

    world.registry.point_alias = losing_once  # type: ignore[method-assign]
    world.run(20)
    assert lost == [sqlstate]
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.SUCCEEDED, rollout.reason
    assert world.registry.get_model("iris").aliases.get("champion") == 2


def test_a_failing_rejection_ends_a_rollback_failed_and_is_not_retried(world: World) -> None:
    world.serve(1)
    world.serve(2, error_rate=0.5)
    rollout_id = world.start(steps=[50, 100])
    _refuse_in_store(world, "status")
    world.run(10)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED
    assert rollout.reason.startswith("automatic rollback: error_rate")
    assert "rejecting the candidate in the registry failed" in rollout.reason
    assert world.weights().get(2, 0.0) == 0.0 and world.weights()[1] == 100.0
    assert len(world.alerts) == 1  # traffic was rolled back: the alert still goes out
    events = [e.kind for e in world.controller.events(rollout_id)]
    world.run(10)
    assert "retired" in events
    assert [e.kind for e in world.controller.events(rollout_id)] == events
    with world.registry.db.session(readonly=True) as session:
        assert session.get(RolloutRow, rollout_id).followups is None


@pytest.mark.parametrize("lost", ["store unreachable", "serialization failure"])
def test_a_rejection_the_store_could_not_answer_is_made_on_the_next_pass(
        world: World, lost: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store away, or a transaction lost to another, refuses nothing: the rollback stays
    rolled_back and its rejection is made once the store answers (it ended failed, the bad
    candidate left ready for the next deploy or pipeline)."""
    from sqlalchemy.exc import DBAPIError

    from control_plane.errors import StoreUnavailableError
    from control_plane.rollouts import followups

    class Conflict(Exception):
        sqlstate = "40001"

    world.serve(1)
    world.serve(2, error_rate=0.5)
    rollout_id = world.start(steps=[50, 100])
    mark_rejected, failed = followups.mark_rejected, []

    def failing_twice(*args: Any) -> None:
        if len(failed) < 2:
            failed.append(lost)
            raise (StoreUnavailableError("the store cannot be reached") if lost == "store unreachable"
                   else DBAPIError("UPDATE model_versions ...", {}, Conflict()))
        mark_rejected(*args)

    monkeypatch.setattr(followups, "mark_rejected", failing_twice)
    world.run(10)
    assert len(failed) == 2
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    assert world.registry.get_version("iris", 2).status == "rejected"
    with world.registry.db.session(readonly=True) as session:
        assert session.get(RolloutRow, rollout_id).followups is None
    followups_done = [e.reason for e in world.controller.events(rollout_id) if e.kind == "followup"]
    assert sum("rejected in the registry" in reason for reason in followups_done) == 1


# ---------------------------------------------------------------- resumable rollbacks


def test_a_rollback_interrupted_before_its_follow_ups_is_finished_exactly_once(
        world: World) -> None:
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[30, 100], step_duration_s=30)
    world.run(3)

    def crash() -> None:
        raise Crash

    world.controller._apply = crash  # dies after the rollback's commit, before the rest
    with pytest.raises(Crash):
        world.controller.rollback(rollout_id, ALICE, "bad answers")
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK and world.weights() == {1: 100.0, 2: 0.0}
    assert world.registry.get_version("iris", 2).status == "ready" and world.alerts == []
    with world.registry.db.session(readonly=True) as session:
        assert set(session.get(RolloutRow, rollout_id).followups) == {"reject", "alert"}

    alerts: list[dict[str, Any]] = []
    world.controller = RolloutController(
        world.registry.db, world.registry, world.deployments, stats=lambda e, w, s: world.stats,
        alert=lambda name, **kw: alerts.append({"name": name, **kw}), now=lambda: world.time)
    world.run(5)
    version = world.registry.get_version("iris", 2)
    assert version.status == "rejected" and "bad answers" in version.status_reason
    assert [a["name"] for a in alerts] == ["RolloutRolledBack"]
    assert "bad answers" in alerts[0]["summary"]
    followups = [e.reason for e in world.controller.events(rollout_id) if e.kind == "followup"]
    assert len(followups) == 2 and "rejected in the registry" in followups[0]
    world.controller.tick()
    assert len(alerts) == 1 and world.weights() == {1: 100.0}


def test_a_rejection_done_before_the_crash_is_not_done_again(world: World) -> None:
    """The crash comes after the rejection and before the alert: only the alert is left."""
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[30, 100], step_duration_s=30)
    world.run(3)
    world.controller._followups._alert = lambda name, **kw: (_ for _ in ()).throw(Crash())
    with pytest.raises(Crash):
        world.controller.rollback(rollout_id, ALICE, "bad answers")
    with world.registry.db.session(readonly=True) as session:
        assert set(session.get(RolloutRow, rollout_id).followups) == {"alert"}
    world.controller = RolloutController(
        world.registry.db, world.registry, world.deployments, stats=lambda e, w, s: world.stats,
        alert=lambda name, **kw: world.alerts.append({"name": name, **kw}),
        now=lambda: world.time)
    world.run(2)
    kinds = [e.reason for e in world.controller.events(rollout_id) if e.kind == "followup"]
    assert len(kinds) == 2 and len(world.alerts) == 1


def test_a_failure_streak_stored_at_its_limit_rolls_back_after_a_crash(world: World) -> None:
    """The crash comes after the analysis that reached the limit, before the rollback."""
    world.serve(1)
    world.serve(2, error_rate=0.5)
    rollout_id = world.start(steps=[50, 100], step_duration_s=30)

    def crash(*_: Any, **__: Any) -> None:
        raise Crash

    world.controller._end = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.run(10)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING and rollout.failures == 2
    world.serve(2)  # the candidate answers well in the new process's first window
    world.controller = RolloutController(
        world.registry.db, world.registry, world.deployments, stats=lambda e, w, s: world.stats,
        alert=lambda name, **kw: world.alerts.append({"name": name, **kw}),
        now=lambda: world.time)
    world.run(2)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    assert rollout.reason.startswith("automatic rollback: error_rate"), rollout.reason
    assert world.weights().get(2, 0.0) == 0.0 and world.weights()[1] == 100.0
    assert world.registry.get_version("iris", 2).status == "rejected"
    kinds = [e.kind for e in world.controller.events(rollout_id)]
    assert kinds.count("analysis_failed") == 2 and len(world.alerts) == 1


def test_an_archive_interrupted_after_the_drained_removal_is_finished_exactly_once(
        world: World) -> None:
    """The crash comes after v1 left the route table and before it was archived."""
    world.serve(1)
    world.serve(2)
    rollout_id = world.start(steps=[100], step_duration_s=2)
    original = Registry.transition_stage

    def crash_on_archive(self: Registry, name: str, version: int, spec: StageChange,
                         actor: Principal) -> Any:
        if spec.stage == Stage.ARCHIVED:
            raise Crash
        return original(self, name, version, spec, actor)

    world.registry.transition_stage = crash_on_archive.__get__(world.registry)  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.run(20)
    assert world.weights() == {2: 100.0} and world.registry.get_version("iris", 1).stage == "none"
    with world.registry.db.session(readonly=True) as session:
        assert session.get(RolloutRow, rollout_id).followups == {"archive": 1}

    del world.registry.transition_stage  # the new process runs the registry unpatched
    world.controller = RolloutController(
        world.registry.db, world.registry, world.deployments, stats=lambda e, w, s: world.stats,
        now=lambda: world.time)
    world.run(3)
    assert world.registry.get_version("iris", 1).stage == "archived"
    with world.registry.db.session(readonly=True) as session:
        history = session.execute(select(StageEventRow.from_stage, StageEventRow.to_stage)
                                  .join(ModelVersionRow).where(ModelVersionRow.version == 1)).all()
    assert [tuple(h) for h in history] == [("none", "archived")]
    kinds = [e.kind for e in world.controller.events(rollout_id)]
    assert kinds.count("retired") == 1 and kinds.count("followup") == 1
    with world.registry.db.session(readonly=True) as session:
        assert session.get(RolloutRow, rollout_id).followups is None


# ---------------------------------------------------------------- the inconclusive deadline


def test_analyses_inconclusive_past_the_deadline_fail_back_to_stable(world: World) -> None:
    world.serve(1)
    world.serve(2, requests=3)  # below min_samples: every analysis is inconclusive
    rollout_id = world.start(steps=[20, 100], analysis={
        "interval_s": 1, "window_s": 5, "min_samples": 20, "inconclusive_deadline_s": 30})
    world.run(20)
    world.serve(2)  # one window with evidence restarts the clock
    world.run(2)
    world.serve(2, requests=3)
    world.run(20)
    assert world.controller.get(rollout_id).state == RolloutState.PROGRESSING
    world.run(15)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED
    assert "inconclusive_deadline_s=30" in rollout.reason
    assert world.weights().get(2, 0.0) == 0.0 and world.weights()[1] == 100.0
    assert world.registry.get_version("iris", 2).status == "ready"


def test_waiting_for_an_approval_is_not_waiting_for_evidence(world: World) -> None:
    _gate(world)
    world.serve(1)
    world.serve(2, requests=3)
    rollout_id = world.start(steps=[100], analysis={
        "interval_s": 1, "window_s": 5, "min_samples": 20, "inconclusive_deadline_s": 10})
    world.time += timedelta(seconds=1)
    world.run(60)
    assert world.controller.get(rollout_id).state == RolloutState.AWAITING_APPROVAL


def test_a_principal_without_a_subject_stands_for_itself() -> None:
    assert Principal("ci", Role.DEPLOYER).subject == "ci"
    assert Principal("ci", Role.DEPLOYER, subject="alice").subject == "alice"


def test_paused_time_does_not_count_toward_the_deadline(world: World) -> None:
    world.serve(1)
    world.serve(2, requests=3)
    rollout_id = world.start(steps=[20, 100], analysis={
        "interval_s": 1, "window_s": 5, "min_samples": 20, "inconclusive_deadline_s": 30})
    world.run(20)
    world.controller.pause(rollout_id, ALICE, "looking")
    world.run(60)
    world.controller.resume(rollout_id, ALICE)
    world.run(20)
    assert world.controller.get(rollout_id).state == RolloutState.PROGRESSING
    world.run(15)
    assert world.controller.get(rollout_id).state == RolloutState.FAILED
