"""``modelplane monitor ENDPOINT`` and ``modelplane alerts
list|rules|receivers|history|apply|delete|silence|unsilence``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, fmt, print_table

alerts_app = typer.Typer(help="Alerts on the monitoring signals: active alerts, rules, history, "
                         "and the webhook receivers of alerts and other events.",
                         no_args_is_help=True)


@alerts_app.command("list")
def list_alerts(as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """Alerts pending or firing now."""
    alerts = client(url).alerts()
    emit(as_json, alerts, lambda: print_table(
        "active alerts", ["alert", "state", "severity", "endpoint", "version", "value", "since", "summary"],
        [[a.name, a.state + (" (stale)" if a.stale else "") + (" (silenced)" if a.silenced_until else ""),
          a.severity, a.labels.get("endpoint"),
          a.labels.get("version"), a.value, a.fired_at or a.started_at,
          a.summary + (f" [stale: {a.stale}]" if a.stale else "")] for a in alerts],
        footer="" if alerts else "no alert is pending or firing"))


@alerts_app.command("rules")
def rules(
    metrics: bool = typer.Option(False, "--metrics", help="List the metrics rules can watch instead."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Alert rules (or, with --metrics, the signals a rule can watch)."""
    api = client(url)
    if metrics:
        signals = api.monitoring_signals()
        emit(as_json, signals, lambda: print_table(
            "metrics for alert rules", ["metric", "meaning"], sorted(signals.items())))
        return
    found = api.alert_rules()
    emit(as_json, found, lambda: print_table(
        "alert rules", ["rule", "condition", "window", "for", "every", "severity", "scope", "enabled",
                        "silenced until", "changed by"],
        [[r.name, f"{r.metric} {r.comparison} {r.threshold:g}", f"{r.window_s:g}s", f"{r.for_s:g}s",
          f"{r.every_s:g}s", r.severity, _scope(r), "yes" if r.enabled else "no",
          _silence(r), r.updated_by or r.created_by] for r in found],
        footer="" if found else "no rules; add some with `modelplane alerts apply rules.yaml`"))


@alerts_app.command("receivers")
def receivers(as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """Webhook receivers: where each posts, which events it gets and in which format (admin)."""
    found = client(url).alert_receivers()
    emit(as_json, found, lambda: print_table(
        "receivers", ["receiver", "url", "format", "events", "tries", "enabled"],
        [[r.name, r.url, r.format, ", ".join(r.events), r.max_attempts,
          "yes" if r.enabled else "no"] for r in found],
        footer="" if found else "no receivers; add some with `modelplane alerts apply rules.yaml`"))


@alerts_app.command("history")
def history(
    limit: int = typer.Option(20, min=1, max=500, help="Entries to show."),
    name: str | None = typer.Option(None, help="Only this alert."),
    endpoint: str | None = typer.Option(None, help="Only this endpoint."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Alerts that fired or resolved, and one-shot events (rollbacks), newest first."""
    page = client(url).alert_history(limit=limit, name=name, endpoint=endpoint)
    emit(as_json, page, lambda: print_table(
        "alert history", ["when", "alert", "state", "kind", "severity", "endpoint", "version", "summary"],
        [[e.created_at, e.name, e.state, e.kind, e.severity, e.labels.get("endpoint"),
          e.labels.get("version"), e.summary] for e in page.items],
        footer=f"{len(page.items)} of {page.total}"))


@alerts_app.command("changes")
def changes(
    name: str | None = typer.Argument(None, help="Only this rule (or receiver), deleted ones too."),
    receivers: bool = typer.Option(False, "--receivers", help="Changes to receivers (admin only)."),
    limit: int = typer.Option(20, min=1, max=500, help="Entries to show."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Who created, replaced, deleted, silenced or unsilenced which rule (or receiver), newest first."""
    page = client(url).alerting_changes(receivers=receivers, name=name, limit=limit)
    emit(as_json, page, lambda: print_table(
        "receiver changes" if receivers else "alert rule changes",
        ["when", "name", "action", "by", "for", "what"],
        [[c.created_at, c.name, c.action, c.actor, c.subject, _change_text(c)] for c in page.items],
        footer=f"{len(page.items)} of {page.total}"))


def _change_text(change: Any) -> str:
    spec = change.spec or {}
    if change.action == "silenced":
        return f"until {change.detail.get('until')}" + (f": {change.detail['reason']}"
                                                        if change.detail.get("reason") else "")
    if change.action == "unsilenced":
        return f"ended the silence until {(change.detail.get('ended') or {}).get('until')}"
    if change.kind == "receiver":
        return f"{spec.get('url')} ({', '.join(spec.get('events') or [])})"
    enabled = "" if spec.get("enabled", True) else ", disabled"
    return f"{spec.get('metric')} {spec.get('comparison')} {spec.get('threshold')}{enabled}"


@alerts_app.command("apply")
def apply(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML with rules: and receivers:."),
    prune: bool = typer.Option(False, help="Delete rules the file does not name."),
    url: str | None = UrlOption,
) -> None:
    """Create or replace the rules and webhook receivers a YAML file declares."""
    import yaml
    from pydantic import ValidationError

    from control_plane.alerts.schemas import AlertsFile

    try:
        declared = AlertsFile.model_validate(yaml.safe_load(file.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as error:
        raise typer.BadParameter(f"{file}: {error}") from None
    api = client(url)
    for receiver in declared.receivers:
        api.put_alert_receiver(receiver)
        typer.echo(f"receiver {receiver.name}: {receiver.url} ({receiver.format}; "
                   f"{', '.join(receiver.events)})")
    for rule in declared.rules:
        api.put_alert_rule(rule)
        typer.echo(f"rule {rule.name}: {rule.metric} {rule.comparison} {rule.threshold:g}")
    if prune:
        keep = {r.name for r in declared.rules}
        for rule in api.alert_rules():
            if rule.name not in keep:
                api.delete_alert_rule(rule.name)
                typer.echo(f"deleted rule {rule.name}")


@alerts_app.command("delete")
def delete(name: str = typer.Argument(..., help="Rule name."), url: str | None = UrlOption) -> None:
    """Delete an alert rule (its firing alerts resolve)."""
    client(url).delete_alert_rule(name)
    typer.echo(f"deleted rule {name}")


@alerts_app.command("silence")
def silence(
    name: str = typer.Argument(..., help="Rule name."),
    duration: str = typer.Option(..., "--for", help="How long: 90s, 30m, 2h or 1d (at most 30d)."),
    reason: str = typer.Option("", "--reason", help="Why, shown beside the rule."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Notify no receiver of a rule's alerts for a while; they are still listed and recorded."""
    rule = client(url).silence_alert_rule(name, parse_duration(duration), reason)
    emit(as_json, rule, lambda: typer.echo(f"silenced rule {name} until {_silence(rule)}"))


@alerts_app.command("unsilence")
def unsilence(name: str = typer.Argument(..., help="Rule name."), url: str | None = UrlOption) -> None:
    """End a rule's silence now: its next firing or resolution is notified again."""
    client(url).unsilence_alert_rule(name)
    typer.echo(f"rule {name} notifies again")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` or plain seconds, as seconds."""
    value, unit = text.strip().lower(), "s"
    if value[-1:] in _UNITS:
        value, unit = value[:-1], value[-1]
    try:
        seconds = float(value) * _UNITS[unit]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration; write 90s, 30m, 2h or 1d",
                                 param_hint="--for") from None
    if not 0 < seconds <= 30 * 86400:
        raise typer.BadParameter(f"{text!r} is not between 1s and 30d", param_hint="--for")
    return seconds


def _silence(rule: Any) -> str:
    if rule.silence is None:
        return "-"
    reason = f" ({rule.silence.reason})" if rule.silence.reason else ""
    return f"{fmt(rule.silence.until)}{reason}"


def monitor(
    endpoint: str = typer.Argument(..., help="Endpoint name."),
    window: float = typer.Option(60.0, min=1, max=300, help="Seconds each figure looks back."),
    interval: float = typer.Option(2.0, min=0.2, help="Seconds between refreshes."),
    once: bool = typer.Option(False, "--once", help="Print once and exit."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Live table per version: latency, errors, throughput, drift by feature, quality, accuracy."""
    api = client(url)
    api.get_endpoint(endpoint)  # a clear 404 for a typo, before any table
    if as_json:
        emit(True, api.endpoint_stats(endpoint, window_s=window), lambda: None)
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(render(endpoint, api.endpoint_stats(endpoint, window_s=window), window,
                             width=console.width))
        return
    from rich.console import Group
    from rich.text import Text

    from control_plane.cli.following import follow

    with Live(console=console, auto_refresh=False) as live:
        shown: list[Any] = [Text(endpoint)]

        def waiting(why: str) -> None:  # the last tables stay, marked as old
            live.update(Group(shown[0], Text(f"waiting: {why}", style="yellow")), refresh=True)

        try:
            while True:
                stats = follow(lambda: api.endpoint_stats(endpoint, window_s=window), waiting)
                # The width is read at each refresh, so the layout follows a resized terminal.
                shown[0] = render(endpoint, stats, window, width=console.width)
                live.update(shown[0], refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


def render(endpoint: str, stats: dict[str, Any], window: float, *, width: int = 200) -> Any:
    """The tables of one refresh: versions, then drift verdicts by feature.

    One row per version when that table fits ``width`` columns; otherwise it is stacked,
    one row per figure and one column per version, so a narrow terminal shows every figure
    instead of wrapping thirteen columns into unreadable slivers.
    """
    from rich.console import Group
    from rich.table import Table

    versions = {v: s for v, s in sorted(stats.get("versions", {}).items(), key=lambda i: int(i[0]))
                if v != "0"}
    title = f"{endpoint}: last {window:g} s per version ({time.strftime('%H:%M:%S')})"
    figures = {version: _figures(row) for version, row in versions.items()}
    main = _one_row_per_version(title, figures)
    if _natural_width(main) > width:
        main = _one_column_per_version(title, figures)
    features_title = "drift by feature (adjusted p-value; inputs, then predictions)"
    # A table's title wraps at the table's width: let a narrow table widen to keep it whole.
    features = Table(title=features_title, title_justify="left",
                     min_width=min(len(features_title), width))
    features.add_column("feature")
    names: list[str] = []
    for row in versions.values():
        drift = row.get("drift") or {}
        for name in [*drift.get("features", {}), *[f"→ {n}" for n in (drift.get("prediction") or {}).get("features", {})]]:
            if name not in names:
                names.append(name)
    for version in versions:
        features.add_column(f"v{version}")
    for name in names:
        cells = []
        for row in versions.values():
            drift = row.get("drift") or {}
            group = (drift.get("prediction") or {}) if name.startswith("→ ") else drift
            feature = (group.get("features") or {}).get(name.removeprefix("→ "))
            cells.append(_feature_text(feature))
        features.add_row(name, *cells)
    return Group(main, features) if names else main


def _figures(row: dict[str, Any]) -> dict[str, str]:
    """One version's figures as text, by column heading."""
    quality, drift = row.get("quality") or {}, row.get("drift") or {}
    return {
        "req/s": fmt(row.get("throughput_rps")), "p50 ms": fmt(row.get("p50_ms")),
        "p95 ms": fmt(row.get("p95_ms")), "p99 ms": fmt(row.get("p99_ms")),
        "errors": f"{100 * (row.get('error_rate') or 0):.2f}%", "drift": _drift_text(drift),
        "missing": fmt(quality.get("missing")), "out of range": fmt(quality.get("out_of_range")),
        "rejected": fmt(quality.get("rejected_total")),
        "last request": _age(quality.get("last_request_age_s")),
        "accuracy": _accuracy_text(row.get("accuracy") or {}),
        "anomalies": _anomaly_text(row.get("anomalies") or {}),
    }


def _one_row_per_version(title: str, figures: dict[str, dict[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("version")
    for heading in _figures({}):
        table.add_column(heading)
    for version, shown in figures.items():
        table.add_row(version, *shown.values())
    return table


def _one_column_per_version(title: str, figures: dict[str, dict[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("")
    for version in figures:
        table.add_column(f"v{version}")
    for heading in _figures({}):
        table.add_row(heading, *(shown[heading] for shown in figures.values()))
    return table


def _natural_width(table: Any) -> int:
    """The columns ``table`` takes when nothing in it wraps."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


def _scope(rule: Any) -> str:
    where = rule.endpoint or "every endpoint"
    return where + (f" v{rule.version}" if rule.version is not None else "")


def _drift_text(drift: dict[str, Any]) -> str:
    verdict = drift.get("verdict") or "-"
    if verdict == "drift":
        named = [*drift.get("drifted_features", []),
                 *[f"→{n}" for n in (drift.get("prediction") or {}).get("drifted_features", [])]]
        return f"[red]DRIFT[/red] {', '.join(named)}"
    return "ok" if verdict == "ok" else "[dim]too few rows[/dim]" if verdict == "insufficient" else verdict


def _feature_text(feature: dict[str, Any] | None) -> str:
    if not feature:
        return "-"
    p = feature.get("p_value")
    shown = f"{feature.get('test')} p={fmt(p)}"
    return f"[red]drift[/red] {shown}" if feature.get("drifted") else shown


def _accuracy_text(accuracy: dict[str, Any]) -> str:
    labelled = accuracy.get("labelled") or 0
    if not labelled:
        return "[dim]no feedback[/dim]"
    if accuracy.get("task") == "regression":
        return f"MAE {fmt(accuracy.get('mae'))} RMSE {fmt(accuracy.get('rmse'))} (n={labelled})"
    return f"acc {fmt(accuracy.get('accuracy'))} F1 {fmt(accuracy.get('f1'))} (n={labelled})"


def _anomaly_text(anomalies: dict[str, Any]) -> str:
    found = [name for name in ("latency_ms", "error_rate") if (anomalies.get(name) or {}).get("anomalous")]
    if anomalies.get("out_of_support_rows"):
        found.append(f"{anomalies['out_of_support_rows']} rows off-support")
    return ", ".join(found) or "-"


def _age(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s ago"
