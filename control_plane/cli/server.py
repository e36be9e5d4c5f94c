"""``modelplane api`` (the control plane under uvicorn) and ``modelplane db`` (migrations, checks)."""

from __future__ import annotations

import typer

from control_plane.cli.output import JsonOption, emit

db_app = typer.Typer(help="The control plane's database schema.", no_args_is_help=True)


def api(
    host: str | None = typer.Option(None, help="Bind address (default MODELPLANE_HTTP_HOST)."),
    port: int | None = typer.Option(None, help="Port (default MODELPLANE_HTTP_PORT)."),
) -> None:
    """Run the control plane REST API alone under uvicorn (development; `up` runs it on Serve)."""
    import uvicorn

    from control_plane.api import build_standalone_app
    from control_plane.service import ControlPlane
    from modelplane.settings import get_settings

    settings = get_settings()
    cp = ControlPlane.start(settings)
    if cp.new_admin_token:
        typer.echo(f"admin token (shown once, also in {settings.admin_token_path}):")
        typer.echo(cp.new_admin_token)
    bind_host, bind_port = host or settings.http_host, port or settings.http_port
    typer.echo(f"control plane at http://{bind_host}:{bind_port}/api (its OpenAPI document at /api/openapi.json)")
    uvicorn.run(build_standalone_app(cp), host=bind_host, port=bind_port, log_level="warning")


@db_app.command()
def upgrade() -> None:
    """Apply pending migrations to the database in MODELPLANE_DB_URL."""
    from control_plane.store import Database
    from modelplane.settings import get_settings, url_without_password

    settings = get_settings()
    Database(settings.db_url, migrate=True).dispose()
    typer.echo(f"schema up to date: {url_without_password(settings.db_url)}")


@db_app.command()
def current() -> None:
    """Show the database's schema revision and the one this code needs."""
    from sqlalchemy import create_engine

    from control_plane.store.database import schema_revisions
    from modelplane.settings import get_settings

    engine = create_engine(get_settings().db_url)
    try:
        have, need = schema_revisions(engine)
    finally:
        engine.dispose()
    typer.echo(f"database: {have or 'empty'}   code: {need}   "
               + ("up to date" if have == need else "run `modelplane db upgrade`"))


@db_app.command()
def check(
    gc: bool = typer.Option(False, "--gc", help="Also remove unreferenced artifacts older than "
                            "--gc-grace (after the check, only when every artifact the store "
                            "names is there and verifies)."),
    gc_grace: float = typer.Option(3600.0, "--gc-grace", min=0.0,
                                   help="Seconds an unreferenced artifact must be old to be removed."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Re-hash every artifact (reads every byte) or only check size."),
    as_json: bool = JsonOption,
) -> None:
    """Check the store: artifacts exist and verify, aliases and stages point at live versions,
    no orphan routes, rollouts or lineage; list unreferenced artifacts. Exits 1 on a problem."""
    from control_plane.artifacts import ArtifactStore
    from control_plane.integrity import check_integrity, collect_garbage, safe_to_collect
    from control_plane.store import Database
    from modelplane.settings import get_settings

    settings = get_settings()
    db = Database(settings.db_url, migrate=False)
    removed: list[str] = []
    try:
        artifacts = ArtifactStore(settings.artifact_uri, max_bytes=settings.max_artifact_bytes)
        report = check_integrity(db, artifacts, verify=verify)
        if gc and safe_to_collect(report):
            removed = collect_garbage(db, artifacts, report, grace_s=gc_grace)
    finally:
        db.dispose()

    def human() -> None:
        for problem in report.problems:
            typer.echo(f"PROBLEM {problem.kind:<16} {problem.message}")
        unreferenced = len(report.unreferenced_artifacts)
        typer.echo(f"{report.artifacts_checked} artifact(s) checked, {len(report.problems)} "
                   f"problem(s), {unreferenced} unreferenced artifact(s)"
                   + (f", {len(removed)} removed" if gc else ""))
        if gc and not safe_to_collect(report):
            typer.echo("--gc skipped: the store and the artifact folder disagree (artifact_* "
                       "problems above); fix those first", err=True)
        elif unreferenced and not gc:
            typer.echo("remove unreferenced artifacts with `modelplane db check --gc`")

    emit(as_json, {**report.model_dump(mode="json"), "removed": removed}, human)
    if not report.ok:
        raise typer.Exit(1)
