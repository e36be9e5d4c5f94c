"""The integrity check against a real store and artifact folder: each kind of damage is found."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from control_plane.artifact_claims import remove_if_unnamed, store_upload
from control_plane.errors import NotFoundError
from control_plane.integrity import check_integrity, collect_garbage
from control_plane.registry import Registry
from control_plane.schemas import AliasSet, VersionCreate
from control_plane.store import Database
from control_plane.store.models import AliasRow, ModelVersionRow, RolloutRow
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.together import meanwhile, selects_from


def _register(registry: Registry, seed: int) -> int:
    info = registry.artifacts.put([linear_classifier(seed=seed)])
    spec = VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest())
    return registry.register_version("iris", spec, ALICE).version


def _kinds(registry: Registry, *, verify: bool = True) -> list[str]:
    return [p.kind for p in check_integrity(registry.db, registry.artifacts, verify=verify).problems]


def test_a_healthy_store_has_no_problem(registry: Registry) -> None:
    _register(registry, 1)
    _register(registry, 2)
    registry.set_alias("iris", "champion", AliasSet(version=2), ALICE)
    report = check_integrity(registry.db, registry.artifacts)
    assert report.ok and report.problems == []
    assert report.artifacts_checked == 2
    assert report.unreferenced_artifacts == []


def test_missing_and_corrupt_artifacts_are_found(registry: Registry) -> None:
    _register(registry, 1)
    _register(registry, 2)
    v1, v2 = registry.get_version("iris", 1), registry.get_version("iris", 2)
    Path(registry.artifacts.path_of(v1.artifact_digest)).unlink()
    corrupt = Path(registry.artifacts.path_of(v2.artifact_digest))
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only re-hashing can tell
    corrupt.write_bytes(bytes(data))

    report = check_integrity(registry.db, registry.artifacts)
    assert not report.ok
    by_kind = {p.kind: p for p in report.problems}
    assert set(by_kind) == {"artifact_missing", "artifact_corrupt"}
    assert by_kind["artifact_missing"].subject == "iris:1"
    assert v2.artifact_digest in by_kind["artifact_corrupt"].message
    # Without re-hashing, the same-size corruption goes unseen; the missing file does not.
    assert _kinds(registry, verify=False) == ["artifact_missing"]


def test_aliases_to_missing_or_rejected_versions_are_found(registry: Registry) -> None:
    _register(registry, 1)
    _register(registry, 2)
    registry.set_alias("iris", "champion", AliasSet(version=1), ALICE)
    registry.set_alias("iris", "challenger", AliasSet(version=2), ALICE)
    registry.reject_version("iris", 2, "rolled back", ALICE)
    with registry.db.session() as session:
        session.execute(update(AliasRow).where(AliasRow.alias == "champion").values(version=9))
    problems = check_integrity(registry.db, registry.artifacts).problems
    messages = sorted(p.message for p in problems if p.kind == "alias")
    assert messages == [
        "iris@challenger points at version 2, which is rejected",
        "iris@champion points at version 9, which does not exist",
    ]


def test_orphan_lineage_rejected_production_and_orphan_rollouts_are_found(registry: Registry) -> None:
    _register(registry, 1)
    with registry.db.session() as session:
        session.execute(update(ModelVersionRow).values(run_id="nosuchrun", stage="production",
                                                       status="rejected"))
        model_id = session.query(ModelVersionRow.model_id).scalar()
        session.add(RolloutRow(endpoint="gone", model_id=model_id, candidate_version=7,
                               strategy="canary", state="progressing", created_by="test"))
    kinds = sorted(_kinds(registry))
    assert kinds == ["orphan_lineage", "orphan_rollout", "orphan_rollout", "stage"]


def test_a_rollouts_missing_stable_and_a_route_to_an_archived_version_are_found(
        registry: Registry) -> None:
    """A partial restore or a hand edit: a rollback would write routes to a version that is
    not there, and an archived version served what the registry said it never would."""
    from control_plane.store.models import EndpointRouteRow, EndpointRow

    _register(registry, 1)
    _register(registry, 2)
    with registry.db.session() as session:
        first = session.query(ModelVersionRow).filter_by(version=1).one()
        second = session.query(ModelVersionRow).filter_by(version=2).one()
        second.parent_version = 9
        endpoint = EndpointRow(name="live", model_id=first.model_id, config={})
        session.add(endpoint)
        session.flush()
        session.add(EndpointRouteRow(endpoint_id=endpoint.id, version_id=first.id, weight=100))
        first.stage = "archived"
        session.add(RolloutRow(endpoint="live", model_id=first.model_id, candidate_version=2,
                               stable_version=5, retire_version=6, strategy="canary",
                               state="progressing", created_by="test"))
    problems = {(p.kind, p.message.split(", which")[0].split(" ")[-1])
                for p in check_integrity(registry.db, registry.artifacts).problems}
    # A missing parent (v9) is no problem: deleting a version others came from is allowed.
    assert problems == {("orphan_route", "iris:1"), ("orphan_rollout", "5"),
                        ("orphan_rollout", "6")}, problems


def test_gc_removes_only_old_unreferenced_artifacts(registry: Registry) -> None:
    _register(registry, 1)
    old = registry.artifacts.put([b"an upload nobody registered"])
    fresh = registry.artifacts.put([b"a registration in flight"])
    past = time.time() - 7200
    os.utime(registry.artifacts.path_of(old.digest), (past, past))

    report = check_integrity(registry.db, registry.artifacts)
    assert report.ok
    assert sorted(report.unreferenced_artifacts) == sorted([old.digest, fresh.digest])
    assert collect_garbage(registry.db, registry.artifacts, report, grace_s=3600) == [old.digest]
    assert not registry.artifacts.exists(old.digest)
    assert registry.artifacts.exists(fresh.digest)
    # The referenced artifact is never a candidate.
    assert registry.artifacts.exists(registry.get_version("iris", 1).artifact_digest)


def test_an_identical_upload_during_a_collection_keeps_the_artifact(registry: Registry) -> None:
    """The report lists an old unreferenced artifact; the same bytes are uploaded again (for
    a new version) before the collection reaches it: the upload made it new again."""
    old = registry.artifacts.put([b"the same model, uploaded again"])
    past = time.time() - 7200
    os.utime(registry.artifacts.path_of(old.digest), (past, past))
    report = check_integrity(registry.db, registry.artifacts)
    assert report.unreferenced_artifacts == [old.digest]
    assert registry.artifacts.put([b"the same model, uploaded again"]) == old
    assert collect_garbage(registry.db, registry.artifacts, report, grace_s=3600) == []
    assert registry.artifacts.exists(old.digest)


def test_an_identical_upload_just_after_the_collector_looked_keeps_the_artifact(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector read the file's time, then the same bytes were uploaded (answered 201,
    their registration on its way): the time was not read again under the artifact's
    lock, so the artifact was removed and the registration told to upload it first."""
    from control_plane import integrity

    payload = b"the same model, uploaded just after the look"
    old = registry.artifacts.put([payload])
    past = time.time() - 7200
    os.utime(registry.artifacts.path_of(old.digest), (past, past))
    report = check_integrity(registry.db, registry.artifacts)
    looked = integrity._modified_at
    looks: list[float] = []

    def look_then_upload(artifacts: object, path: str) -> float:
        looks.append(looked(artifacts, path))
        if len(looks) == 1:
            assert registry.artifacts.put([payload]) == old  # another client, right then
        return looks[-1]

    monkeypatch.setattr(integrity, "_modified_at", look_then_upload)
    assert collect_garbage(registry.db, registry.artifacts, report, grace_s=3600) == []
    assert registry.artifacts.exists(old.digest) and len(looks) == 2 and looks[1] > past


def test_an_identical_upload_while_the_collector_removes_the_old_copy_is_kept(
        registry: Registry) -> None:
    """Another control plane stores the same bytes (answered 201, their registration on its
    way) after the collector found the old copy old and unnamed under the artifact's lock,
    before it removed it: the upload waits for the removal and stores the bytes again."""
    payload = b"the same model, uploaded while the collector removes it"
    old = registry.artifacts.put([payload])
    past = time.time() - 7200
    os.utime(registry.artifacts.path_of(old.digest), (past, past))
    other = Database(registry.db.url, migrate=False)
    uploaded: list[object] = []

    def upload() -> None:
        writer = registry.artifacts.writer(None)
        writer.write(payload)
        uploaded.append(store_upload(other, registry.artifacts, writer))

    uploader = threading.Thread(target=upload)

    def found_old() -> bool:
        uploader.start()
        uploader.join(timeout=0.5)  # unserialized, the upload ends here
        return True

    try:
        assert remove_if_unnamed(registry.db, registry.artifacts, old.digest, older_than=found_old)
        uploader.join(timeout=30)
    finally:
        other.dispose()
    assert uploaded == [old]
    assert registry.artifacts.exists(old.digest)


def test_a_version_registered_on_an_old_artifact_after_the_report_keeps_it(
        registry: Registry) -> None:
    """The check takes minutes on a large store: a version registered meanwhile on an old,
    so far unreferenced artifact names it when the collection reaches it."""
    old = registry.artifacts.put([linear_classifier(seed=5)])
    past = time.time() - 7200
    os.utime(registry.artifacts.path_of(old.digest), (past, past))
    report = check_integrity(registry.db, registry.artifacts)
    assert report.unreferenced_artifacts == [old.digest]
    registry.register_version("iris", VersionCreate(
        artifact_digest=old.digest, manifest=linear_classifier_manifest()), ALICE)
    assert collect_garbage(registry.db, registry.artifacts, report, grace_s=3600) == []
    assert check_integrity(registry.db, registry.artifacts).ok


def test_a_registration_while_the_collection_removes_its_artifact_is_refused(
        registry: Registry) -> None:
    """Another control plane registers a version on the artifact the collection is removing:
    it waits for the removal and is told to upload again, never a version naming bytes
    that are gone."""
    old = registry.artifacts.put([linear_classifier(seed=6)])
    past = time.time() - 7200
    os.utime(registry.artifacts.path_of(old.digest), (past, past))
    report = check_integrity(registry.db, registry.artifacts)
    other = Database(registry.db.url, migrate=False)

    def register() -> object:
        return Registry(other, registry.artifacts).register_version("iris", VersionCreate(
            artifact_digest=old.digest, manifest=linear_classifier_manifest()), ALICE)

    try:
        with meanwhile(registry.db.engine, selects_from("model_versions"), register) as registered:
            removed = collect_garbage(registry.db, registry.artifacts, report, grace_s=3600)
    finally:
        other.dispose()
    assert removed == [old.digest]
    # Refused at its claim ("upload it first"), or, on a machine slow enough that the
    # removal came first, at its read of the bytes: either way it names the artifact.
    assert isinstance(registered[0], NotFoundError) and old.digest in str(registered[0])
    assert check_integrity(registry.db, registry.artifacts).ok


def test_cli_check_exits_1_with_the_problems(settings, tmp_path: Path) -> None:
    from control_plane.service import ControlPlane
    from modelplane.cli import app

    cp = ControlPlane.start(settings)
    try:
        _register(cp.registry, 1)
        digest = cp.registry.get_version("iris", 1).artifact_digest
    finally:
        cp.db.dispose()
    runner = CliRunner()
    healthy = runner.invoke(app, ["db", "check"])
    assert healthy.exit_code == 0, healthy.output
    assert "1 artifact(s) checked, 0 problem(s)" in healthy.output

    Path(cp.artifacts.path_of(digest)).unlink()
    broken = runner.invoke(app, ["db", "check", "--json"])
    assert broken.exit_code == 1
    assert '"kind": "artifact_missing"' in broken.output


def test_an_ordinary_rollback_leaves_garbage_collection_running(settings) -> None:
    """An alias left on a version a rollback rejected is reported, but the store and the
    artifact folder agree: --gc was skipped for good until someone moved the alias."""
    from control_plane.service import ControlPlane
    from modelplane.cli import app

    cp = ControlPlane.start(settings)
    try:
        _register(cp.registry, 1)
        _register(cp.registry, 2)
        cp.registry.set_alias("iris", "challenger", AliasSet(version=2), ALICE)
        cp.registry.reject_version("iris", 2, "rolled back", ALICE)
        old = cp.artifacts.put([b"an upload nobody registered"])
        past = time.time() - 7200
        os.utime(cp.artifacts.path_of(old.digest), (past, past))
    finally:
        cp.db.dispose()
    result = CliRunner().invoke(app, ["db", "check", "--gc"])
    assert result.exit_code == 1 and "PROBLEM alias" in result.output  # still reported
    assert "1 removed" in result.output and not cp.artifacts.exists(old.digest)
    Path(cp.artifacts.path_of(cp.registry.get_version("iris", 1).artifact_digest)).unlink()
    missing = CliRunner().invoke(app, ["db", "check", "--gc"])
    assert "--gc skipped" in missing.output and "0 removed" in missing.output
