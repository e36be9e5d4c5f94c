"""``modelplane models …``: list, show, register, alias, stage, approve, reject, policy, lineage."""

from __future__ import annotations

from pathlib import Path

import typer

from control_plane.cli.output import (
    JsonOption,
    UrlOption,
    client,
    emit,
    print_fields,
    print_table,
    read_document,
)

app = typer.Typer(help="Model registry: versions, aliases, stages, approvals, lineage.",
                  no_args_is_help=True)


def _split(ref: str) -> tuple[str, int]:
    """NAME:VERSION → (name, version), with a CLI error for anything else."""
    name, sep, version = ref.partition(":")
    if not sep or not version.isdigit():
        raise typer.BadParameter(f"{ref!r} is not NAME:VERSION (for example fraud:3)")
    return name, int(version)


@app.command("list")
def list_models(
    limit: int = typer.Option(50, min=1, max=500), offset: int = typer.Option(0, min=0),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """List registered models."""
    page = client(url).list_models(limit=limit, offset=offset)
    emit(as_json, page, lambda: print_table(
        "models", ["name", "latest", "aliases", "owner", "description"],
        [[m.name, m.latest_version, m.aliases, m.owner, m.description] for m in page.items],
        footer=f"{len(page.items)} of {page.total}",
    ))


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME (model and its versions), NAME:VERSION or NAME@ALIAS"),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Show a model and its versions, or one version."""
    api = client(url)
    if ":" in ref or "@" in ref:
        version = api.resolve(ref)
        emit(as_json, version, lambda: print_fields(f"{version.model}:{version.version}", {
            "stage": version.stage, "status": version.status, "reason": version.status_reason,
            "aliases": version.aliases, "digest": version.artifact_digest,
            "size": version.artifact_size, "task": version.manifest.task,
            "inputs": [f"{s.name} {s.dtype}{s.shape}" for s in version.manifest.signature.inputs],
            "outputs": [f"{s.name} {s.dtype}{s.shape}" for s in version.manifest.signature.outputs],
            "metrics": version.manifest.metrics, "created_by": version.created_by,
            "registrant": version.created_by_subject, "created_at": version.created_at,
        }))
        return
    model = api.get_model(ref)
    versions = api.list_versions(ref, limit=500)
    if as_json:
        emit(True, {"model": model, "versions": versions.items}, lambda: None)
        return
    print_fields(model.name, {"owner": model.owner, "description": model.description,
                              "tags": model.tags, "policy": model.policy.model_dump(),
                              "aliases": model.aliases})
    print_table("versions", ["version", "stage", "status", "aliases", "created_by", "created_at"],
                [[v.version, v.stage, v.status, v.aliases, v.created_by, v.created_at]
                 for v in versions.items])


@app.command()
def register(
    name: str = typer.Argument(..., help="Model name (created if new)."),
    model_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The .onnx file."),
    manifest: Path = typer.Option(..., "--manifest", "-m", exists=True, dir_okay=False,
                                  help="Manifest JSON or YAML (signature, task, lineage …)."),
    description: str = typer.Option("", help="Free text for this version."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Upload an ONNX file and register it as the model's next version."""
    data = read_document(manifest, "--manifest")
    version = client(url).register_version(name, model_file, data, description=description)
    emit(as_json, version, lambda: typer.echo(
        f"registered {version.model}:{version.version} (sha256 {version.artifact_digest[:12]}…)"))


@app.command()
def alias(
    name: str = typer.Argument(..., help="Model name."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="Alias, e.g. champion."),
    version: int | None = typer.Argument(None, help="Version to point at; omit with --delete."),
    delete: bool = typer.Option(False, "--delete", help="Remove the alias."),
    url: str | None = UrlOption,
) -> None:
    """Set, move or delete an alias (NAME@ALIAS then resolves to the version)."""
    api = client(url)
    if delete:
        api.delete_alias(name, alias_name)
        typer.echo(f"deleted {name}@{alias_name}")
        return
    if version is None:
        raise typer.BadParameter("give the VERSION to point the alias at, or --delete")
    api.set_alias(name, alias_name, version)
    typer.echo(f"{name}@{alias_name} → {name}:{version}")


@app.command()
def stage(
    ref: str = typer.Argument(..., help="NAME:VERSION"),
    to: str = typer.Argument(..., help="none, staging, production or archived"),
    reason: str = typer.Option("", help="Why, for the audit trail."),
    url: str | None = UrlOption,
) -> None:
    """Move a version to another stage (none → staging → production → archived)."""
    from control_plane.schemas import Stage

    if to not in {s.value for s in Stage}:
        raise typer.BadParameter(f"stage {to!r} is not one of none, staging, production, archived")
    name, version = _split(ref)
    result = client(url).transition_stage(name, version, to, reason=reason)
    typer.echo(f"{name}:{version} is now {result.stage.value}")


@app.command()
def approve(
    ref: str = typer.Argument(..., help="NAME:VERSION"),
    reject: bool = typer.Option(False, "--reject", help="Record a rejection instead."),
    comment: str = typer.Option("", help="Why."),
    url: str | None = UrlOption,
) -> None:
    """Approve (or reject) a version; nobody with the registrant's subject can approve."""
    name, version = _split(ref)
    result = client(url).approve(
        name, version, decision="rejected" if reject else "approved", comment=comment
    )
    typer.echo(f"{result.decision} {name}:{version} by {result.approver} "
               f"(subject {result.approver_subject})")


@app.command()
def policy(
    name: str = typer.Argument(..., help="Model name."),
    require_approval: bool | None = typer.Option(
        None, "--require-approval/--no-require-approval",
        help="Versions need an approval by another subject before production and before "
             "taking more than the unapproved limit of traffic."),
    max_unapproved_weight: float | None = typer.Option(
        None, min=0, max=99.999, help="Traffic share (percent) an unapproved version may "
        "take (default: a rollout's last step below 100%; 50 for deploy/traffic)."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Show a model's policy, or change the options given (the others stay as they are)."""
    from control_plane.schemas import ModelPolicy, ModelUpdate

    api = client(url)
    current = api.get_model(name).policy
    changes = {k: v for k, v in {"require_approval_for_production": require_approval,
                                 "max_unapproved_weight": max_unapproved_weight}.items()
               if v is not None}
    if changes:
        wanted = ModelPolicy.model_validate({**current.model_dump(), **changes})
        current = api.update_model(name, ModelUpdate(policy=wanted)).policy
    emit(as_json, current, lambda: print_fields(f"policy of {name}", current.model_dump()))


@app.command()
def lineage(
    ref: str = typer.Argument(..., help="NAME:VERSION"),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Where a version came from and where it is deployed."""
    name, version = _split(ref)
    result = client(url).lineage(name, version)
    emit(as_json, result, lambda: print_fields(f"lineage of {name}:{version}", {
        "parents": result.parents,
        "dataset": result.lineage.dataset_uri,
        "dataset_digest": result.lineage.dataset_digest,
        "run": result.lineage.run_id,
        "run_status": result.run.status if result.run else None,
        "code_commit": result.lineage.code_commit,
        "deployments": [f"{d.endpoint} ({'shadow' if d.shadow else f'{d.weight:g}%'})"
                        for d in result.deployments],
        "approvals": [f"{a.decision} by {a.approver}" for a in result.approvals],
    }))
