"""``modelplane models …``: list, show, register, alias, stage, approve, reject, policy, lineage,
benchmark, compare."""

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
            "benchmark": _benchmark_line(api.latest_benchmark(version.model, version.version)),
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
    # The newest versions' latest benchmarks: one read each, so only for the most recent.
    measured = {v.version: api.latest_benchmark(ref, v.version)
                for v in sorted(versions.items, key=lambda v: -v.version)[:BENCHMARKS_SHOWN]}
    print_table("versions", ["version", "stage", "status", "aliases", "created_by", "created_at",
                             "benchmark (p50 / p99 ms, CPU ms/req)"],
                [[v.version, v.stage, v.status, v.aliases, v.created_by, v.created_at,
                  _benchmark_cell(measured.get(v.version))] for v in versions.items])


@app.command()
def register(
    name: str = typer.Argument(..., help="Model name (created if new)."),
    model_file: Path = typer.Argument(..., exists=True, metavar="MODEL", help=(
        "An .onnx file, a TorchScript file, or a folder (or zip) of code and files for a "
        "python model or steps around a graph.")),
    manifest: Path = typer.Option(..., "--manifest", "-m", exists=True, dir_okay=False,
                                  help="Manifest JSON or YAML (signature, code, task, lineage …)."),
    kind: str | None = typer.Option(None, "--kind", help=(
        "onnx, python, torchscript or torch_export; default: the manifest's, else told "
        "from MODEL.")),
    description: str = typer.Option("", help="Free text for this version."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Upload a model and register it as the model's next version (docs/models.md).

    The registry loads it and runs it on example inputs before accepting it; a version
    that runs code of its own (python, steps from its folder, torch) needs a deployer's
    token, or what MODELPLANE_MODEL_CODE asks."""
    data = read_document(manifest, "--manifest")
    data["kind"] = _kind(kind, data, model_file)
    version = client(url).register_version(name, model_file, data, description=description)
    emit(as_json, version, lambda: typer.echo(
        f"registered {version.model}:{version.version} (sha256 {version.artifact_digest[:12]}…)"))


def _kind(given: str | None, manifest: dict, model: Path) -> str:
    """The kind to register: --kind, else the manifest's, else told from the file; an error
    saying what to pass when they disagree or nothing tells."""
    from control_plane.model_package import kind_of

    kinds = ("onnx", "python", "torchscript", "torch_export")
    if given is not None and given not in kinds:
        raise typer.BadParameter(f"--kind {given!r} is not one of {', '.join(kinds)}")
    stated = manifest.get("kind")
    if given and stated and given != stated:
        raise typer.BadParameter(f"--kind {given} but the manifest says kind: {stated}; "
                                 "drop one of them")
    if given or stated:
        return str(given or stated)
    found = kind_of(model)
    if found == "archive":
        code = manifest.get("code") or {}
        if code.get("entrypoint"):
            return "python"
        if code.get("preprocess") or code.get("postprocess"):
            return "onnx"
        raise typer.BadParameter(f"{model} is a folder or archive: say what it is with --kind "
                                 "python (and code.entrypoint) or steps in the manifest's code")
    if found is None:
        raise typer.BadParameter(f"cannot tell what {model} is; pass --kind onnx, python, "
                                 "torchscript or torch_export")
    return found


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


BENCHMARKS_SHOWN = 20


def _benchmark_cell(found: object) -> str:
    if found is None:
        return "-"
    f = found.figures  # type: ignore[attr-defined]
    return f"{f.latency_ms.p50:.2f} / {f.latency_ms.p99:.2f}, {f.cpu_ms_per_request:.2f}"


def _benchmark_line(found: object) -> str | None:
    """The latest benchmark in one line: percentiles, the rate search, CPU and memory."""
    if found is None:
        return None
    f = found.figures  # type: ignore[attr-defined]
    best = f"{f.max_rate_within_p99:g} req/s" if f.max_rate_within_p99 is not None else "none"
    gpu = f", GPU {f.gpu_memory_mb:.0f} MiB" if f.gpu_memory_mb is not None else ""
    return (f"#{found.id} at {f.rate:g} req/s: p50 {f.latency_ms.p50:.2f} / p95 "  # type: ignore[attr-defined]
            f"{f.latency_ms.p95:.2f} / p99 {f.latency_ms.p99:.2f} ms; p99 <= {f.p99_target_ms:g} ms "
            f"up to {best}; CPU {f.cpu_ms_per_request:.3f} ms/request, RSS "
            f"{f.memory_rss_mb:.0f} MiB{gpu}")


@app.command()
def benchmark(
    ref: str = typer.Argument(..., help="NAME:VERSION"),
    rate: float = typer.Option(50.0, help="Requests per second of the fixed-rate phase."),
    p99_ms: float = typer.Option(50.0, "--p99-ms", help="p99 target the rate search must hold."),
    seconds: float = typer.Option(5.0, help="Seconds of load at --rate."),
    search_steps: int = typer.Option(4, min=0, max=12, help="Rates tried by the search; 0: none."),
    endpoint: str | None = typer.Option(None, help="Serve it with this endpoint's settings."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the figures, showing progress."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Measure a version on a scratch replica: p50/p95/p99, the highest rate within the p99
    target, CPU per request, memory. Stored on the version (`models show NAME:VERSION`)."""
    from pydantic import ValidationError

    from control_plane.benchmarking.schemas import BenchmarkSettings

    name, version = _split(ref)
    try:
        settings = BenchmarkSettings(rate=rate, p99_target_ms=p99_ms, duration_s=seconds,
                                     search_steps=search_steps, endpoint=endpoint)
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(p) for p in problem["loc"]) or "settings"
        raise typer.BadParameter(problem["msg"], param_hint=field.replace("_", "-")) from None
    api = client(url)
    started = api.start_benchmark(name, version, settings)
    if not wait:
        emit(as_json, started, lambda: typer.echo(
            f"benchmark #{started.id} of {name}:{version} started; `modelplane models benchmark "
            f"{ref} --wait` waits for another, `modelplane models show {ref}` shows the figures"))
        return
    done = api.wait_benchmark(name, version, started.id, progress=None if as_json else (
        lambda line: typer.echo(f"  {line}", err=True)))
    if as_json:
        emit(True, done, lambda: None)
    elif done.status == "succeeded":
        typer.echo(f"{name}:{version} {_benchmark_line(done)}")
    if done.status != "succeeded":
        if not as_json:
            typer.echo(f"benchmark #{done.id} of {name}:{version} failed: {done.error}", err=True)
        raise typer.Exit(1)


@app.command()
def compare(
    a: str = typer.Argument(..., help="NAME:VERSION (the base)"),
    b: str = typer.Argument(..., help="NAME:VERSION (compared with the base)"),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Compare two versions' latest benchmarks and evaluation metrics; ratios are B over A."""
    from control_plane.benchmarking import compare as compare_benchmarks

    api = client(url)
    (a_name, a_version), (b_name, b_version) = _split(a), _split(b)
    result = compare_benchmarks(a, api.latest_benchmark(a_name, a_version),
                                b, api.latest_benchmark(b_name, b_version))
    a_metrics = api.get_version(a_name, a_version).manifest.metrics
    b_metrics = api.get_version(b_name, b_version).manifest.metrics
    metrics = {key: (a_metrics.get(key), b_metrics.get(key))
               for key in sorted(set(a_metrics) | set(b_metrics))}
    if as_json:
        emit(True, {"benchmarks": result, "metrics": {
            k: {"a": x, "b": y, "ratio": y / x if x and y is not None else None}
            for k, (x, y) in metrics.items()}}, lambda: None)
        return
    missing = [ref for ref, found in ((a, result.a_benchmark), (b, result.b_benchmark)) if found is None]
    rows = [[f.name, f.a, f.b, f"{f.ratio:.3g}x" if f.ratio is not None else None, f"{f.better} is better"]
            for f in result.figures if f.a is not None or f.b is not None]
    rows += [[f"metric {key}", x, y, f"{y / x:.3g}x" if x and y is not None else None, ""]
             for key, (x, y) in metrics.items()]
    print_table(f"{a} vs {b}", ["figure", a, b, "B/A", ""], rows,
                footer=f"no successful benchmark of {', '.join(missing)}: run `modelplane models "
                       "benchmark NAME:VERSION --wait`" if missing else "")
