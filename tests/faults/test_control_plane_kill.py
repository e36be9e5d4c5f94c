"""The control plane killed during each phase of a rollout, under load, on real Ray + Serve.

Every kill is a real SIGKILL of the control plane's one Serve replica process; Serve starts
a new replica, which resumes from the store. How each phase is hit:

- **step change**: the test polls the store and kills the process (its id asked of the
  replica actor through Ray, since other Ray sessions may run a replica of the same title;
  checked against the title ``ray::ServeReplica:control-plane:…`` under /proc) as soon as
  the second step's event is visible. The step's routes and its event commit together,
  so whether the reconciler had applied them yet or not, the store is what the new
  replica serves.
- **analysis**: killed, the same way, as soon as the first failing analysis of a streak
  that needs three is visible (analyses run once a second, so the kill lands before the
  next); the new replica must continue the stored streak, not start it again. And killed
  between the analysis that completes a streak and the rollback it decides: too short a
  window to hit from outside, so ``RolloutController._end`` is wrapped inside the
  replica's process (below) to SIGKILL it there; the new replica must roll back on the
  stored streak without another failing analysis.
- **rollback between its state commit and the candidate's rejection**: that window is
  only the reconciler's submit, too short to hit from outside. The test wraps
  ``FollowUps._reject`` inside the replica's own process (Ray's ``__ray_call__`` on the
  replica actor), so the process SIGKILLs itself when the rejection is about to start.
- **promotion drain**: likewise, ``Registry.transition_stage`` is wrapped so the process
  SIGKILLs itself when it is about to archive the replaced stable version, i.e. after
  the drained version's removal from the route table committed and before its archive
  (installed in the replica that resumed after the step-change kill, with the last
  step's hold and the drain still ahead).

Each wrapper fires only for the rollout (or model) it targets, so a later test's rollout
cannot trip it.

The wrappers live only in the killed process (the replacement runs unpatched code), so
the product carries no fault hook and pays nothing for one.

After each rollout the route table served equals the store's, and every follow-up
(rejection, alias move, stage change, alert, drain and removal) is counted in the store
exactly once: registry stage events, the alias row (the registry keeps no alias history,
so its value and who set it), alert history and rollout events. Each scenario reports
requests sent, answered, failed (with causes) and the time from each kill to a new
control plane answering; no inference request may fail.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from sqlalchemy import func, select

from control_plane.client import Client
from control_plane.store import Database
from control_plane.store.models import (
    AlertEventRow,
    AliasRow,
    ModelRow,
    ModelVersionRow,
    RolloutEventRow,
    RolloutRow,
    StageEventRow,
)
from tests.load import BackgroundLoad
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.processes import title
from tests.waiting import wait_for

SMALL = {"num_cpus": 0.05}
APP = "control-plane"
# Analyses once a second over three seconds of traffic, so a rollout takes seconds.
PASSING = {"interval_s": 1, "window_s": 3, "min_samples": 15, "failures_to_rollback": 2,
           "max_p95_ms": 5000, "max_p95_ratio": None}
# No answer takes under a microsecond: every analysis with enough samples fails on p95,
# without a single failed request.
FAILING = {**PASSING, "max_p95_ms": 0.001}


# ---------------------------------------------------------------- the control plane's process


def _in_replica_getpid() -> Callable[[Any], int]:
    def getpid(_replica: Any) -> int:
        import os

        return os.getpid()

    return getpid  # nested, so cloudpickle ships it by value


def _replica() -> tuple[Any, int] | None:
    """This session's control plane replica actor and its process id, if one answers.

    Found through Ray, not by process title alone: other Ray sessions on the same machine
    run replicas with the same title.
    """
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if not actor["name"].startswith(f"SERVE_REPLICA::{APP}#"):
            continue
        try:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            pid = ray.get(handle.__ray_call__.remote(_in_replica_getpid()), timeout=10)
        except Exception:  # gone, or not started yet
            continue
        # The process the test kills is the control plane's Serve replica by its title too.
        assert (title(pid) or "").startswith(f"ray::ServeReplica:{APP}:"), pid
        return handle, pid
    return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped


def the_control_plane(platform: Platform, *, not_pid: int | None = None) -> tuple[Any, int]:
    """The answering control plane replica (another than ``not_pid``): actor and pid."""
    def check() -> tuple[Any, int] | None:
        found = _replica()
        return found if found and found[1] != not_pid and platform.healthy() else None
    return wait_for(check, 180, "a control plane replica answering")


def wait_replaced(platform: Platform, killed: int) -> float:
    """Until a new control plane replica answers; returns seconds it took."""
    started = time.monotonic()
    wait_for(lambda: not _alive(killed), 30, f"process {killed} to die")
    the_control_plane(platform, not_pid=killed)
    return time.monotonic() - started


def _kills() -> tuple[Callable[..., int], Callable[..., int], Callable[..., int]]:
    """Wrappers run inside the control plane's process; built here so cloudpickle ships
    them by value (the replica cannot import this test module)."""

    def kill_before_rejecting(_replica: Any, after_rollout: int) -> int:
        # Only the next rollout's rejection: a later test's rollout must not kill it.
        import os
        import signal

        from control_plane.rollouts.followups import FollowUps

        original = FollowUps._reject

        def _reject(self: Any, rollout_id: int) -> None:
            with self._db.session(readonly=True) as session:
                from control_plane.store.models import RolloutRow

                row = session.get(RolloutRow, rollout_id)
                owed = row is not None and "reject" in (row.followups or {})
            if rollout_id == after_rollout + 1 and owed:
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, rollout_id)

        FollowUps._reject = _reject
        return os.getpid()

    def kill_before_archiving(_replica: Any, model: str) -> int:
        import os
        import signal

        from control_plane.registry import Registry
        from control_plane.schemas import Stage

        original = Registry.transition_stage

        def transition_stage(self: Any, name: str, version: int, spec: Any, actor: Any) -> Any:
            if name == model and spec.stage == Stage.ARCHIVED:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, name, version, spec, actor)

        Registry.transition_stage = transition_stage
        return os.getpid()

    def kill_before_rolling_back(_replica: Any, after_rollout: int) -> int:
        import os
        import signal

        from control_plane.rollouts.controller import RolloutController

        original = RolloutController._end

        def _end(self: Any, rollout: Any, state: Any, actor: str, reason: str,
                 data: dict[str, Any], *, reject: bool) -> None:
            if rollout.id == after_rollout + 1 and reason.startswith("automatic rollback"):
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, rollout, state, actor, reason, data, reject=reject)

        RolloutController._end = _end
        return os.getpid()

    return kill_before_rejecting, kill_before_archiving, kill_before_rolling_back


def arm(platform: Platform, wrapper: Callable[..., int], *args: Any) -> int:
    """Install ``wrapper`` in the running control plane's process; returns its PID."""
    actor, pid = the_control_plane(platform)
    armed = ray.get(actor.__ray_call__.remote(wrapper, *args), timeout=60)
    assert armed == pid, (armed, pid)
    return pid


# ---------------------------------------------------------------- counting in the store


@dataclass
class Ledger:
    """Reads what a rollout left in the store (the test's own connection to the file)."""

    db: Database
    model: str

    def rollout(self, rollout_id: int) -> RolloutRow:
        with self.db.session(readonly=True) as session:
            row = session.get(RolloutRow, rollout_id)
            assert row is not None
            return row

    def events(self, rollout_id: int) -> list[RolloutEventRow]:
        with self.db.session(readonly=True) as session:
            return list(session.scalars(select(RolloutEventRow).where(
                RolloutEventRow.rollout_id == rollout_id).order_by(RolloutEventRow.id)))

    def kinds(self, rollout_id: int) -> Counter[str]:
        """Event kinds, with transitions named by their target state (``transition:x``)."""
        return Counter(f"{e.kind}:{e.to_state}" if e.kind == "transition" else e.kind
                       for e in self.events(rollout_id))

    def stages(self, version: int) -> list[tuple[str, str]]:
        with self.db.session(readonly=True) as session:
            return [(e.from_stage, e.to_stage) for e in session.scalars(
                select(StageEventRow).join(ModelVersionRow).join(ModelRow).where(
                    ModelRow.name == self.model, ModelVersionRow.version == version)
                .order_by(StageEventRow.id))]

    def alias(self, alias: str) -> tuple[int, str] | None:
        with self.db.session(readonly=True) as session:
            row = session.scalar(select(AliasRow).join(ModelRow).where(
                ModelRow.name == self.model, AliasRow.alias == alias))
            return None if row is None else (row.version, row.updated_by)

    def alerts(self, endpoint: str, name: str = "RolloutRolledBack") -> list[AlertEventRow]:
        with self.db.session(readonly=True) as session:
            return list(session.scalars(select(AlertEventRow).where(
                AlertEventRow.endpoint == endpoint, AlertEventRow.name == name)))

    def last_rollout_id(self) -> int:
        with self.db.session(readonly=True) as session:
            return session.scalar(select(func.max(RolloutRow.id))) or 0


def stored(client: Client, endpoint: str) -> dict[int, float]:
    return {r.version: r.weight for r in client.get_endpoint(endpoint).routes if not r.shadow}


def settled(platform: Platform, client: Client, endpoint: str, weights: dict[int, float]) -> None:
    """Until the store holds ``weights`` and the endpoint serves exactly that table."""
    def check() -> bool:
        try:
            return stored(client, endpoint) == weights == platform.served_weights(endpoint)
        except (httpx.HTTPError, ValueError, KeyError):
            return False
    wait_for(check, 90, f"{endpoint} to serve {weights} as stored")


def ends(client: Client, rollout_id: int, timeout: float = 120.0) -> Any:
    def check() -> Any:
        try:
            return (r := client.get_rollout(rollout_id)).state.terminal and r
        except Exception:  # the control plane may be between replicas
            return None
    return wait_for(check, timeout, f"rollout #{rollout_id} to end")


def report(name: str, load: BackgroundLoad, restarts: list[float]) -> None:
    failed = load.failures()
    causes = Counter((a.error or "")[:80] for a in failed)
    print(f"\n{name}: sent {len(load.answers)}, answered {len(load.answers) - len(failed)}, "
          f"failed {len(failed)} {dict(causes)}, new control plane answering "
          f"{', '.join(f'{s:.1f}' for s in restarts)} s after each kill")


@pytest.fixture
def rollout_endpoint(platform: Platform,
                     request: pytest.FixtureRequest) -> Iterator[tuple[str, Client, Ledger]]:
    """A model serving v1 on a fresh endpoint, a client, and a ledger on the store."""
    name = f"cpkill-{request.node.name.removeprefix('test_')[:30].replace('_', '-')}"
    client = platform.client()
    client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
    client.deploy(name, f"{name}:1", scaling=SMALL)
    platform.wait_endpoint(name, {1})
    db = Database(platform.settings.db_url, migrate=False)
    try:
        yield name, client, Ledger(db, name)
    finally:
        the_control_plane(platform)  # never leave the session without a control plane
        for active in client.list_rollouts(endpoint=name, active=True):
            client.rollout_action(active.id, "abort", "test finished")
        client.undeploy(name)
        client.close()
        db.dispose()


# ---------------------------------------------------------------- the scenarios


def test_killed_at_a_step_change_and_in_the_promotion_drain(
        platform: Platform, rollout_endpoint: tuple[str, Client, Ledger]) -> None:
    name, client, ledger = rollout_endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    restarts: list[float] = []
    with BackgroundLoad(platform.url, name) as load:
        pid = the_control_plane(platform)[1]
        rollout = client.start_rollout({"endpoint": name, "model_ref": f"{name}:2",
                                        # The drain leaves the restarted replica time
                                        # to be armed on a busy host (below).
                                        "steps": [30, 60, 100], "step_duration_s": 4,
                                        "drain_s": 12, "analysis": PASSING})
        wait_for(lambda: ledger.kinds(rollout.id)["step"] >= 2, 120, "the second step",
                 interval=0.02)
        os.kill(pid, signal.SIGKILL)
        at_kill = ledger.rollout(rollout.id)
        restarts.append(wait_replaced(platform, pid))
        assert at_kill.step_index == 1 and at_kill.state == "progressing", \
            (at_kill.step_index, at_kill.state)

        # The new replica is armed at once: the last step's hold and the drain are still ahead.
        pid = arm(platform, _kills()[1], name)
        wait_for(lambda: not _alive(pid), 120, "the kill between v1's removal and its archive")
        at_kill = ledger.rollout(rollout.id)
        assert at_kill.state == "succeeded" and at_kill.retire_at is None, at_kill.state
        assert ledger.kinds(rollout.id)["retired"] == 1 and ledger.stages(1) == []
        restarts.append(wait_replaced(platform, pid))
        settled(platform, client, name, {2: 100.0})
        wait_for(lambda: ledger.stages(1), 30, "v1 archived")
        time.sleep(2)  # a second pass would repeat a follow-up here
    report("control plane killed at a step change and in the promotion drain", load, restarts)

    kinds = ledger.kinds(rollout.id)
    steps = [e.data["weights"]["2"] for e in ledger.events(rollout.id) if e.kind == "step"]
    assert steps == [30, 60, 100]  # resumed at its step: none repeated or skipped
    assert kinds["transition:succeeded"] == 1 and kinds["retired"] == 1, kinds
    assert ledger.stages(2) == [("none", "staging"), ("staging", "production")]
    assert ledger.stages(1) == [("none", "archived")]
    assert ledger.alias("champion") == (2, "rollout-controller")
    assert ledger.alerts(name) == []
    assert stored(client, name) == platform.served_weights(name) == {2: 100.0}
    assert load.failures() == [], load.failures()[:3]


def test_killed_in_analysis_and_between_a_rollback_and_its_rejection(
        platform: Platform, rollout_endpoint: tuple[str, Client, Ledger]) -> None:
    name, client, ledger = rollout_endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    client.register_version(name, linear_classifier(seed=3), linear_classifier_manifest())
    client.register_version(name, linear_classifier(seed=4), linear_classifier_manifest())
    restarts: list[float] = []
    with BackgroundLoad(platform.url, name) as load:
        # Rollback: killed after the rolled_back state (and what it owes) committed.
        pid = arm(platform, _kills()[0], ledger.last_rollout_id())
        first = client.start_rollout({"endpoint": name, "model_ref": f"{name}:2",
                                      "steps": [50, 100], "step_duration_s": 600,
                                      "drain_s": 2, "analysis": {**FAILING,
                                                                 "failures_to_rollback": 1}})
        wait_for(lambda: not _alive(pid), 120, "the kill before the rejection")
        at_kill = ledger.rollout(first.id)
        assert at_kill.state == "rolled_back" and "reject" in (at_kill.followups or {}), \
            (at_kill.state, at_kill.followups)
        restarts.append(wait_replaced(platform, pid))
        settled(platform, client, name, {1: 100.0})

        # Analysis: killed after the first failing analysis of a streak of three.
        pid = the_control_plane(platform)[1]
        second = client.start_rollout({"endpoint": name, "model_ref": f"{name}:3",
                                       "steps": [50, 100], "step_duration_s": 600,
                                       "drain_s": 2, "analysis": {**FAILING,
                                                                  "failures_to_rollback": 3}})
        wait_for(lambda: ledger.kinds(second.id)["analysis_failed"] >= 1, 120,
                 "the first failing analysis", interval=0.02)
        os.kill(pid, signal.SIGKILL)
        at_kill = ledger.rollout(second.id)
        restarts.append(wait_replaced(platform, pid))
        # Mid-streak (a loaded machine may let a second failure in before the kill lands).
        assert at_kill.state == "progressing" and at_kill.failures in (1, 2), \
            (at_kill.state, at_kill.failures)
        ends(client, second.id)
        settled(platform, client, name, {1: 100.0})

        # Analysis: killed after the streak reached its limit, before the rollback committed.
        pid = arm(platform, _kills()[2], ledger.last_rollout_id())
        third = client.start_rollout({"endpoint": name, "model_ref": f"{name}:4",
                                      "steps": [50, 100], "step_duration_s": 600,
                                      "drain_s": 2, "analysis": FAILING})
        wait_for(lambda: not _alive(pid), 120, "the kill before the rollback")
        at_kill = ledger.rollout(third.id)
        assert at_kill.state == "progressing" and at_kill.failures == 2, \
            (at_kill.state, at_kill.failures)
        restarts.append(wait_replaced(platform, pid))
        ends(client, third.id)
        settled(platform, client, name, {1: 100.0})
        time.sleep(2)  # a second pass would repeat a follow-up here
    report("control plane killed in analysis and between a rollback and its rejection",
           load, restarts)

    for rollout, version, streak in ((first, 2, 1), (second, 3, 3), (third, 4, 2)):
        row = ledger.rollout(rollout.id)
        kinds = ledger.kinds(rollout.id)
        assert row.state == "rolled_back" and row.followups is None, (row.state, row.followups)
        assert kinds["transition:rolled_back"] == 1 and kinds["retired"] == 1, kinds
        # The stored streak continued across the kill: exactly as many failures as it needs.
        assert kinds["analysis_failed"] == streak, kinds
        followups = [e.reason for e in ledger.events(rollout.id) if e.kind == "followup"]
        assert len(followups) == 2 and sum("rejected" in f for f in followups) == 1, followups
        assert sum("alert raised" in f for f in followups) == 1, followups
        assert client.get_version(name, version).status == "rejected"
        assert ledger.stages(version) == []
        alerts = ledger.alerts(name)
        assert [a.labels["version"] for a in alerts].count(str(version)) == 1, \
            [(a.labels, a.summary) for a in alerts]
    assert ledger.alias("champion") is None
    assert stored(client, name) == platform.served_weights(name) == {1: 100.0}
    assert load.failures() == [], load.failures()[:3]
