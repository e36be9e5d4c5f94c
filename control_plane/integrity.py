"""The store's integrity check: what the database says against what the artifact store holds.

``modelplane db check`` (and ``GET /api/integrity`` for admins) runs :func:`check_integrity`:

- every model version's artifact exists, has the recorded size and (unless ``verify`` is
  off) hashes to its digest; the same for runs' logged artifacts;
- aliases point at versions that exist and are neither archived nor rejected; no
  rejected version sits in production;
- no orphans: route-table rows whose version belongs to another model or is archived,
  active rollouts whose endpoint or versions (candidate, stable, retiring) are
  gone, versions whose training run is gone (a deleted parent version is not a problem: a
  version may be deleted whatever was fine-tuned from it);
- artifacts that nothing references are listed; :func:`collect_garbage` removes those
  older than a grace period (an upload is stored before the version that names it is
  registered, so a fresh unreferenced artifact may be a registration in flight), each one
  only if nothing names it at that moment, behind a lock registrations take too
  (:mod:`control_plane.artifact_claims`).

The check only reads: it is safe on a live platform.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import select

from control_plane.artifact_claims import remove_if_unnamed
from control_plane.artifacts import ArtifactStore
from control_plane.errors import IntegrityError, NotFoundError
from control_plane.rollouts.states import ACTIVE_STATES
from control_plane.schemas import IntegrityProblem, IntegrityReport
from control_plane.store import Database
from control_plane.store.models import (
    AliasRow,
    EndpointRouteRow,
    EndpointRow,
    ModelRow,
    ModelVersionRow,
    RolloutRow,
    RunArtifactRow,
    RunRow,
)

# An unreferenced artifact younger than this may belong to a registration in flight.
DEFAULT_GC_GRACE_S = 3600.0


@dataclass
class _Findings:
    problems: list[IntegrityProblem] = field(default_factory=list)

    def add(self, kind: str, subject: str, message: str) -> None:
        self.problems.append(IntegrityProblem(kind=kind, subject=subject, message=message))


def check_integrity(db: Database, artifacts: ArtifactStore, *, verify: bool = True) -> IntegrityReport:
    """Every problem found in the store, and the artifacts nothing references."""
    found = _Findings()
    with db.session(readonly=True) as session:
        models = {row.id: row.name for row in session.scalars(select(ModelRow))}
        versions = session.scalars(select(ModelVersionRow)).all()
        by_key = {(row.model_id, row.version): row for row in versions}
        by_id = {row.id: row for row in versions}
        run_ids = set(session.scalars(select(RunRow.id)))
        run_artifacts = session.scalars(select(RunArtifactRow)).all()
        aliases = session.scalars(select(AliasRow)).all()
        endpoints = {row.id: row for row in session.scalars(select(EndpointRow))}
        routes = session.scalars(select(EndpointRouteRow)).all()
        active = session.scalars(
            select(RolloutRow).where(RolloutRow.state.in_(ACTIVE_STATES))
        ).all()

    referenced: dict[str, int] = {}
    checked = 0
    for row in versions:
        ref = f"{models.get(row.model_id, '?')}:{row.version}"
        referenced[row.artifact_digest] = row.artifact_size
        checked += _check_artifact(found, artifacts, row.artifact_digest, row.artifact_size,
                                   ref, verify)
        if row.run_id is not None and row.run_id not in run_ids:
            found.add("orphan_lineage", ref, f"{ref} names training run {row.run_id}, which "
                      "does not exist")
        if row.status == "rejected" and row.stage == "production":
            found.add("stage", ref, f"{ref} is rejected but in production")
    for row in run_artifacts:
        ref = f"run {row.run_id}: {row.path}"
        if row.digest not in referenced:
            referenced[row.digest] = row.size
            checked += _check_artifact(found, artifacts, row.digest, row.size, ref, verify)
    for alias in aliases:
        target = by_key.get((alias.model_id, alias.version))
        ref = f"{models.get(alias.model_id, '?')}@{alias.alias}"
        if target is None:
            found.add("alias", ref, f"{ref} points at version {alias.version}, which does not exist")
        elif target.status == "rejected" or target.stage == "archived":
            state = "rejected" if target.status == "rejected" else "archived"
            found.add("alias", ref, f"{ref} points at version {alias.version}, which is {state}")
    for route in routes:
        endpoint = endpoints.get(route.endpoint_id)
        version = by_id.get(route.version_id)
        name = endpoint.name if endpoint else f"#{route.endpoint_id}"
        if endpoint is None or version is None:
            found.add("orphan_route", name, f"endpoint {name} has a route to a missing "
                      f"{'endpoint' if endpoint is None else 'version'}")
        elif version.model_id != endpoint.model_id:
            found.add("orphan_route", name, f"endpoint {name} routes to "
                      f"{models.get(version.model_id, '?')}:{version.version}, a version of "
                      "another model")
        elif version.stage == "archived":  # archiving refuses a routed version
            found.add("orphan_route", name, f"endpoint {name} routes to "
                      f"{models.get(version.model_id, '?')}:{version.version}, which is archived")
    endpoint_names = {row.name for row in endpoints.values()}
    for rollout in active:
        ref = f"rollout {rollout.id}"
        if rollout.endpoint not in endpoint_names:
            found.add("orphan_rollout", ref, f"{ref} is {rollout.state} on endpoint "
                      f"{rollout.endpoint}, which does not exist")
        for role, version_number in (("candidate", rollout.candidate_version),
                                     ("stable", rollout.stable_version),
                                     ("retiring", rollout.retire_version)):
            if version_number is not None and (rollout.model_id, version_number) not in by_key:
                found.add("orphan_rollout", ref, f"{ref} is {rollout.state} with {role} "
                          f"version {version_number}, which does not exist")

    unreferenced = sorted(set(_stored_digests(artifacts)) - set(referenced))
    return IntegrityReport(ok=not found.problems, problems=found.problems,
                           artifacts_checked=checked, unreferenced_artifacts=unreferenced)


# Problems that say the store and the artifact folder disagree (a wrong folder, a lost
# file): collecting then could remove what the store names. Others (an alias on a
# rejected version, left by an ordinary rollback) are no reason to keep garbage.
ARTIFACT_PROBLEMS = frozenset({"artifact_missing", "artifact_size", "artifact_corrupt"})


def safe_to_collect(report: IntegrityReport) -> bool:
    """Whether ``report`` lets :func:`collect_garbage` run."""
    return not any(problem.kind in ARTIFACT_PROBLEMS for problem in report.problems)


def collect_garbage(db: Database, artifacts: ArtifactStore, report: IntegrityReport, *,
                    grace_s: float = DEFAULT_GC_GRACE_S) -> list[str]:
    """Remove the report's unreferenced artifacts older than ``grace_s`` that nothing names
    still (the report may be minutes old); returns their digests."""
    removed: list[str] = []
    cutoff = time.time() - grace_s
    for digest in report.unreferenced_artifacts:
        path = artifacts.path_of(digest)
        try:
            modified = _modified_at(artifacts, path)
        except FileNotFoundError:
            continue
        if modified > cutoff:
            continue
        if remove_if_unnamed(db, artifacts, digest, older_than=functools.partial(
                _older_than, artifacts, path, cutoff)):
            removed.append(digest)
    return removed


def _check_artifact(found: _Findings, artifacts: ArtifactStore, digest: str, size: int,
                    ref: str, verify: bool) -> int:
    try:
        info = artifacts.info(digest)
    except NotFoundError:
        found.add("artifact_missing", ref, f"{ref}: artifact {digest} is missing from the store")
        return 0
    if info.size != size:
        found.add("artifact_size", ref, f"{ref}: artifact {digest} is {info.size} bytes, the "
                  f"store recorded {size}")
        return 1
    if verify:
        try:
            for _ in artifacts.iter_verified(digest):
                pass
        except IntegrityError as exc:
            found.add("artifact_corrupt", ref, f"{ref}: {exc.message}")
    return 1


def _stored_digests(artifacts: ArtifactStore) -> Iterator[str]:
    prefix = f"{artifacts.root}/sha256"
    if not artifacts.fs.exists(prefix):
        return
    for path in artifacts.fs.find(prefix):
        name = str(path).rsplit("/", 1)[-1]
        if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            yield name


def _older_than(artifacts: ArtifactStore, path: str, cutoff: float) -> bool:
    return _modified_at(artifacts, path) <= cutoff


def _modified_at(artifacts: ArtifactStore, path: str) -> float:
    info = artifacts.fs.info(path)
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        return value.timestamp() if hasattr(value, "timestamp") else float(value)
    # A backend that reports no time: never treat its objects as old enough to remove.
    return time.time()
