"""``modelplane experiments …``: list experiments, their runs, and compare runs."""

from __future__ import annotations

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, print_table

app = typer.Typer(help="Experiment tracking: experiments, runs, comparisons.", no_args_is_help=True)


@app.command("list")
def list_experiments(
    limit: int = typer.Option(50, min=1, max=500), offset: int = typer.Option(0, min=0),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """List experiments."""
    page = client(url).list_experiments(limit=limit, offset=offset)
    emit(as_json, page, lambda: print_table(
        "experiments", ["name", "runs", "created_by", "created_at", "description"],
        [[e.name, e.run_count, e.created_by, e.created_at, e.description] for e in page.items],
        footer=f"{len(page.items)} of {page.total}",
    ))


@app.command()
def runs(
    experiment: str = typer.Argument(..., help="Experiment name."),
    limit: int = typer.Option(50, min=1, max=500), offset: int = typer.Option(0, min=0),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """List an experiment's runs, newest first, with their latest metrics."""
    page = client(url).list_runs(experiment, limit=limit, offset=offset)
    emit(as_json, page, lambda: print_table(
        f"runs of {experiment}", ["id", "name", "status", "started", "metrics", "params"],
        [[r.id[:12], r.name, r.status, r.start_time, r.latest_metrics, r.params]
         for r in page.items],
        footer=f"{len(page.items)} of {page.total}",
    ))


@app.command()
def compare(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Compare runs side by side: params, last and best metrics."""
    result = client(url).compare_runs(run_ids)
    short = [r[:12] for r in result.runs]

    def human() -> None:
        rows = [[f"param {k}", *(v.get(r) for r in result.runs)] for k, v in result.params.items()]
        rows += [[f"last {k}", *(v.get(r) for r in result.runs)]
                 for k, v in result.last_metrics.items()]
        rows += [[f"best {k}", *(v.get(r) for r in result.runs)]
                 for k, v in result.best_metrics.items()]
        print_table("run comparison", ["", *short], rows)

    emit(as_json, result, human)
