"""``modelplane pipeline …``: data to a promoted model in one run, gated at every stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, fmt, print_table

app = typer.Typer(help="ML CI/CD pipelines: validate data, train, evaluate, benchmark, approve "
                       "and deploy, as one persisted run.", no_args_is_help=True)

NameArgument = typer.Argument(..., help="The pipeline's name.")
RunOption = typer.Option(None, "--run", "-n", min=1, help="Run number (default: the latest).")


@app.command()
def run(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="The pipeline spec (YAML)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run, printing each stage as it "
                                                   "ends; exit 1 unless it succeeds."),
    reason: str = typer.Option("", "--reason", "-r", help="Why; recorded with the run."),
    refresh: float = typer.Option(2.0, min=0.2, help="Seconds between looks with --wait."),
    url: str | None = UrlOption,
) -> None:
    """Create or update the pipeline from CONFIG and start a run of it."""
    from control_plane.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(config)
    api = client(url)
    api.apply_pipeline(spec)
    started = api.start_pipeline_run(spec.name, reason)
    typer.echo(f"pipeline {spec.name}: run #{started.number} started")
    if not wait:
        typer.echo(f"follow it with: modelplane pipeline status {spec.name} --watch")
        return
    final = _follow(api, spec.name, started.number, refresh)
    if final.state.value != "succeeded":
        raise typer.Exit(1)


@app.command()
def status(
    name: str = NameArgument,
    number: int | None = RunOption,
    watch: bool = typer.Option(False, "--watch", help="Follow the run until it ends (a control plane away for up to a minute is waited out)."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """A run's stages: state, times, outputs and the reason a stage stopped it. With
    --watch, exits 1 unless the run succeeded (as `pipeline run --wait` does)."""
    api = client(url)
    current = api.pipeline_run(name, number)
    if watch and not current.state.terminal:
        # With --json the progress goes to stderr: stdout is the one JSON document.
        current = _follow(api, name, current.number, 2.0, err=as_json)
        if as_json:
            emit(as_json, current, lambda: None)
    else:
        emit(as_json, current, lambda: _print_run(current))
    if watch and current.state.value != "succeeded":
        raise typer.Exit(1)


@app.command("list")
def list_pipelines(as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """Every pipeline, its endpoint, triggers and latest run."""
    pipelines = client(url).list_pipelines()
    emit(as_json, pipelines, lambda: print_table(
        "pipelines", ["name", "model", "endpoint", "triggers", "last run"],
        [[p.name, p.spec["training"]["job"].get("registration", {}).get("model_name")
          or p.spec["training"]["job"]["experiment"]["name"], p.spec["deploy"]["endpoint"],
          _triggers(p.spec.get("triggers") or {}), p.last_run] for p in pipelines]))


@app.command()
def history(name: str = NameArgument, limit: int = typer.Option(20, min=1, max=500),
            as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """The pipeline's runs, newest first, with what started each and how it ended."""
    runs = client(url).pipeline_runs(name, limit=limit)
    emit(as_json, runs, lambda: print_table(
        f"runs of {name}", ["#", "state", "trigger", "started", "finished", "reason"],
        [[r.number, r.state, r.trigger, fmt(r.created_at), fmt(r.finished_at), r.reason]
         for r in runs]))


@app.command()
def logs(name: str = NameArgument, number: int | None = RunOption, url: str | None = UrlOption) -> None:
    """Each stage's state and reason, then the training job's output (its last MiB)."""
    api = client(url)
    chosen = number if number is not None else api.pipeline_run(name).number
    typer.echo(api.pipeline_logs(name, chosen), nl=False)


@app.command()
def cancel(name: str = NameArgument,
           reason: str = typer.Option("", "--reason", "-r", help="Why; recorded with the run."),
           url: str | None = UrlOption) -> None:
    """Cancel the run under way: its training job is stopped and its rollout aborted."""
    cancelled = client(url).cancel_pipeline_run(name, reason)
    typer.echo(f"pipeline {name}: run #{cancelled.number} cancelled")


@app.command()
def delete(name: str = NameArgument, url: str | None = UrlOption) -> None:
    """Delete the pipeline: its spec, and so its triggers (refused while a run is under way)."""
    client(url).delete_pipeline(name)
    typer.echo(f"pipeline {name}: deleted")


def _follow(api: Any, name: str, number: int, refresh: float, *, err: bool = False) -> Any:
    """Print each stage as it starts and ends until the run is over; returns the last look."""
    from control_plane.cli.following import follow

    shown: dict[str, str] = {}
    said: list[str] = []

    def waiting(why: str) -> None:
        if not said:  # once per outage: the run's lines stay readable
            typer.echo(f"  waiting: {why}", err=True)
        said[:] = [why]

    while True:
        current = follow(lambda: api.pipeline_run(name, number), waiting)
        said.clear()
        for stage in current.stages:
            if shown.get(stage.name) != stage.state.value and stage.state.value != "pending":
                shown[stage.name] = stage.state.value
                typer.echo(f"  {stage.name:<14} {stage.state.value:<9} {_summary(stage)}".rstrip(),
                           err=err)
        if current.state.terminal:
            typer.echo(f"pipeline {name} run #{number}: {current.state.value}"
                       + (f" ({current.reason})" if current.reason else ""), err=err)
            return current
        time.sleep(refresh)


def _print_run(current: Any) -> None:
    typer.echo(f"pipeline {current.pipeline} run #{current.number}: {current.state.value} "
               f"(trigger {current.trigger.value}, started {fmt(current.created_at)})")
    if current.reason:
        typer.echo(f"  {current.reason}")
    print_table("stages", ["stage", "state", "started", "finished", "outputs / reason"],
                [[s.name, s.state, fmt(s.started_at), fmt(s.finished_at), _summary(s)]
                 for s in current.stages])


def _summary(stage: Any) -> str:
    if stage.reason and stage.state.value in ("failed", "skipped", "cancelled"):
        return str(stage.reason)
    shown = {k: v for k, v in stage.outputs.items() if not isinstance(v, dict | list)}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or stage.reason


def _triggers(triggers: dict[str, Any]) -> str:
    parts = []
    if triggers.get("schedule"):
        parts.append(f"cron {triggers['schedule']}")
    if triggers.get("data_check_interval_s"):
        parts.append("new data")
    if triggers.get("on_drift_alert"):
        parts.append("drift alert")
    return ", ".join(parts) or "manual"
