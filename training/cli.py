"""``modelplane train …``: submit training jobs to Ray, follow and stop them, or run one locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from control_plane.cli.output import JsonOption, emit, print_fields, print_table

app = typer.Typer(
    help="Training jobs on Ray Train: submit to a cluster, follow, stop, or run locally.",
    no_args_is_help=True,
)
AddressOption = typer.Option(
    None, "--address",
    help="Ray dashboard URL (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, or the head "
    "`modelplane up` started; never a guess at Ray's default port, where another user may "
    "listen).",
)
SetOption = typer.Option(
    None, "--set", metavar="FIELD=VALUE",
    help="Override a field of the spec, e.g. --set hyperparameters.epochs=2 (repeatable).",
)
JobIdArgument = typer.Argument(..., help="Submission id, as `train submit` printed it.")


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="The job spec (YAML)."),
    address: str | None = AddressOption,
    wait: bool = typer.Option(False, "--wait", help="Follow the job's output until it ends."),
    working_dir: Path | None = typer.Option(
        None, "--working-dir", help="Ship this folder as the job's code (the spec must be in it)."
    ),
    job_id: str | None = typer.Option(None, "--job-id", help="Submission id (default: generated)."),
    resource_check: bool = typer.Option(
        True, "--resource-check/--no-resource-check",
        help="Check the cluster has the CPUs and GPUs asked for (off for autoscaling clusters).",
    ),
    token_hours: int = typer.Option(
        24, "--token-hours", min=1, max=24 * 365,
        help="Lifetime of the token minted for the job (revoked earlier when the job ends); "
        "give long jobs enough to register at the end.",
    ),
    overrides: list[str] | None = SetOption,
) -> None:
    """Check a job spec and submit it with Ray's job submission client."""
    from training.submission import submit_spec

    submit_spec(spec, address=address, working_dir=working_dir, wait=wait,
                check_resources=resource_check, submission_id=job_id, echo=typer.echo,
                token_minutes=token_hours * 60, overrides=overrides or ())


@app.command()
def status(job_id: str = JobIdArgument, address: str | None = AddressOption,
           as_json: bool = JsonOption) -> None:
    """A job's status, message, times and entrypoint; a waiting job, what it needs and is free."""
    from training.submission import JobClient

    client = JobClient(address)
    info = client.info(job_id)
    waiting = _waiting(client, job_id, str(info.status.value))
    payload = {"job_id": job_id, "status": str(info.status.value),
               "message": waiting or info.message, "waiting": waiting,
               "entrypoint": info.entrypoint, "start_time": _seconds(info.start_time),
               "end_time": _seconds(info.end_time), "metadata": info.metadata or {}}
    emit(as_json, payload, lambda: print_fields(
        f"job {job_id}", {k: v for k, v in payload.items() if k != "job_id"}))


@app.command()
def logs(job_id: str = JobIdArgument, address: str | None = AddressOption,
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends.")) -> None:
    """Print a job's output (the driver's, with every epoch's metrics)."""
    from training.submission import JobClient

    client = JobClient(address)
    if follow:
        client.follow(job_id, typer.echo)
    else:
        typer.echo(client.logs(job_id).rstrip("\n"))


@app.command()
def stop(job_id: str = JobIdArgument, address: str | None = AddressOption) -> None:
    """Stop a running job; its run is marked killed and its checkpoints stay for a resume."""
    from training.submission import JobClient

    stopped = JobClient(address).stop(job_id)
    typer.echo(f"stopping job {job_id}" if stopped else f"job {job_id} was not running")


@app.command("list")
def list_jobs(address: str | None = AddressOption, as_json: bool = JsonOption) -> None:
    """Jobs on the cluster, newest first."""
    from training.submission import JobClient

    client = JobClient(address)
    jobs = sorted(client.list(), key=lambda j: j.start_time or 0, reverse=True)
    rows = [{"job_id": j.submission_id, "status": str(j.status.value),
             "waiting": _waiting(client, j.submission_id, str(j.status.value)),
             "experiment": (j.metadata or {}).get("experiment", ""),
             "start_time": _seconds(j.start_time), "entrypoint": j.entrypoint} for j in jobs]
    # The entrypoint is left to --json: the table keeps room for whole job ids.
    # What a waiting job needs goes under the table, whole: a cell would squeeze the job ids.
    footer = "\n".join(f"{row['job_id']}: {row['waiting']}" for row in rows if row["waiting"])
    emit(as_json, rows, lambda: print_table(
        "training jobs", ["job", "status", "experiment", "started"],
        [[row["job_id"], f"{row['status']}, waiting" if row["waiting"] else row["status"],
          row["experiment"], row["start_time"]] for row in rows],
        footer=footer,
    ))


@app.command()
def run(
    spec: Path = typer.Argument(..., help="The job spec (YAML)."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs for the local Ray (default: all)."),
    register: bool = typer.Option(True, "--register/--no-register",
                                  help="Register the trained version."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Run a job here, on a private local Ray, without a cluster."""
    from training.job import run_entrypoint

    code = run_entrypoint(str(spec), address="local", num_cpus=num_cpus, register=register,
                          overrides=overrides or ())
    if code:
        raise typer.Exit(code)


def _waiting(client: Any, job_id: str | None, status: str) -> str | None:
    """``waiting for resources (needs …, free …)`` for a running job whose driver says it
    waits for its workers (the job prints it; Ray's job API has no other place for it)."""
    if status != "RUNNING" or not job_id:
        return None
    from training.capacity import waiting_note

    return waiting_note(client.logs(job_id))


def _seconds(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")
