"""The ``modelplane`` command: the composition root for every package's command group.

Command modules import their heavy dependencies (Ray, SQLAlchemy, ONNX Runtime) inside
the commands, so ``modelplane --help`` stays fast.
"""

from __future__ import annotations

import json
import sys

import typer

from modelplane import __version__
from modelplane.errors import ModelplaneError

app = typer.Typer(
    name="modelplane",
    help="Model serving on Ray with a control plane: registry, rollouts, monitoring, training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the modelplane version."""
    typer.echo(f"modelplane {__version__}")


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Show the settings resolved from the environment (secrets hidden)."""
    from modelplane.settings import get_settings

    values = get_settings().described()
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    width = max(map(len, values))
    for key, value in values.items():
        typer.echo(f"{key:{width}}  {value}")


@app.command()
def quickstart(
    short: bool = typer.Option(False, "--short", help="Shorter holds and fewer epochs (tests, slow machines)."),
) -> None:
    """Run the main job on the embedded default (local Ray, SQLite, local artifacts)."""
    from modelplane.quickstart import run_quickstart

    run_quickstart(short=short)


def _register_groups() -> None:
    from control_plane.cli import experiments, models, rollouts, server, serving, tokens
    from training import cli as training_cli

    for command in (serving.up, serving.down, serving.status, serving.deploy, serving.traffic,
                    serving.undeploy):
        app.command()(command)

    app.add_typer(models.app, name="models")
    app.add_typer(rollouts.app, name="rollout")
    app.add_typer(experiments.app, name="experiments")
    app.add_typer(tokens.app, name="token")
    app.add_typer(server.db_app, name="db")
    app.add_typer(training_cli.app, name="train")
    app.command("api")(server.api)
    from control_plane.cli import monitoring

    app.command("monitor")(monitoring.monitor)
    app.add_typer(monitoring.alerts_app, name="alerts")
    from control_plane.cli import pipelines

    app.add_typer(pipelines.app, name="pipeline")


_register_groups()


# SQLAlchemy's errors for a store that is away or a URL naming none; the others (a query
# the code got wrong) keep their traceback.
STORE_FAILURES = frozenset({"OperationalError", "InterfaceError", "ArgumentError",
                            "NoSuchModuleError"})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn known errors into one clear line."""
    try:
        # Outside standalone mode click returns a command's `typer.Exit` code instead of raising.
        code = app(args=argv, standalone_mode=False)
    except ModelplaneError as error:
        typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        typer.secho("aborted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except typer.TyperException as error:  # usage errors, bad parameters
        show = getattr(error, "show", None)
        if show is None:
            raise
        show()
        sys.exit(getattr(error, "exit_code", 2))
    except Exception as error:
        if type(error).__name__ not in STORE_FAILURES or \
                not type(error).__module__.startswith("sqlalchemy"):
            raise
        # The store named by MODELPLANE_DB_URL is away, or the URL names none there is.
        typer.secho(f"error: {_store_failure(error)}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


def _store_failure(error: Exception) -> str:
    from modelplane.settings import get_settings, url_without_password

    cause = getattr(error, "orig", None) or error
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    try:
        where = url_without_password(get_settings().db_url)
    except Exception:  # the settings themselves are what failed
        where = "MODELPLANE_DB_URL"
    return (f"the store at {where} could not be used ({first}); check MODELPLANE_DB_URL and "
            "that the database is up and accepts this user")


if __name__ == "__main__":
    main()
