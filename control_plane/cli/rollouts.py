"""``modelplane rollout …``: progressive delivery with automatic promotion and rollback.

A rollout is named by its number or by its endpoint (that endpoint's latest rollout).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from control_plane.cli.output import (
    JsonOption,
    UrlOption,
    client,
    emit,
    fmt,
    print_table,
    read_document,
)
from modelplane.errors import ModelplaneError

app = typer.Typer(help="Roll out a version: canary, blue-green, rolling or shadow, with "
                       "automatic promotion and rollback.", no_args_is_help=True)

RefArgument = typer.Argument(..., help="Rollout number, or an endpoint (its latest rollout).")
ReasonOption = typer.Option("", "--reason", "-r", help="Why; recorded in the audit log.")


def _resolve(api: Any, ref: str) -> Any:
    if ref.isdigit():
        return api.get_rollout(int(ref))
    latest = api.list_rollouts(endpoint=ref, limit=1)
    if not latest:
        from control_plane.errors import NotFoundError

        raise NotFoundError(f"endpoint {ref!r} has had no rollout; start one with "
                            f"`modelplane rollout start {ref} MODEL_REF`")
    return latest[0]


def _load_file(path: Path) -> dict[str, Any]:
    loaded = read_document(path, "-f")
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"{path} must hold a mapping of rollout settings", param_hint="-f")
    return loaded


def _steps(raw: str) -> list[float]:
    try:
        return [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--steps {raw!r} must be percentages like 5,25,50,100") from None


@app.command()
def start(
    endpoint: str | None = typer.Argument(None, help="Endpoint to roll out on."),
    model_ref: str | None = typer.Argument(None, help="Candidate: NAME:VERSION or NAME@ALIAS."),
    file: Path | None = typer.Option(None, "-f", "--file", help="rollout.yaml with any of the settings below."),
    strategy: str | None = typer.Option(None, help="canary (default), blue_green, rolling or shadow."),
    steps: str | None = typer.Option(None, help="Canary weights, e.g. 5,25,50,100."),
    step_duration: str | None = typer.Option(None, help="Hold per step, e.g. 60s or 2m."),
    shadow_then: str | None = typer.Option(None, help="After a shadow phase: canary or blue_green."),
    max_error_rate: float | None = typer.Option(None, help="Fail above this 5xx rate (0.01 = 1%)."),
    max_p95_ms: float | None = typer.Option(None, help="Fail above this p95 latency."),
    max_p99_ms: float | None = typer.Option(None, help="Fail above this p99 latency."),
    max_p95_ratio: float | None = typer.Option(None, help="Fail when p95 exceeds stable's by this factor."),
    min_shadow_agreement: float | None = typer.Option(None, help="Fail below this agreement with stable."),
    min_samples: int | None = typer.Option(None, help="Requests needed before any decision."),
    interval: str | None = typer.Option(None, help="Analysis interval, e.g. 10s (at least 1s)."),
    window: str | None = typer.Option(None, help="Analysis window, e.g. 60s."),
    failures_to_rollback: int | None = typer.Option(None, help="Consecutive failing analyses that roll back."),
    keep_warm: str | None = typer.Option(None, help="Keep the old version loaded this long after the switch."),
    ab_test: bool = typer.Option(
        False, "--ab-test",
        help="Also compare the candidate with stable by sequential A/B tests (error rate, "
             "latency); tune them under analysis.ab_test in the file."),
    require_approval: bool = typer.Option(
        False, "--require-approval",
        help="Wait for an approval, as if the model's policy required one; nothing here can "
             "lift a policy that does."),
    watch_progress: bool = typer.Option(False, "--watch", help="Follow the rollout until it ends."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Start a rollout: flags override the file, the file overrides the defaults."""
    spec = _load_file(file) if file else {}
    analysis = dict(spec.get("analysis") or {})
    for key, value in {"endpoint": endpoint, "model_ref": model_ref, "strategy": strategy,
                       "steps": _steps(steps) if steps else None, "step_duration_s": step_duration,
                       "shadow_then": shadow_then, "keep_warm_s": keep_warm,
                       "require_approval": True if require_approval else None}.items():
        if value is not None:
            spec[key] = value
    for key, value in {"max_error_rate": max_error_rate, "max_p95_ms": max_p95_ms,
                       "max_p99_ms": max_p99_ms, "max_p95_ratio": max_p95_ratio,
                       "min_shadow_agreement": min_shadow_agreement, "min_samples": min_samples,
                       "interval_s": interval, "window_s": window,
                       "failures_to_rollback": failures_to_rollback}.items():
        if value is not None:
            analysis[key] = value
    if ab_test and analysis.get("ab_test") is None:
        analysis["ab_test"] = {}
    if analysis:
        spec["analysis"] = analysis
    for required in ("endpoint", "model_ref"):
        if not spec.get(required):
            raise typer.BadParameter(f"give {required.upper()} as an argument or in the file")
    api = client(url)
    rollout = api.start_rollout(_validated(spec))
    emit(as_json, rollout, lambda: typer.echo(
        f"rollout #{rollout.id}: {rollout.strategy.value} of {rollout.model}:{rollout.candidate_version}"
        f" over v{rollout.stable_version} on {rollout.endpoint}, {len(rollout.steps)} step(s)\n"
        f"  follow it with: modelplane rollout watch {rollout.id}"))
    if watch_progress and not as_json:
        _watch(api, rollout.id, 1.0)


def _validated(spec: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from control_plane.rollouts.schemas import RolloutCreate

    try:
        return RolloutCreate.model_validate(spec)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise typer.BadParameter(f"invalid rollout settings: {problems}") from None


@app.command()
def status(ref: str = RefArgument, as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """State, step, weights and the latest analysis."""
    api = client(url)
    rollout = _resolve(api, ref)
    emit(as_json, rollout, lambda: _print_status(rollout, api.get_endpoint(rollout.endpoint)))


@app.command()
def watch(
    ref: str = RefArgument,
    refresh: float = typer.Option(1.0, min=0.2, help="Seconds between updates."),
    url: str | None = UrlOption,
) -> None:
    """Live progress until the rollout ends: step, weights, per-version p95 and errors,
    verdicts, and the A/B tests' effects, intervals and the samples they still need. A
    control plane or store that cannot answer is waited out for up to a minute; exits 1
    unless the rollout succeeded."""
    from control_plane.cli.following import follow

    api = client(url)
    # Waited out from the first look too: a watch begun while the control plane restarts.
    rollout_id = follow(lambda: _resolve(api, ref).id,
                        lambda why: typer.echo(f"waiting: {why}", err=True))
    _watch(api, rollout_id, refresh)


@app.command("list")
def list_rollouts(
    endpoint: str | None = typer.Option(None, help="Only this endpoint."),
    active: bool = typer.Option(False, "--active", help="Only rollouts still running."),
    limit: int = typer.Option(20, min=1, max=500),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Rollouts, newest first."""
    rollouts = client(url).list_rollouts(endpoint=endpoint, active=True if active else None, limit=limit)
    emit(as_json, rollouts, lambda: print_table(
        "rollouts", ["#", "endpoint", "candidate", "stable", "strategy", "state", "step", "reason"],
        [[r.id, r.endpoint, f"{r.model}:{r.candidate_version}", r.stable_version,
          r.strategy, r.state, f"{r.step_index + 1}/{len(r.steps)}", r.reason] for r in rollouts]))


@app.command()
def history(ref: str = RefArgument, as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """The audit log: every transition, step and failing analysis, with who and why."""
    api = client(url)
    rollout = _resolve(api, ref)
    events = api.rollout_events(rollout.id)
    emit(as_json, events, lambda: print_table(
        f"rollout #{rollout.id} on {rollout.endpoint}",
        ["time", "event", "state", "step", "by", "reason"],
        [[e.created_at, e.kind, f"{e.from_state} → {e.to_state}" if e.to_state else "",
          e.step_index + 1, e.actor, e.reason] for e in events]))


def _act(action: str, doc: str) -> None:
    def command(ref: str = RefArgument, reason: str = ReasonOption, as_json: bool = JsonOption,
                url: str | None = UrlOption) -> None:
        api = client(url)
        rollout = api.rollout_action(_resolve(api, ref).id, action, reason)
        emit(as_json, rollout, lambda: typer.echo(
            f"rollout #{rollout.id}: {rollout.state.value}"
            + (f" ({rollout.reason})" if rollout.reason else "")))

    command.__doc__ = doc
    app.command(action)(command)


_act("pause", "Hold traffic at the current step and stop analysing.")
_act("resume", "Continue a paused rollout (the current step's hold starts again).")
_act("promote", "Skip the remaining steps and promote now (approval permitting).")
_act("rollback", "Stable back to 100% now and reject the candidate.")
_act("abort", "Stop the rollout and restore the stable version, without rejecting the candidate.")


@app.command()
def policy(
    endpoint: str = typer.Argument(..., help="Endpoint to opt in or out."),
    track_alias: str | None = typer.Option(None, help="Alias whose moves start rollouts, e.g. challenger."),
    file: Path | None = typer.Option(None, "-f", "--file", help="Rollout template (strategy, steps, analysis …)."),
    off: bool = typer.Option(False, "--off", help="Stop following the alias."),
    url: str | None = UrlOption,
) -> None:
    """Registry-driven deployment: moving the tracked alias onto a version starts a rollout."""
    api = client(url)
    if off:
        api.set_rollout_policy(endpoint, None)
        typer.echo(f"{endpoint}: no longer follows an alias")
        return
    if not track_alias:
        raise typer.BadParameter("give --track-alias ALIAS to opt in, or --off")
    api.set_rollout_policy(endpoint, {"track_alias": track_alias,
                                      "template": _load_file(file) if file else {}})
    typer.echo(f"{endpoint}: moving @{track_alias} onto a version starts a rollout")


# ---------------------------------------------------------------- rendering


def _print_status(rollout: Any, endpoint: Any) -> None:
    from rich.console import Console

    Console().print(rollout_view(rollout, endpoint, None))


def rollout_view(rollout: Any, endpoint: Any, stats: dict[str, Any] | None) -> Any:
    """A rich renderable: state, step, route table, last analysis, per-version statistics."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    step = rollout.current_step
    colour = {"succeeded": "green", "rolled_back": "red", "failed": "red",
              "paused": "yellow", "awaiting_approval": "yellow"}.get(rollout.state.value, "cyan")
    header = Text.assemble(
        (f"rollout #{rollout.id} ", "bold"), f"{rollout.model}:{rollout.candidate_version} over "
        f"v{rollout.stable_version} on {rollout.endpoint} ({rollout.strategy.value})  ",
        (rollout.state.value, f"bold {colour}"))
    lines = [header, Text(
        f"step {rollout.step_index + 1}/{len(rollout.steps)}: "
        + ("candidate mirrored" if step.shadow else f"candidate at {step.candidate_weight:g}%")
        + f", hold {step.hold_s:g}s · failing analyses in a row: {rollout.failures}")]
    weights = ", ".join(f"v{r.version} {'shadow' if r.shadow else f'{r.weight:g}%'}"
                        for r in endpoint.routes)
    lines.append(Text(f"route table: {weights}"))
    analysis = rollout.last_analysis
    if analysis:
        lines.append(Text(f"last analysis: {analysis.get('verdict')} — {analysis.get('reason')}"))
    if rollout.reason and rollout.state.terminal:
        lines.append(Text(f"outcome: {rollout.reason}", style=colour))
    table = Table(show_edge=False)
    for column in ("version", "role", "requests", "error rate", "p50 ms", "p95 ms", "p99 ms",
                   "shadow agreement"):
        table.add_column(column)
    versions = stats if stats is not None else {
        str(rollout.candidate_version): analysis.get("candidate", {}),
        str(rollout.stable_version): analysis.get("stable", {})}
    for version, values in sorted(versions.items()):
        role = "candidate" if version == str(rollout.candidate_version) else \
            "stable" if version == str(rollout.stable_version) else ""
        shadow = (values or {}).get("shadow") or {}
        table.add_row(version, role, *(fmt((values or {}).get(k)) for k in
                                       ("requests", "error_rate", "p50_ms", "p95_ms", "p99_ms")),
                      fmt(shadow.get("agreement")))
    ab = ab_view(rollout.ab_test)
    return Group(*lines, table, *ab)


def ab_view(result: Any) -> list[Any]:
    """The A/B gate's tests (``RolloutOut.ab_test``): decision, effect (positive: the
    candidate is worse), its anytime-valid interval, and the samples still needed."""
    from rich.table import Table
    from rich.text import Text

    if result is None:
        return []
    colour = {"worse": "red", "no_worse": "green", "undecided": "yellow"}
    head = Text.assemble("A/B test ", (result.decision, f"bold {colour.get(result.decision, '')}"),
                         f" (alpha {result.alpha:g} over the rollout"
                         + (f", block {result.block}, round {result.round}, "
                            f"{result.window_s:g}s window)"
                            if result.window_s is not None else ")")
                         + f": {result.reason}")
    if not result.metrics:
        return [head]
    table = Table(show_edge=False)
    for column in ("metric", "decision", "effect", "interval", "min effect", "p (fixed n)",
                   "candidate n", "needed", "more", "eta s"):
        table.add_column(column)
    for metric, test in result.metrics.items():
        interval = "" if test.ci is None else f"[{fmt(test.ci[0])}, {fmt(test.ci[1])}]"
        table.add_row(metric, Text(test.decision, style=colour.get(test.decision, "")),
                      fmt(test.effect), interval, fmt(test.min_effect), fmt(test.p_value),
                      fmt(test.candidate.n if test.candidate else None),
                      fmt(test.samples_needed), fmt(test.more_needed), fmt(test.eta_s))
    return [head, table]


def _watch(api: Any, rollout_id: int, refresh: float) -> None:
    from rich.console import Console

    if follow_rollout(api, rollout_id, Console(), refresh=refresh).state.value != "succeeded":
        raise typer.Exit(1)


def follow_rollout(api: Any, rollout_id: int, console: Any, *, refresh: float = 1.0,
                   window_s: float | None = None, for_s: float | None = None) -> Any:
    """Show the rollout live until it ends (or ``for_s`` passes); its last look. A control
    plane or store that cannot answer for a moment is waited out (``following``); a
    Monitor that cannot costs only the live statistics: the view shows the last
    analysis's instead. ``window_s``: the statistics' window (the rollout's own by default)."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from control_plane.cli.following import follow
    from control_plane.errors import cannot_answer_now

    until = time.monotonic() + for_s if for_s is not None else float("inf")
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        shown: list[Any] = [Text(f"rollout #{rollout_id}")]

        def waiting(why: str) -> None:
            live.update(Group(shown[0], Text(f"waiting: {why}", style="yellow")))

        while True:
            rollout, endpoint = follow(lambda: _look(api, rollout_id), waiting)
            window = window_s or float(rollout.spec.get("analysis", {}).get("window_s", 60))
            try:
                stats = api.endpoint_stats(rollout.endpoint, window_s=window).get("versions", {})
                note = None
            except ModelplaneError as error:
                if not cannot_answer_now(error):
                    raise
                stats, note = None, f"live statistics unknown now: {error.message}"
            shown[0] = rollout_view(rollout, endpoint, stats)
            live.update(Group(shown[0], Text(note, style="yellow")) if note else shown[0])
            if rollout.state.terminal or time.monotonic() >= until:
                return rollout
            time.sleep(refresh)


def _look(api: Any, rollout_id: int) -> tuple[Any, Any]:
    rollout = api.get_rollout(rollout_id)
    return rollout, api.get_endpoint(rollout.endpoint)
