"""Shared output helpers for the CLI: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
UrlOption = typer.Option(None, "--url", help="Control plane URL (default: MODELPLANE_URL).")


def client(url: str | None = None) -> Any:
    from control_plane.client import Client

    return Client(url=url)


def read_document(path: Path, option: str) -> Any:
    """A JSON (``.json``) or YAML file given to ``option``, or a usage error that says why not."""
    import yaml

    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise typer.BadParameter(f"{path} does not exist", param_hint=option) from None
    except (ValueError, yaml.YAMLError) as error:
        raise typer.BadParameter(f"{path} is not valid JSON/YAML: {error}", param_hint=option) from None


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(to_jsonable(value), indent=2, default=str))


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) or "-"
    return str(getattr(value, "value", value))


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, footer: str = ""
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(fmt(cell) for cell in row))
    console = Console()
    console.print(table)
    if footer:
        console.print(footer, style="dim")


def print_fields(title: str, fields: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(f"[bold]{title}[/bold]")
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        console.print(f"  {key.ljust(width)}  {fmt(value)}", highlight=False)


def emit(as_json: bool, value: Any, human: Callable[[], None]) -> None:
    """Print ``value`` as JSON when asked, else call ``human`` to print it for people."""
    if as_json:
        print_json(value)
    else:
        human()
