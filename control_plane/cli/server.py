"""``modelplane api`` (the control plane under uvicorn) and ``modelplane db`` (migrations)."""

from __future__ import annotations

import typer

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
    typer.echo(f"control plane at http://{bind_host}:{bind_port}/api (docs at /api/docs)")
    uvicorn.run(build_standalone_app(cp), host=bind_host, port=bind_port, log_level="warning")


@db_app.command()
def upgrade() -> None:
    """Apply pending migrations to the database in MODELPLANE_DB_URL."""
    from control_plane.store import Database
    from modelplane.settings import get_settings

    settings = get_settings()
    Database(settings.db_url, migrate=True).dispose()
    typer.echo(f"schema up to date: {settings.db_url}")


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
