"""The rollout controller against a real store, with the Monitor's numbers and the clock injected."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from control_plane.artifacts import ArtifactStore
from control_plane.auth import Principal
from control_plane.deployments import Deployments
from control_plane.errors import ConflictError, InvalidInputError, PermissionDeniedError
from control_plane.leadership import LEASE_S, Lease, LeaseLost
from control_plane.registry import Registry
from control_plane.rollouts.controller import RolloutController
from control_plane.rollouts.schemas import RolloutCreate, RolloutPolicy, RolloutTemplate
from control_plane.rollouts.states import RolloutState
from control_plane.schemas import (
    AliasSet,
    ApprovalCreate,
    DeployRequest,
    ModelPolicy,
    ModelUpdate,
    Role,
    Stage,
    StageChange,
    TrafficUpdate,
    VersionCreate,
)
from control_plane.store import Database
from control_plane.store.database import fenced_writes
from serving.monitoring import ShadowComparison, VersionSnapshot
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.snapshots import served
from tests.unit.control_plane.conftest import ADMIN, ALICE, BOB
from tests.unit.control_plane.together import Interleaved

FAST = {"interval_s": 1, "window_s": 5, "min_samples": 20, "failures_to_rollback": 2}


class World:
    """A controller whose Monitor numbers and clock the test sets."""

    def __init__(self, registry: Registry) -> None:
        for seed in range(3):
            info = registry.artifacts.put([linear_classifier(seed=seed)])
            registry.register_version("iris", VersionCreate(
                artifact_digest=info.digest, manifest=linear_classifier_manifest()), ALICE)
        self.deployments = Deployments(registry.db, registry, base_url="http://cp:8000")
        self.deployments.deploy(DeployRequest(endpoint="iris", model_ref="iris:1"), ALICE)
        self.registry = registry
        self.time = datetime(2026, 1, 1, tzinfo=UTC)
        self.stats: dict[int, VersionSnapshot] = {}
        self.applied = 0
        self.alerts: list[dict[str, Any]] = []
        self.controller = RolloutController(
            registry.db, registry, self.deployments, stats=lambda endpoint, window, sample: self.stats,
            apply=self._apply, alert=lambda name, **kw: self.alerts.append({"name": name, **kw}),
            now=lambda: self.time)

    def _apply(self) -> None:
        self.applied += 1

    def serve(self, version: int, requests: int = 100, error_rate: float = 0.0, p95: float = 10.0,
              shadow: ShadowComparison | None = None) -> None:
        self.stats[version] = served(requests, error_rate, p95, shadow=shadow)

    def run(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.time += timedelta(seconds=step)
            self.controller.tick()

    def weights(self) -> dict[int, float]:
        endpoint = self.deployments.get("iris")
        return {r.version: r.weight for r in endpoint.routes if not r.shadow}

    def start(self, **spec: Any) -> int:
        spec.setdefault("analysis", FAST)
        spec.setdefault("step_duration_s", 3)
        spec.setdefault("drain_s", 2)
        rollout = self.controller.start(RolloutCreate(endpoint="iris", model_ref="iris:2", **spec), ALICE)
        return rollout.id


@pytest.fixture
def world(registry: Registry) -> World:
    return World(registry)


class OtherControlPlane:
    """A second control plane on the world's store, acting from a thread while the world's
    own is inside a transaction (a step, a promotion, a start)."""

    def __init__(self, world: World, db_url: str, artifacts: ArtifactStore) -> None:
        self.db = Database(db_url)
        registry = Registry(self.db, artifacts)
        self.controller = RolloutController(
            self.db, registry, Deployments(self.db, registry, base_url="http://cp:8000"),
            stats=lambda endpoint, window, sample: world.stats)
        self.racing: Interleaved | None = None

    def race(self, act: Any, *args: Any) -> None:
        """``act(*args)``, once, given 2 s (:class:`Interleaved`)."""
        if self.racing is None:
            self.racing = Interleaved(lambda: act(*args), settle_s=2)
        self.racing.now()

    def race_route_writes(self, world: World, act: Any, *args: Any) -> None:
        """:meth:`race` ``act`` when the world's control plane first writes a route table."""
        write_routes = world.deployments.write_routes

        def write_racing(*given: Any, **named: Any) -> Any:
            self.race(act, *args)
            return write_routes(*given, **named)

        world.deployments.write_routes = write_racing  # type: ignore[method-assign]

    def race_champion_read(self, monkeypatch: pytest.MonkeyPatch, act: Any, *args: Any,
                           after_reading: bool = False) -> None:
        """:meth:`race` ``act`` when the world's control plane reads the champion alias (a
        promotion does, in its transaction): just before that read, or just after it."""
        from control_plane import registry as registry_module

        find_alias = registry_module._alias

        def read_racing(session: Any, model: Any, alias: str) -> Any:
            racing = alias == "champion" and threading.current_thread() is threading.main_thread()
            if racing and not after_reading:
                self.race(act, *args)
            found = find_alias(session, model, alias)
            if racing and after_reading:
                self.race(act, *args)
            return found

        monkeypatch.setattr(registry_module, "_alias", read_racing)

    def raced_while(self, run: Any, seconds: float, what: str) -> Any:
        """:meth:`raced` after ``run(seconds)`` (the world's own passes); the other control
        plane's engine is closed either way."""
        try:
            run(seconds)
            return self.raced(what)
        finally:
            self.db.dispose()

    def raced(self, what: str) -> Any:
        """What the other control plane's call returned or raised, once it has returned."""
        assert self.racing is not None, f"{what} never happened"
        [outcome] = self.racing.ended(what)
        return outcome


def test_good_canary_walks_every_step_and_is_promoted(world: World) -> None:
    rollout_id = world.start(steps=[10, 50, 100])
    assert world.controller.get(rollout_id).state == RolloutState.PENDING
    world.serve(1)
    world.serve(2)
    seen = []
    for _ in range(20):
        world.run(1)
        seen.append(world.weights().get(2))
        if world.controller.get(rollout_id).state.terminal:
            break
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.SUCCEEDED, rollout.reason
    assert [w for w in dict.fromkeys(seen) if w is not None][:3] == [10, 50, 100]
    version = world.registry.get_version("iris", 2)
    assert "champion" in version.aliases and version.stage == "production"
    # v1 stays loaded at 0% while it drains, then is removed and archived.
    assert world.weights() == {2: 100.0, 1: 0.0}
    world.run(3)
    assert world.weights() == {2: 100.0}
    assert world.registry.get_version("iris", 1).stage == "archived"
    kinds = [e.kind for e in world.controller.events(rollout_id)]
    assert kinds[0] == "created" and kinds.count("step") == 3 and kinds[-2:] == ["retired",
                                                                                "followup"]


def test_failing_candidate_needs_consecutive_failures_then_rolls_back(world: World) -> None:
    rollout_id = world.start(steps=[20, 100])
    world.serve(1)
    world.serve(2, error_rate=0.2)
    world.run(1)  # pending → progressing at 20%
    world.run(1)  # first failing analysis: not yet
    assert world.controller.get(rollout_id).state == RolloutState.PROGRESSING
    assert world.controller.get(rollout_id).failures == 1
    world.run(1)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK
    assert "error_rate 0.2 > 0.01" in rollout.reason
    assert world.weights() == {1: 100.0, 2: 0.0}
    assert world.registry.get_version("iris", 2).status == "rejected"
    assert world.alerts and world.alerts[0]["labels"]["version"] == "2"
    assert world.alerts[0]["severity"] == "critical"
    events = world.controller.events(rollout_id)
    final = next(e for e in events if e.to_state == "rolled_back")
    assert final.data["analysis"]["checks"]["error_rate"]["value"] == 0.2
    world.run(3)
    assert world.weights() == {1: 100.0}
    with pytest.raises(ConflictError, match="rejected"):
        world.start()


def test_a_rollback_waiting_on_serve_holds_up_no_other_decision(world: World) -> None:
    """Applying reaches Serve's controller, which may be slow (restarting): done under the
    rollout lock, a rollback held every other rollout's decision and every pause with it."""
    import threading

    rollout_id = world.start(steps=[20, 100])
    world.serve(1)
    world.serve(2, error_rate=0.2)
    world.run(2)  # progressing at 20%, one failing analysis
    serve_answers, applying, took = threading.Event(), threading.Event(), threading.Event()

    def slow_apply() -> None:
        applying.set()
        assert serve_answers.wait(10)

    def take_the_lock() -> None:
        with world.controller._lock:
            took.set()

    world.controller._apply = slow_apply
    ticking = threading.Thread(target=world.run, args=(1,))
    ticking.start()
    try:
        assert applying.wait(10)  # the rollback is stored and waits on Serve
        assert world.controller.get(rollout_id).state == RolloutState.ROLLED_BACK
        threading.Thread(target=take_the_lock, daemon=True).start()
        assert took.wait(8), "the rollout lock was held while Serve was asked"
        assert world.alerts == []  # the follow-ups wait for the traffic to be applied
    finally:
        serve_answers.set()
        ticking.join(10)
    assert world.alerts and world.alerts[0]["labels"]["version"] == "2"
    assert world.registry.get_version("iris", 2).status == "rejected"


def test_too_few_requests_never_decide(world: World) -> None:
    rollout_id = world.start(steps=[100])
    world.serve(1)
    world.serve(2, requests=5, error_rate=1.0)
    world.run(10)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING
    assert rollout.last_analysis["verdict"] == "inconclusive"
    assert "5 randomly routed requests" in rollout.last_analysis["reason"]


def test_latency_ratio_to_stable_rolls_back(world: World) -> None:
    rollout_id = world.start(steps=[50, 100], analysis={**FAST, "max_p95_ratio": 1.5})
    world.serve(1, p95=10)
    world.serve(2, p95=60)
    world.run(4)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK and "p95_ratio 6" in rollout.reason


def test_blue_green_mirrors_then_switches_and_switches_back_instantly(world: World) -> None:
    rollout_id = world.start(strategy="blue_green", keep_warm_s=30,
                             analysis={**FAST, "min_shadow_agreement": 0.9})
    world.serve(1)
    world.serve(2, requests=0, shadow=ShadowComparison(compared=50, agreement=0.98))
    world.run(1)
    endpoint = world.deployments.get("iris")
    assert {(r.version, r.weight, r.shadow) for r in endpoint.routes} == {(1, 100, False), (2, 0, True)}
    world.run(4)
    world.serve(2)
    assert world.weights() == {2: 100.0, 1: 0.0}
    applied = world.applied
    world.controller.rollback(rollout_id, ALICE, "customers complain")
    assert world.weights() == {1: 100.0, 2: 0.0}
    assert world.applied > applied
    rolled_back = world.controller.get(rollout_id)
    assert rolled_back.state == RolloutState.ROLLED_BACK
    assert world.controller.rollback(rollout_id, ALICE, "customers complain") == rolled_back


def test_a_rollback_by_hand_just_as_the_lead_passes_leaves_its_follow_ups_to_the_leader(
        world: World) -> None:
    """A rollback asked of a control plane that still led at the look, and not at the
    follow-ups: its API thread raised the alert and rejected the candidate unfenced while
    the new leader's pass did the same, and the alert paged twice."""
    from contextlib import contextmanager

    from control_plane.store.database import FencedOut, fenced_writes

    def lost(session: object) -> None:
        raise FencedOut("the control loops' lease passed to another control plane")

    @contextmanager
    def fence_lost_meanwhile():
        with fenced_writes(lost):
            yield

    world.controller._fenced = fence_lost_meanwhile
    rollout_id = world.start()
    world.serve(1)
    world.serve(2)
    world.run(1)
    world.controller.rollback(rollout_id, ALICE, "customers complain")
    rolled_back = world.controller.get(rollout_id)
    assert rolled_back.state == RolloutState.ROLLED_BACK  # stored: the change stands
    assert world.alerts == []  # not paged here: owed, for the leader's next pass
    assert world.registry.get_version("iris", 2).status != "rejected"
    world.controller._fenced = contextmanager(lambda: (yield))
    world.run(1)  # the leader's pass
    assert [a["name"] for a in world.alerts] == ["RolloutRolledBack"]
    assert world.registry.get_version("iris", 2).status == "rejected"


def test_shadow_disagreement_discards_the_candidate(world: World) -> None:
    rollout_id = world.start(strategy="shadow", analysis={**FAST, "min_shadow_agreement": 0.95})
    world.serve(1)
    world.serve(2, requests=0, shadow=ShadowComparison(compared=100, agreement=0.7))
    world.run(4)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK and "shadow_agreement 0.7" in rollout.reason
    assert 2 not in world.weights() or world.weights()[2] == 0


def test_approval_gate_waits_for_someone_other_than_the_registrant(world: World) -> None:
    world.registry.update_model("iris", ModelUpdate(policy=ModelPolicy(
        require_approval_for_production=True)), ADMIN)
    rollout_id = world.start(steps=[100])
    world.serve(1)
    world.serve(2)
    world.run(8)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.AWAITING_APPROVAL
    # No step below 100%: the limit is 0, so the unapproved candidate waits with no traffic.
    assert world.weights().get(2, 0.0) == 0.0
    with pytest.raises(PermissionDeniedError):
        world.registry.approve("iris", 2, ApprovalCreate(decision="approved"),
                               Principal("alice", Role.APPROVER))
    world.registry.approve("iris", 2, ApprovalCreate(decision="approved"), BOB)
    world.run(8)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED
    assert world.registry.get_version("iris", 2).stage == "production"


def test_pause_resume_abort_and_guarding_the_route_table(world: World) -> None:
    rollout_id = world.start(steps=[30, 100], step_duration_s=2)
    world.serve(1)
    world.serve(2)
    world.run(1)
    with pytest.raises(ConflictError, match="active rollout"):
        world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 100}), ALICE)
    with pytest.raises(ConflictError, match="active rollout"):
        world.start()
    world.controller.pause(rollout_id, ALICE, "investigating")
    world.run(10)
    assert world.weights() == {1: 70.0, 2: 30.0}
    world.controller.resume(rollout_id, ALICE)
    with pytest.raises(ConflictError, match="not paused"):
        world.controller.resume(rollout_id, ALICE)
    world.controller.abort(rollout_id, ALICE, "wrong version")
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED and "aborted by alice" in rollout.reason
    # Asked again (its answer lost, say): it is aborted already, and nothing is written.
    events = len(world.controller.events(rollout_id))
    assert world.controller.abort(rollout_id, BOB, "again") == rollout
    assert len(world.controller.events(rollout_id)) == events
    with pytest.raises(ConflictError, match="is failed and cannot become rolled_back"):
        world.controller.rollback(rollout_id, ALICE)  # another end than the one it has
    assert world.weights() == {1: 100.0, 2: 0.0}
    assert world.registry.get_version("iris", 2).status == "ready"
    with pytest.raises(ConflictError):
        world.controller.promote(rollout_id, ALICE)


def test_a_promotion_asked_again_answers_what_it_did(world: World) -> None:
    rollout_id = world.start(steps=[10, 100])
    world.serve(1)
    world.serve(2)
    world.run(1)
    promoted = world.controller.promote(rollout_id, ALICE, "looks good")
    assert promoted.state == RolloutState.SUCCEEDED and world.weights()[2] == 100.0
    events = len(world.controller.events(rollout_id))
    assert world.controller.promote(rollout_id, ALICE, "looks good") == promoted
    assert len(world.controller.events(rollout_id)) == events


def test_a_new_controller_resumes_from_the_store(world: World) -> None:
    rollout_id = world.start(steps=[10, 50, 100], step_duration_s=3)
    world.serve(1)
    world.serve(2)
    world.run(5)
    before = world.controller.get(rollout_id)
    assert before.step_index >= 1 and before.state == RolloutState.PROGRESSING
    world.controller = RolloutController(
        world.registry.db, world.registry, world.deployments, stats=lambda e, w, s: world.stats,
        now=lambda: world.time)
    world.run(20)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED


def test_a_pass_that_lost_the_lease_while_reading_the_monitor_stores_no_decision(
        world: World) -> None:
    """A pass that began while its control plane led, and lost the lease while it read the
    Monitor (a stall longer than the lease's margin), stores no analysis and moves no
    traffic: the successor decides on its own evidence, once."""
    clock = [1_000_000.0]
    stale, successor = (Lease(world.registry.db, holder=holder, clock=lambda: clock[0],
                              monotonic=lambda: clock[0]) for holder in ("stale", "successor"))
    assert stale.hold()
    rollout_id = world.start(steps=[10, 50, 100], analysis={**FAST, "failures_to_rollback": 1})
    world.serve(1)
    world.serve(2, error_rate=0.5)  # one failed analysis rolls back
    with fenced_writes(stale.fence):
        world.run(1)  # the first step needs no analysis
    first_step = world.controller.get(rollout_id)
    assert first_step.state == RolloutState.PROGRESSING and not first_step.last_analysis
    events = [e.kind for e in world.controller.events(rollout_id)]

    def stalled_read(endpoint: str, window: Any, sample: Any) -> dict[int, VersionSnapshot]:
        clock[0] += LEASE_S + 1
        assert successor.hold()
        return world.stats

    world.controller._stats = stalled_read
    world.time += timedelta(seconds=1)
    with fenced_writes(stale.fence), pytest.raises(LeaseLost, match="successor"):
        world.controller.tick()
    assert world.controller.get(rollout_id) == first_step
    assert [e.kind for e in world.controller.events(rollout_id)] == events
    assert world.weights() == {1: 90.0, 2: 10.0}
    successors = RolloutController(
        world.registry.db, world.registry, world.deployments,
        stats=lambda endpoint, window, sample: world.stats, now=lambda: world.time)
    with fenced_writes(successor.fence):
        successors.tick()
    rolled_back = successors.get(rollout_id)
    assert rolled_back.state == RolloutState.ROLLED_BACK
    assert [e.kind for e in successors.events(rollout_id)].count("analysis_failed") == 1
    assert world.weights() in ({1: 100.0, 2: 0.0}, {1: 100.0})


@pytest.mark.parametrize("action, ended", [("rollback", RolloutState.ROLLED_BACK),
                                            ("abort", RolloutState.FAILED)])
def test_a_rollback_on_another_control_plane_during_a_step_is_not_undone(
        world: World, db_url: str, artifacts: ArtifactStore, action: str,
        ended: RolloutState) -> None:
    """Two control planes on one store: a deployer rolls back (or aborts) on one while the
    leader takes the next step on the other. The deployer's change waits for the step's
    transaction, so the step cannot overwrite its route table: the candidate would serve
    its step's share for good under an ended rollout. (A rollback's rejection of the
    candidate would refuse the step too; an abort judges nothing, so only the lock holds.)"""
    other = OtherControlPlane(world, db_url, artifacts)
    rollout_id = world.start(steps=[10, 50, 100], step_duration_s=3)
    world.serve(1)
    world.serve(2)
    world.run(2)
    assert world.weights()[2] == 10
    other.race_route_writes(world, getattr(other.controller, action), rollout_id, ALICE, "by hand")
    ended_by_hand = other.raced_while(world.run, 3, "the next step")
    assert not isinstance(ended_by_hand, Exception), ended_by_hand
    assert world.controller.get(rollout_id).state == ended
    assert world.weights() == {1: 100.0, 2: 0.0}


@pytest.mark.parametrize("action", ["rollback", "abort"])
def test_a_rollback_on_another_control_plane_during_the_promotion_moves_nothing_twice(
        world: World, db_url: str, artifacts: ArtifactStore, action: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployer rolls back on one control plane while the leader is promoting on the
    other. The champion alias and the stages move in the promotion's own transaction,
    behind the rollout's row lock, so the rollback waits and finds the rollout ended.
    (When the alias moved before that transaction, the rollback landed in between: the
    rollout ended rolled back with ``champion`` on the candidate it had just rejected.)"""
    other = OtherControlPlane(world, db_url, artifacts)
    rollout_id = world.start(steps=[100], step_duration_s=3)
    world.serve(1)
    world.serve(2)
    other.race_champion_read(monkeypatch, getattr(other.controller, action), rollout_id, ALICE,
                             "by hand")
    too_late = other.raced_while(world.run, 10, "the promotion")
    assert not isinstance(too_late, Exception), too_late
    assert too_late.state == RolloutState.SUCCEEDED  # it found the rollout ended
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED
    assert world.registry.get_model("iris").aliases.get("champion") == 2
    assert world.registry.get_version("iris", 2).stage == "production"
    assert world.registry.get_version("iris", 2).status != "rejected"
    assert world.weights() == {2: 100.0}  # stable drained and removed


@pytest.mark.parametrize("queued", [True, False], ids=["queued", "unqueued"])
def test_a_deployer_pointing_champion_during_the_promotion_does_not_fail_it(
        world: World, db_url: str, artifacts: ArtifactStore,
        monkeypatch: pytest.MonkeyPatch, queued: bool) -> None:
    """A deployer points ``champion`` (which no version held yet) at v3 on one control
    plane while the leader's promotion of v2 is about to create that alias on the other.
    Alias writes queue on the alias's name, so the deployer's waits for the promotion and
    lands after it: the rollout succeeds, and the alias ends where the later writer put it.
    (Unqueued, on PostgreSQL both found no alias and both inserted one; the promotion lost on
    the unique key, took that for a refusal and ended the rollout failed, traffic back on v1.
    A write lost on a unique key is a race, not a refusal: should two writers still meet
    there, the promotion is rolled back whole and the next tick makes it.)"""
    racing_on_the_key = not queued and not world.registry.db.is_sqlite
    if not queued:  # SQLite's writers queue anyway (BEGIN IMMEDIATE)
        monkeypatch.setattr(world.registry.db, "serialize", lambda session, name: None)
    other = OtherControlPlane(world, db_url, artifacts)
    rollout_id = world.start(steps=[100], step_duration_s=3)
    world.serve(1)
    world.serve(2)
    other.race_champion_read(monkeypatch, Registry(other.db, artifacts).set_alias, "iris",
                             "champion", AliasSet(version=3), ALICE, after_reading=True)
    pointed = other.raced_while(world.run, 10, "the promotion")
    assert not isinstance(pointed, Exception), pointed
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.SUCCEEDED, rollout.reason
    assert world.registry.get_version("iris", 2).stage == "production"
    assert world.weights() == {2: 100.0}
    assert pointed.version == 3
    # Queued, the deployer's write came last; racing, the promotion's second try did.
    assert world.registry.get_model("iris").aliases["champion"] == (2 if racing_on_the_key else 3)


def test_a_rollback_through_a_follower_leaves_its_follow_ups_to_the_leader(
        world: World, db_url: str, artifacts: ArtifactStore) -> None:
    """A deployer rolls back through a control plane that does not lead. The follow-ups
    the rollback owes (the candidate's rejection, the alert) are the leader's to finish on
    its next pass: both finishing them at once could each send the alert before either
    recorded it sent."""
    rollout_id = world.start(steps=[10, 100])
    world.serve(1)
    world.serve(2)
    world.run(1)
    assert world.controller.get(rollout_id).state == RolloutState.PROGRESSING
    db = Database(db_url)
    sent_by_follower: list[str] = []
    try:
        registry = Registry(db, artifacts)
        follower = RolloutController(
            db, registry, Deployments(db, registry, base_url="http://cp:8000"),
            stats=lambda endpoint, window, sample: world.stats,
            alert=lambda name, **kw: sent_by_follower.append(name), leading=lambda: False)
        rolled_back = follower.rollback(rollout_id, ALICE, "by hand")
    finally:
        db.dispose()
    assert rolled_back.state == RolloutState.ROLLED_BACK and sent_by_follower == []
    assert world.weights() == {1: 100.0, 2: 0.0}
    assert world.registry.get_version("iris", 2).status != "rejected"  # owed, not lost
    world.run(1)  # the leader's pass
    assert world.registry.get_version("iris", 2).status == "rejected"
    assert len(world.alerts) == 1 and world.alerts[0]["labels"]["version"] == "2"


def test_two_control_planes_cannot_both_start_a_rollout_on_one_endpoint(
        world: World, db_url: str, artifacts: ArtifactStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployer starts a rollout on one replica while a tracked alias (or a pipeline)
    starts one on the other: the second waits for the first's transaction and is refused,
    rather than both passing the "no active rollout" check and fighting over one table."""
    from control_plane.rollouts import controller as controller_module

    other = OtherControlPlane(world, db_url, artifacts)
    check = controller_module.refuse_during_rollout

    def checked_while_another_starts(*args: Any, **kwargs: Any) -> None:
        check(*args, **kwargs)
        other.race(other.controller.start, RolloutCreate(
            endpoint="iris", model_ref="iris:3", analysis=FAST), ALICE)

    monkeypatch.setattr(controller_module, "refuse_during_rollout", checked_while_another_starts)
    try:
        first = world.start(steps=[10, 50, 100])
        second = other.raced("the second start")
    finally:
        other.db.dispose()
    active = world.controller.list(endpoint="iris", active=True)
    assert [r.id for r in active] == [first]
    assert isinstance(second, ConflictError) and "has an active rollout" in str(second)


def test_a_feedback_gate_the_model_can_never_meet_is_refused_at_the_start(
        world: World) -> None:
    """min_accuracy on a regressor (or max_mae on a classifier) never has its figure:
    refused, naming the field, rather than a rollout that can only wait out its deadline."""
    info = world.registry.artifacts.put([linear_classifier(seed=7)])
    world.registry.register_version("iris", VersionCreate(
        artifact_digest=info.digest,
        manifest=linear_classifier_manifest(task="regression")), ALICE)
    for field, model_ref, task, instead in (
            ("max_mae", "iris:2", "classification", "min_accuracy"),
            ("min_accuracy", "iris:4", "regression", "max_mae"),
            ("min_shadow_agreement", "iris:4", "regression", "max_shadow_mae")):
        with pytest.raises(InvalidInputError) as refused:
            world.controller.start(RolloutCreate(endpoint="iris", model_ref=model_ref, analysis={
                **FAST, field: 0.5}), ALICE)
        assert refused.value.detail["field"] == f"analysis.{field}"
        assert f"is a {task} one" in refused.value.message
        assert f"or use {instead}" in refused.value.message
    # Drift needs the candidate's reference profile: without one it is never judged.
    with pytest.raises(InvalidInputError, match="has no reference profile") as refused:
        world.controller.start(RolloutCreate(endpoint="iris", model_ref="iris:2", analysis={
            **FAST, "fail_on_drift": True}), ALICE)
    assert refused.value.detail["field"] == "analysis.fail_on_drift"
    assert world.controller.list(endpoint="iris") == []
    world.controller.start(RolloutCreate(endpoint="iris", model_ref="iris:2", analysis={
        **FAST, "min_accuracy": 0.5}), ALICE)


def test_an_ab_accuracy_test_a_model_can_never_feed_is_refused_at_the_start(
        world: World) -> None:
    """An "other" model never has a label joined: its A/B accuracy test stayed undecided
    and held every step to the inconclusive deadline (a regressor's is skipped, said so)."""
    info = world.registry.artifacts.put([linear_classifier(seed=8)])
    other = world.registry.register_version("iris", VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest(task="other")), ALICE)
    ab_test = {"accuracy_effect": 0.05}
    with pytest.raises(InvalidInputError) as refused:
        world.controller.start(RolloutCreate(
            endpoint="iris", model_ref=f"iris:{other.version}",
            analysis={**FAST, "ab_test": ab_test}), ALICE)
    assert refused.value.detail["field"] == "analysis.ab_test.accuracy_effect"
    assert "says task 'other'" in refused.value.message
    world.controller.start(RolloutCreate(endpoint="iris", model_ref="iris:2",
                                         analysis={**FAST, "ab_test": ab_test}), ALICE)


def test_moving_a_tracked_alias_starts_a_rollout(world: World) -> None:
    template = RolloutTemplate(steps=[100], step_duration_s=2, analysis=FAST)
    world.controller.set_policy("iris", RolloutPolicy(track_alias="challenger", template=template),
                                ALICE)
    world.run(2)
    assert world.controller.list(endpoint="iris") == []
    world.registry.set_alias("iris", "challenger", AliasSet(version=3), ALICE)
    world.serve(1)
    world.serve(3)
    world.run(1)
    started = world.controller.latest("iris")
    assert started.candidate_version == 3 and started.created_by == "alias:challenger"
    world.run(10)
    assert world.controller.latest("iris").state == RolloutState.SUCCEEDED
    world.run(10)
    assert len(world.controller.list(endpoint="iris")) == 1


def test_an_alias_left_where_it_was_does_not_roll_the_endpoint_back(world: World) -> None:
    """challenger named v1, which the endpoint served by a direct deploy; once a rollout
    replaced v1 with v2, the alias's value alone (never moved) started a rollout of v1,
    and production reverted with nobody moving anything."""
    world.registry.set_alias("iris", "challenger", AliasSet(version=1), ALICE)
    template = RolloutTemplate(steps=[100], step_duration_s=2, analysis=FAST)
    world.controller.set_policy("iris", RolloutPolicy(track_alias="challenger", template=template),
                                ALICE)
    world.start(steps=[100])  # v2, by hand
    world.serve(1)
    world.serve(2)
    world.serve(3)
    world.run(15)
    assert world.controller.latest("iris").state == RolloutState.SUCCEEDED
    assert [r.candidate_version for r in world.controller.list(endpoint="iris")] == [2]
    assert world.weights()[2] == 100.0
    world.registry.set_alias("iris", "challenger", AliasSet(version=3), ALICE)  # a move
    world.run(1)
    started = world.controller.latest("iris")
    assert started.candidate_version == 3 and started.created_by == "alias:challenger"


def test_a_stable_version_rejected_later_still_gives_way_to_a_rollout(world: World) -> None:
    """Rejected after it took the endpoint (a rollback elsewhere, by hand), the stable
    version kept all the traffic: every step was refused for giving it any, and the
    rollout replacing it stayed pending."""
    world.registry.reject_version("iris", 1, "rolled back on another endpoint", ALICE)
    rollout_id = world.start(steps=[10, 100])
    world.serve(1)
    world.serve(2)
    world.run(1)
    assert world.controller.get(rollout_id).state == RolloutState.PROGRESSING
    assert world.weights() == {1: 90.0, 2: 10.0}
    world.run(10)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED
    with pytest.raises(ConflictError, match="rejected"):  # gaining traffic stays refused
        world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 50, 2: 50}), ALICE)


def test_an_alias_rollout_that_cannot_start_holds_up_no_other_endpoints(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """The first endpoint's tracked template asks for a gate the candidate cannot give
    evidence for, so its rollout is refused at start; the endpoint after it still gets its
    own, and the refusal is logged once, not every pass."""
    world.deployments.deploy(DeployRequest(endpoint="iris-b", model_ref="iris:1"), ALICE)
    refused = RolloutTemplate(steps=[100], step_duration_s=2, analysis={**FAST, "max_mae": 0.5})
    template = RolloutTemplate(steps=[100], step_duration_s=2, analysis=FAST)
    world.controller.set_policy("iris", RolloutPolicy(track_alias="challenger", template=refused),
                                ALICE)
    world.controller.set_policy("iris-b", RolloutPolicy(track_alias="challenger",
                                                        template=template), ALICE)
    world.registry.set_alias("iris", "challenger", AliasSet(version=3), ALICE)
    world.serve(1)
    world.serve(3)
    with caplog.at_level(logging.WARNING, logger="control_plane.rollouts.controller"):
        world.run(5)
    assert world.controller.list(endpoint="iris") == []
    started = world.controller.latest("iris-b")
    assert started is not None and started.candidate_version == 3
    warnings = [r.getMessage() for r in caplog.records if "cannot start" in r.getMessage()]
    assert len(warnings) == 1 and "analysis.max_mae" in warnings[0], warnings


def switch_to_slower(world: World, p95: float, step_duration_s: float = 3,
                     **analysis: Any) -> int:
    """A blue-green rollout whose candidate agrees with stable on the shadow step and then,
    at the switch, takes every request (stable none) at ``p95`` ms; its id."""
    rollout_id = world.start(strategy="blue_green", steps=None, step_duration_s=step_duration_s,
                             analysis={**FAST, "min_shadow_agreement": None, **analysis})
    world.serve(1, requests=0)
    world.serve(2, requests=200, p95=p95, shadow=ShadowComparison(compared=200, agreement=1.0))
    return rollout_id


def test_a_last_step_without_stable_traffic_is_judged_against_stables_earlier_figures(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 100% stable answers nothing in the window; the controller asks the Monitor for
    stable's figures over its whole memory, and a candidate six times slower than they
    were is rolled back, the baseline kept with the analysis. Not rejected: earlier
    figures are not the same requests, and a caller sending heavier ones now could slow
    any candidate down (at a step shared with stable, both would slow alike)."""
    from control_plane.rollouts.controller import BASELINE_WINDOW_S

    asked: list[float] = []
    earlier = {1: served(500, p95=10.0), 2: served(0)}

    def stats(endpoint: str, window: float, sample: Any) -> dict[int, Any]:
        asked.append(window)
        return earlier if window == BASELINE_WINDOW_S else world.stats

    monkeypatch.setattr(world.controller, "_stats", stats)
    # The shadow step judges the mirrored answers, which agree; at the switch v2 takes
    # everything, six times slower than v1 was.
    rollout_id = switch_to_slower(world, p95=60.0)
    world.run(20)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    assert "p95_ratio 6 > 1.5" in rollout.reason and "not rejected" in rollout.reason
    world.run(1)  # the follow-ups: the rollback's alert, and no rejection
    assert world.registry.get_version("iris", 2).status == "ready"
    assert BASELINE_WINDOW_S in asked
    assert rollout.last_analysis["stable_baseline"]["window_s"] == BASELINE_WINDOW_S
    assert world.weights() == {1: 100.0}
    # A person who judges the candidate bad rolls it back by hand: that rejects it.
    again = world.controller.rollback(rollout_id, ALICE, "slow, I checked")
    assert again.state == RolloutState.ROLLED_BACK
    world.run(1)
    rejected = world.registry.get_version("iris", 2)
    assert rejected.status == "rejected" and "slow, I checked" in rejected.status_reason


@pytest.mark.parametrize("stables_last_second", [0, 300])
def test_a_switch_failing_an_absolute_latency_gate_alone_rolls_back_without_rejecting(
        world: World, monkeypatch: pytest.MonkeyPatch, stables_last_second: int) -> None:
    """At the switch only the candidate answers, so max_p95_ms is judged on it alone: a
    caller sending heavy requests there slowed any candidate past it and got a good
    version rejected for good. The same where the window still holds stable's last second
    before the switch (a busy endpoint: more than min_samples), which are not the same
    requests. It still rolls back (alert and all); a person rejects."""
    from control_plane.rollouts.controller import BASELINE_WINDOW_S

    earlier = {1: served(500, p95=50.0), 2: served(0)}
    monkeypatch.setattr(world.controller, "_stats", lambda endpoint, window, sample: (
        earlier if window == BASELINE_WINDOW_S else world.stats))
    rollout_id = switch_to_slower(world, p95=60.0, max_p95_ms=40, max_p95_ratio=None)
    world.serve(1, requests=stables_last_second, p95=50.0)
    world.run(20)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    assert "p95_ms 60 > 40" in rollout.reason and "not rejected" in rollout.reason
    world.run(1)
    assert world.registry.get_version("iris", 2).status == "ready"
    assert world.weights() == {1: 100.0}


def test_a_slow_monitor_read_moves_the_streaks_next_window_past_what_it_judged(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Monitor takes 0.9 s to answer: the failing analysis judged what arrived up to
    its answer, so the next window of the streak begins there, not when the analysis began."""
    def slow_stats(endpoint: str, window: float, sample: Any) -> dict[int, Any]:
        world.time += timedelta(seconds=0.9)
        return world.stats

    monkeypatch.setattr(world.controller, "_stats", slow_stats)
    world.serve(1)
    world.serve(2, error_rate=0.2)
    rollout_id = world.start(analysis={**FAST, "interval_s": 3})
    for _ in range(40):
        world.run(0.25, step=0.25)
        if world.controller.get(rollout_id).failures:
            break
    first = world.controller.get(rollout_id).last_analysis
    assert first["verdict"] == "fail", first
    failed_at = datetime.fromisoformat(first["failed_at"])
    assert failed_at - datetime.fromisoformat(first["at"]) == timedelta(seconds=0.9)
    world.run(10, step=0.25)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    second = rollout.last_analysis
    since_failure = (datetime.fromisoformat(second["at"]) - failed_at).total_seconds()
    assert since_failure > 1 and second["window_s"] == pytest.approx(since_failure)


def test_stables_baseline_rate_counts_the_seconds_it_served_not_the_steps_idle_ones(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stable served 10 req/s until the switch; its figures are asked for over the
    Monitor's 300 s once its own traffic has left the analysis window, 130 s into the step,
    and the Monitor's rate counts those idle seconds (5.7 req/s). The candidate's same load
    then read as 1.76 times stable's, too heavy to compare latencies with: a candidate six
    times slower went unjudged, inconclusive, where it must be rolled back."""
    from dataclasses import replace

    from control_plane.rollouts.controller import BASELINE_WINDOW_S

    def at_rate(snapshot: VersionSnapshot, rps: float, observed_s: float) -> VersionSnapshot:
        return replace(snapshot, traffic=replace(snapshot.traffic, throughput_rps=rps,
                                                 window_s=observed_s, observed_s=observed_s))

    earlier = {1: at_rate(served(1700, p95=10.0), 10.0 * 170 / 300, 300.0), 2: served(0)}
    stable_in_window = {"requests": 500}

    def stats(endpoint: str, window: float, sample: Any) -> dict[int, Any]:
        if window == BASELINE_WINDOW_S:
            return earlier
        return {**world.stats, 1: served(stable_in_window["requests"], p95=10.0)}

    monkeypatch.setattr(world.controller, "_stats", stats)
    rollout_id = switch_to_slower(world, p95=10.0, step_duration_s=200,
                                  inconclusive_deadline_s=None, max_p95_ms=None)
    world.stats[2] = at_rate(world.stats[2], 10.0, 120.0)
    world.run(205)  # the shadow step passes; at the switch stable's traffic is still in the window
    world.run(130)
    rollout = world.controller.get(rollout_id)
    assert rollout.step_index == 1 and rollout.state == RolloutState.PROGRESSING
    stable_in_window["requests"] = 0  # stable's last requests leave the analysis window
    world.stats[2] = at_rate(served(200, p95=60.0), 10.0, 120.0)  # and the candidate slows
    world.run(10)
    rollout = world.controller.get(rollout_id)
    # Rolled back, not rejected (against earlier figures: see the test above).
    assert rollout.state == RolloutState.ROLLED_BACK, (rollout.reason, rollout.last_analysis)
    assert "not rejected" in rollout.reason
    assert "p95_ratio 6 > 1.5" in rollout.reason


def test_a_step_without_stable_traffic_outlasting_the_monitors_memory_keeps_its_baseline(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held past the Monitor's memory (or the Monitor restarted), the 100% step no longer
    finds stable's figures there: the analyses compare with the baseline the step's first
    analysis kept, and a candidate slowing down later is still rolled back."""
    from control_plane.rollouts.controller import BASELINE_WINDOW_S

    remembered = {"stable": True}
    earlier = {1: served(500, p95=10.0), 2: served(0)}

    def stats(endpoint: str, window: float, sample: Any) -> dict[int, Any]:
        if window == BASELINE_WINDOW_S:
            return earlier if remembered["stable"] else {}
        return world.stats

    monkeypatch.setattr(world.controller, "_stats", stats)
    rollout_id = switch_to_slower(world, p95=11.0, step_duration_s=60)
    for _ in range(120):
        world.run(1)
        rollout = world.controller.get(rollout_id)
        if rollout.step_index == 1 and "stable_baseline" in rollout.last_analysis:
            break
    assert rollout.last_analysis["verdict"] == "pass", rollout.last_analysis
    kept = rollout.last_analysis["stable_baseline"]
    remembered["stable"] = False  # the Monitor's memory of stable is gone
    world.serve(2, requests=200, p95=60.0)
    world.run(10)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    assert "not rejected" in rollout.reason
    assert "p95_ratio 6 > 1.5" in rollout.reason
    assert rollout.last_analysis["stable_baseline"] == kept
    assert world.weights() == {1: 100.0}


def test_a_baseline_of_few_requests_with_unknown_bounds_is_kept_and_the_step_goes_on(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over too few requests the p99's upper bound is unknown (NaN). The kept baseline
    holds it as null: PostgreSQL refused the NaN, every analysis of the 100% step failed
    to store, and the rollout never ended (SQLite took it and hid the fault)."""
    from control_plane.rollouts.controller import BASELINE_WINDOW_S

    nan = float("nan")
    earlier = {1: served(60, p95=10.0, p99_bounds=(10.0, nan), p95_bounds=(9.0, nan)),
               2: served(0)}
    monkeypatch.setattr(world.controller, "_stats", lambda endpoint, window, sample: (
        earlier if window == BASELINE_WINDOW_S else world.stats))
    rollout_id = switch_to_slower(world, p95=10.0)
    for _ in range(60):
        world.run(1)
        rollout = world.controller.get(rollout_id)
        if rollout.step_index == 1 and "stable_baseline" in rollout.last_analysis:
            break
    figures = rollout.last_analysis["stable_baseline"]["figures"]["latency"]
    assert figures["p99_bounds_ms"] == [10.0, None] and figures["p95_bounds_ms"] == [9.0, None]
    world.run(20)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.SUCCEEDED, rollout.reason
    assert world.weights() == {2: 100.0}


def test_a_kept_baseline_stands_for_an_hour_then_only_the_absolute_checks_judge(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stable's figures from before a long 100% step say less of it as the day goes on
    (traffic grows, its mix changes): after an hour they no longer decide, and the step
    goes on under the absolute gates rather than failing at the deadline."""
    from control_plane.rollouts.controller import BASELINE_WINDOW_S
    from control_plane.rollouts.decision import BASELINE_MAX_AGE_S

    earlier = {1: served(500, p95=10.0), 2: served(0)}
    remembered = {"stable": True}
    monkeypatch.setattr(world.controller, "_stats", lambda endpoint, window, sample: (
        (earlier if remembered["stable"] else {}) if window == BASELINE_WINDOW_S
        else world.stats))
    rollout_id = switch_to_slower(world, p95=11.0, step_duration_s=7200,
                                  inconclusive_deadline_s=None)
    world.run(7300, step=100)  # the shadow step, then the switch: its hold begins
    world.run(5)
    rollout = world.controller.get(rollout_id)
    assert rollout.step_index == 1 and rollout.last_analysis["verdict"] == "pass"
    assert "p95_ratio" in rollout.last_analysis["checks"]
    remembered["stable"] = False
    world.run(BASELINE_MAX_AGE_S + 200, step=100)
    world.serve(2, requests=200, p95=30.0)  # 3x stable's figures of over an hour ago
    world.run(10)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING, rollout.reason
    assert rollout.last_analysis["verdict"] == "pass"
    assert "p95_ratio" not in rollout.last_analysis["checks"]
    assert rollout.last_analysis["stable_baseline"]["expired"] is True


def test_a_step_without_any_figures_of_stables_is_not_passed(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Monitor restarted at the switch has stable's figures neither in the window nor in
    its memory: the relative checks are unknown, so the candidate is not promoted on the
    absolute ones alone, and the deadline for evidence runs."""
    monkeypatch.setattr(world.controller, "_stats",
                        lambda endpoint, window, sample: {} if window > 5 else world.stats)
    rollout_id = switch_to_slower(world, p95=60.0)
    world.run(30)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING and rollout.step_index == 1, rollout.reason
    assert rollout.last_analysis["verdict"] == "inconclusive"
    assert "p95_ratio" in rollout.last_analysis["reason"]
    assert world.weights()[2] == 100.0


def test_statistics_that_cannot_be_read_are_inconclusive_and_the_deadline_runs(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Monitor answering something the controller cannot read raised out of every pass:
    nothing was recorded, the deadline for evidence never ran, and the candidate kept its
    share (and the endpoint its lock on changes) for good."""
    rollout_id = world.start(analysis={**FAST, "inconclusive_deadline_s": 20})
    world.serve(1, requests=500)
    world.serve(2, requests=100)
    world.run(2)
    assert world.weights()[2] > 0

    def unreadable(endpoint: str, window: float, sample: Any) -> dict[int, Any]:
        raise RuntimeError("an answer of a shape this version does not know")

    monkeypatch.setattr(world.controller, "_stats", unreadable)
    world.run(10)
    rollout = world.controller.get(rollout_id)
    assert rollout.last_analysis["verdict"] == "inconclusive"
    assert "could not be read: RuntimeError: an answer of a shape" in rollout.last_analysis["reason"]
    world.run(20)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED, rollout.reason
    assert world.weights() == {1: 100.0}


def test_a_rollout_whose_every_pass_fails_ends_at_the_deadline(
        world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A pass that raises records nothing, so no inconclusive analysis runs the deadline:
    a store refusing the analysis left the candidate its share for good. Without a stored
    analysis for the deadline (the passes between analyses, every quarter second, store
    none and fail at nothing) the rollout fails, naming the error; a stored analysis
    starts the clock over."""
    rollout_id = world.start(analysis={**FAST, "interval_s": 10, "inconclusive_deadline_s": 60},
                             step_duration_s=600)
    world.serve(1, requests=500)
    world.serve(2, requests=100)
    world.run(12, step=0.25)
    assert world.weights()[2] > 0
    record = world.controller._record

    def refused(*args: Any) -> bool:
        raise RuntimeError("the store refused the analysis\nSQL: UPDATE rollouts ...")

    monkeypatch.setattr(world.controller, "_record", refused)
    world.run(45, step=0.25)
    monkeypatch.setattr(world.controller, "_record", record)
    world.run(12, step=0.25)  # an analysis stored: the failures' clock starts over
    monkeypatch.setattr(world.controller, "_record", refused)
    world.run(50, step=0.25)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING, rollout.reason
    assert world.weights()[2] > 0
    with caplog.at_level(logging.ERROR):
        world.run(30, step=0.25)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED, rollout.reason
    assert "could not advance it for 6" in rollout.reason or \
        "could not advance it for 7" in rollout.reason, rollout.reason
    assert "RuntimeError: the store refused the analysis)" in rollout.reason
    assert world.weights() == {1: 100.0}
    assert any("advancing rollout #1 failed" in r.getMessage() for r in caplog.records)


def test_a_step_is_judged_and_held_only_once_its_traffic_is_served(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's routes are committed, then applied to Serve: with the control plane killed
    in between (or Serve refusing them), the old split served while the step held and its
    analyses judged the old split, and the rollout walked its steps unseen."""
    from sqlalchemy import select

    from control_plane.reconciler import incarnation_of
    from control_plane.store.models import EndpointRow
    from serving.monitoring.stats import ServedConfig

    def written() -> ServedConfig:
        with world.registry.db.session(readonly=True) as session:
            row = session.scalar(select(EndpointRow).where(EndpointRow.name == "iris"))
            return ServedConfig(incarnation_of(row), row.generation, (1, 2))

    before = written()
    serving = {"config": before}
    monkeypatch.setattr(world.controller, "_served", lambda endpoint: serving["config"])
    rollout_id = world.start(steps=[10, 50, 100], step_duration_s=3)
    world.serve(1, requests=500)
    world.serve(2, requests=100)
    world.run(20)
    rollout = world.controller.get(rollout_id)
    assert rollout.step_index == 0 and rollout.last_analysis["verdict"] == "inconclusive"
    assert "not served yet: the endpoint's replicas report its configuration" in \
        rollout.last_analysis["reason"]
    serving["config"] = written()  # applied at last: the step's hold starts now
    world.run(2)
    assert world.controller.get(rollout_id).step_index == 0
    world.run(10)
    assert world.controller.get(rollout_id).step_index >= 1
    # Replicas of another creation of the name, or a Monitor that knows nothing: no word
    # either way, and the rollout goes on.
    serving["config"] = before._replace(incarnation="another")
    world.run(30)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED


def test_bad_requests_name_the_problem(world: World) -> None:
    with pytest.raises(ConflictError, match="already takes the most traffic"):
        world.controller.start(RolloutCreate(endpoint="iris", model_ref="iris:1"), ALICE)
    with pytest.raises(InvalidInputError, match="canary steps must increase"):
        world.start(steps=[50, 20, 100])
    with pytest.raises(ValueError, match="not a duration"):
        RolloutCreate(endpoint="iris", model_ref="iris:2", step_duration_s="soon")
    assert RolloutCreate(endpoint="iris", model_ref="iris:2", step_duration_s="2m").step_duration_s == 120


def test_the_shipped_rollout_example_is_valid() -> None:
    from pathlib import Path

    import yaml

    example = Path(__file__).parents[3] / "examples" / "rollout-canary.yaml"
    template = RolloutTemplate.model_validate(yaml.safe_load(example.read_text()))
    assert template.step_duration_s == 120 and template.analysis.interval_s == 10
    assert template.analysis.to_config().min_accuracy == 0.9


@pytest.mark.parametrize(("analysis", "sample"), [
    ({}, ("random",)),
    ({"include_sticky": True}, ("random", "sticky")),
    ({"include_sticky": True, "include_pinned": True}, ("random", "sticky", "pinned")),
])
def test_the_monitor_is_asked_for_the_rollout_s_own_sample(world: World, analysis: dict[str, Any],
                                                            sample: tuple[str, ...]) -> None:
    asked: list[tuple[str, ...]] = []

    def read(endpoint: str, window: float, routings: tuple[str, ...]) -> dict[int, VersionSnapshot]:
        asked.append(routings)
        return world.stats

    world.controller._stats = read
    world.start(steps=[10, 100], analysis={**FAST, **analysis})
    world.serve(1)
    world.serve(2)
    world.run(3)
    assert asked and set(asked) == {sample}


def test_a_version_being_rolled_out_is_neither_rejected_nor_deleted_under_it(world: World) -> None:
    """A careless operator rejecting (or an admin deleting) the candidate mid-rollout left
    the rollout unable to route it, retrying every pass, the endpoint locked for good."""
    rollout_id = world.start(steps=[10, 100])
    # Pending: no traffic on the candidate yet, so only the rollout stands in the way.
    with pytest.raises(ConflictError, match=f"rollout #{rollout_id} is rolling out iris:2"):
        world.registry.delete_version("iris", 2, ADMIN)
    # Nor archived: it would take its traffic archived, and `db check` saw nothing wrong.
    with pytest.raises(ConflictError, match=f"rollout #{rollout_id} is rolling out iris:2"):
        world.registry.transition_stage("iris", 2, StageChange(stage=Stage.ARCHIVED), ALICE)
    world.serve(1)
    world.serve(2)
    world.run(2)
    assert world.weights() == {1: 90, 2: 10}
    with pytest.raises(ConflictError, match=f"rollout #{rollout_id} is rolling out iris:2"):
        world.registry.reject_version("iris", 2, "looks wrong", ALICE)
    assert world.registry.get_version("iris", 2).status != "rejected"
    world.controller.abort(rollout_id, ALICE, "looks wrong")
    assert world.registry.reject_version("iris", 2, "looks wrong", ALICE).status == "rejected"


def test_a_rejection_between_resolving_the_candidate_and_starting_is_seen(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = world.registry.resolve("iris:2")  # what start() read before its transaction
    world.registry.reject_version("iris", 2, "failed its evaluation", ALICE)
    monkeypatch.setattr(world.registry, "resolve", lambda ref: stale)
    with pytest.raises(ConflictError, match="was rejected"):
        world.start(steps=[10, 100])
    assert world.controller.list(endpoint="iris", active=True) == []


def test_a_plan_of_more_than_a_hundred_steps_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at most 100"):
        RolloutCreate(endpoint="iris", model_ref="iris:2",
                      steps=[index / 10 for index in range(1, 1001)])
    assert RolloutCreate(endpoint="iris", model_ref="iris:2", steps=list(range(1, 101)))


def test_a_candidate_rejected_elsewhere_ends_its_rollout_here(world: World) -> None:
    """Two endpoints tracking one alias roll one version out at once: the other's rollback
    rejects it, and this rollout, which can no longer give it traffic, ends at once rather
    than retrying a step it can never take."""
    from control_plane.registry import mark_rejected
    from control_plane.store.models import ModelRow, ModelVersionRow

    rollout_id = world.start(steps=[10, 50, 100])
    world.serve(1)
    world.serve(2)
    world.run(2)
    assert world.weights() == {1: 90, 2: 10}
    with world.registry.db.session() as session:  # what the other rollout's follow-up does
        version = session.scalar(select(ModelVersionRow).join(ModelRow).where(
            ModelRow.name == "iris", ModelVersionRow.version == 2))
        mark_rejected(version, "rolled back on iris-eu: error rate 20%")
    world.run(1)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.FAILED
    assert "v2 was rejected meanwhile (rolled back on iris-eu: error rate 20%)" in rollout.reason
    assert world.weights() == {1: 100, 2: 0}


def test_a_pipeline_gate_rejects_a_candidate_an_alias_rollout_has_begun(world: World) -> None:
    from types import SimpleNamespace

    from control_plane.pipelines.gates import reject

    rollout_id = world.start(steps=[10, 100])
    world.serve(1)
    world.serve(2)
    world.run(2)
    services = SimpleNamespace(registry=world.registry, rollouts=world.controller)
    context = SimpleNamespace(candidate=("iris", 2), record=SimpleNamespace(name="evaluate"),
                              run=SimpleNamespace(pipeline="bc", number=3, author="alice"))
    reject(services, context, "accuracy 0.61 is below min_accuracy 0.9")
    assert world.controller.get(rollout_id).state == RolloutState.FAILED
    rejected = world.registry.get_version("iris", 2)
    assert rejected.status == "rejected" and "run #3, evaluate" in rejected.status_reason


def test_a_traffic_change_on_another_control_plane_as_the_old_stable_retires_is_kept(
        world: World, db_url: str, artifacts: ArtifactStore) -> None:
    """Right after a promotion, a deployer puts the old stable back to half the traffic on
    one control plane while the leader retires it, drained, on the other. The retirement
    holds the endpoint's lock from its read of the route table to its write, so the
    deployer's table lands after it (v1 back at 50%): never silently reverted, under one
    generation number that names two tables."""
    other = OtherControlPlane(world, db_url, artifacts)
    rollout_id = world.start(steps=[100], step_duration_s=3, drain_s=2)
    world.serve(1)
    world.serve(2)
    for _ in range(10):
        world.run(1)
        if world.controller.get(rollout_id).state.terminal:
            break
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED
    assert world.weights() == {2: 100.0, 1: 0.0}
    other.race_route_writes(world, other.controller.deployments.set_traffic, "iris",
                            TrafficUpdate(weights={1: 50, 2: 50}), ALICE)
    changed = other.raced_while(world.run, 3, "the retirement")
    assert not isinstance(changed, Exception), changed  # a lock timeout or deadlock is not it
    assert world.weights() == {1: 50.0, 2: 50.0}
    assert changed.generation == world.deployments.get("iris").generation


def test_a_candidate_with_requirements_of_its_own_is_refused_on_a_colocated_endpoint(
        world: World) -> None:
    """Accepted, its first step's route write was refused on every tick, and so were abort
    and rollback: the endpoint was locked until someone edited the store."""
    from control_plane.errors import ConflictError
    from control_plane.store.models import ModelRow, ModelVersionRow

    with world.registry.db.session() as session:
        row = session.scalar(select(ModelVersionRow).join(ModelRow).where(
            ModelRow.name == "iris", ModelVersionRow.version == 2))
        manifest = dict(row.manifest)
        row.manifest = {**manifest, "code": {**(manifest.get("code") or {}),
                                             "preprocess": "steps:prepare",
                                             "requirements": ["tabulate>=0.8"]}}
    with pytest.raises(ConflictError, match="placement isolated") as refused:
        world.start()
    assert refused.value.detail["field"] == "model_ref"
    assert world.controller.list(endpoint="iris") == [] and world.weights() == {1: 100.0}


def test_a_rollout_aborted_before_its_first_step_adds_no_route(world: World) -> None:
    rollout_id = world.start()
    world.controller.abort(rollout_id, ALICE, "not now")
    assert world.weights() == {1: 100.0}


def test_a_rollout_is_refused_where_other_versions_take_traffic_or_shadow_it(world: World) -> None:
    """Every step writes the stable version and the candidate alone: v3's share (or its
    shadow) was dropped at the first step, and no rollback brought it back."""
    for table in ({1: 60, 3: 40}, {1: 100}):
        shadows = [3] if table == {1: 100} else []
        world.deployments.set_traffic("iris", TrafficUpdate(weights=table, shadows=shadows), ALICE)
        with pytest.raises(ConflictError, match="also routes to v3") as refused:
            world.start()
        assert refused.value.detail["versions"] == [3]
    world.deployments.set_traffic("iris", TrafficUpdate(weights={1: 100, 3: 0}), ALICE)
    world.start()  # a version at 0% takes nothing: it may be left behind


def test_a_resumed_step_is_judged_on_evidence_from_after_the_resume(world: World) -> None:
    """The analysis from before a pause let the step advance at the hold's end, with no
    look since the resume."""
    rollout_id = world.start(steps=[30, 100], step_duration_s=3,
                             analysis={**FAST, "interval_s": 30})
    world.serve(1)
    world.serve(2)
    world.run(2)  # the step's first analysis: a pass
    assert world.controller.get(rollout_id).last_analysis
    world.controller.pause(rollout_id, ALICE, "a look")
    world.controller.resume(rollout_id, ALICE)
    assert not world.controller.get(rollout_id).last_analysis
    world.run(4)  # the hold is over, the next analysis not yet due
    assert world.weights() == {1: 70.0, 2: 30.0}


def test_a_resumed_step_starts_its_failure_streak_again(world: World) -> None:
    """One failing look before a pause and one after rolled back a streak of two: the
    resumed step carries no analysis over, its failures included."""
    rollout_id = world.start(steps=[30, 100], step_duration_s=600,
                             analysis={**FAST, "failures_to_rollback": 2})
    world.serve(1)
    world.serve(2, error_rate=0.2)
    world.run(2)
    assert world.controller.get(rollout_id).failures == 1
    world.controller.pause(rollout_id, ALICE, "a look")
    world.controller.resume(rollout_id, ALICE)
    assert world.controller.get(rollout_id).failures == 0
    for _ in range(20):  # to the resumed step's first failing look
        world.run(0.25, step=0.25)
        if world.controller.get(rollout_id).failures:
            break
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING and rollout.failures == 1


def test_a_streak_at_its_limit_is_a_rollback_a_pause_and_resume_do_not_undo(
        world: World) -> None:
    """The streak reached its limit and was stored, and the process was lost before the
    rollback: the next pass rolls back. A pause and a resume in between cleared it."""
    from control_plane.store.models import RolloutRow

    rollout_id = world.start(steps=[30, 100], step_duration_s=600,
                             analysis={**FAST, "failures_to_rollback": 2})
    world.serve(1)
    world.serve(2, error_rate=0.2)
    for _ in range(20):
        world.run(0.25, step=0.25)
        if world.controller.get(rollout_id).failures:
            break
    kept = world.controller.get(rollout_id).last_analysis
    with world.registry.db.session() as session:  # the second failure stored, the process lost
        session.get(RolloutRow, rollout_id).failures = 2
    world.controller.pause(rollout_id, ALICE, "a look")
    world.controller.resume(rollout_id, ALICE)
    resumed = world.controller.get(rollout_id)
    assert resumed.failures == 2 and resumed.last_analysis == kept
    world.run(1)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK and "error_rate" in rollout.reason


def test_an_undeployed_endpoint_s_drained_version_is_not_taken_from_its_successor(
        world: World) -> None:
    rollout_id = world.start(steps=[100], drain_s=600)
    world.serve(1)
    world.serve(2)
    world.run(10)
    assert world.controller.get(rollout_id).state == RolloutState.SUCCEEDED
    world.deployments.undeploy("iris", ALICE)
    world.deployments.deploy(DeployRequest(endpoint="iris", model_ref="iris:3"), ALICE)
    world.deployments.deploy(DeployRequest(endpoint="iris", model_ref="iris:1", weight=0), ALICE)
    world.run(700)
    assert world.weights() == {3: 100.0, 1: 0.0}


def test_a_shadow_candidate_rolled_back_is_kept_at_zero_where_asked(world: World) -> None:
    """Shadowing, the candidate has a route but no weight: it was dropped, not kept."""
    rollout_id = world.start(strategy="shadow", keep_candidate=True)
    world.serve(1)
    world.serve(2)
    world.run(2)
    assert 2 in {r.version for r in world.deployments.get("iris").routes if r.shadow}
    world.controller.rollback(rollout_id, ALICE, "disagrees")
    assert world.weights() == {1: 100.0, 2: 0.0}


def test_stable_s_baseline_rate_is_over_the_seconds_it_served_and_its_replicas_reached() -> None:
    """Stable took nothing since the step began (``idle_s``). Where a replica still sends
    what it kept for a restarted Monitor, the newest seconds it has not reached, idle ones,
    are already out of the Monitor's rate: taken out twice, stable's load read heavier
    than it was (270/210 for 270/240)."""
    from dataclasses import replace

    from control_plane.rollouts.controller import _rate_while_serving
    from serving.monitoring.snapshot import Replicas

    stable = served(24_000)  # over 240 s reached of the 270 seen, 30 of them idle
    traffic = replace(stable.traffic, throughput_rps=100.0, window_s=300.0, observed_s=240.0)
    catching_up = replace(stable, traffic=traffic, replicas=Replicas(reporting=1,
                                                                     catching_up_s=30.0))
    rated = _rate_while_serving(catching_up, idle_s=60.0)
    assert rated is not None and rated.traffic.throughput_rps == pytest.approx(100.0 * 240 / 210)
    caught_up = replace(catching_up, traffic=replace(traffic, observed_s=270.0),
                        replicas=Replicas(reporting=1))
    rated = _rate_while_serving(caught_up, idle_s=60.0)
    assert rated is not None and rated.traffic.throughput_rps == pytest.approx(100.0 * 270 / 210)


def test_a_baseline_whose_rate_is_unknown_is_not_taken() -> None:
    """Unknown while a replica catches up (serving.monitoring.monitor): kept, it left the
    step's load check without a baseline for the whole step."""
    import math
    from dataclasses import replace

    from control_plane.rollouts.controller import _rate_while_serving

    stable = served(24_000)
    unknown = replace(stable, traffic=replace(stable.traffic, throughput_rps=math.nan))
    assert _rate_while_serving(unknown, idle_s=60.0) is None
    assert _rate_while_serving(unknown, idle_s=0.0) is None
