"""Lineage of a model version: its dataset, run, parent chain, deployments and approvals."""

from __future__ import annotations

from sqlalchemy import select

from control_plane.errors import NotFoundError
from control_plane.registry import Registry, _approval_out, _approvals, _model, _version
from control_plane.schemas import Deployment, LineageOut, ModelManifest, RunOut
from control_plane.store.models import EndpointRouteRow, EndpointRow, ModelVersionRow
from control_plane.tracking import Tracker


def version_lineage(registry: Registry, tracker: Tracker, name: str, version: int) -> LineageOut:
    """Everything known about where ``name:version`` came from and where it runs."""
    with registry.db.session(readonly=True) as session:
        model = _model(session, name)
        row = _version(session, model, version)
        manifest = ModelManifest.model_validate(row.manifest)
        # One read for the whole chain: a registrant may make it as long as it has versions.
        parent_of = dict(session.execute(
            select(ModelVersionRow.version, ModelVersionRow.parent_version).where(
                ModelVersionRow.model_id == model.id,
                ModelVersionRow.version < row.version)).all())
        parents: list[int] = []
        seen = {row.version}
        parent = row.parent_version
        # Parents always have lower numbers, but guard against a cycle in edited data.
        while parent is not None and parent not in seen:
            parents.append(parent)
            seen.add(parent)
            parent = parent_of.get(parent)
        deployments = [
            Deployment(endpoint=endpoint, weight=weight, shadow=shadow)
            for endpoint, weight, shadow in session.execute(
                select(EndpointRow.name, EndpointRouteRow.weight, EndpointRouteRow.shadow)
                .join(EndpointRow, EndpointRow.id == EndpointRouteRow.endpoint_id)
                .where(EndpointRouteRow.version_id == row.id)
                .order_by(EndpointRow.name)
            ).all()
        ]
        approvals = [_approval_out(model, row, a) for a in _approvals(session, row)]
    run: RunOut | None = None
    if manifest.lineage.run_id:
        try:
            run = tracker.get_run(manifest.lineage.run_id)
        except NotFoundError:  # a deleted run leaves the lineage partial, not broken
            run = None
    return LineageOut(
        model=name,
        version=version,
        lineage=manifest.lineage,
        run=run,
        parents=parents,
        deployments=deployments,
        approvals=approvals,
    )
