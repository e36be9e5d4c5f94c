"""Render the CLI's command reference as Markdown from the commands themselves.

``docs/cli.md`` is this module's output; a test regenerates it and fails when the two
differ, so the reference can never drift from ``--help``.
"""

from __future__ import annotations

from typing import Any

import typer


def _params(command: Any) -> list[str]:
    lines = []
    for param in command.params:
        if param.param_type_name == "argument":
            lines.append(f"- `{(param.metavar or param.name).upper()}` (argument)"
                         + (f": {param.help}" if getattr(param, "help", None) else ""))
        elif param.param_type_name == "option" and "--help" not in param.opts:
            flags = ", ".join(f"`{o}`" for o in param.opts)
            help_text = param.help or ""
            default = param.default
            if default not in (None, False, ()) and not param.is_flag:
                help_text += f" (default: {default})"
            lines.append(f"- {flags}: {help_text}".rstrip(": "))
    return lines


def _walk(group: Any, prefix: str, out: list[str]) -> None:
    for name in sorted(group.commands):
        command = group.commands[name]
        path = f"{prefix} {name}"
        out.append(f"### `{path}`\n")
        out.append(f"{(command.help or '').strip()}\n")
        params = _params(command)
        if params:
            out.extend(params)
            out.append("")


def render() -> str:
    """The whole reference as Markdown."""
    from modelplane.cli import app

    root = typer.main.get_command(app)
    out = ["# Command reference\n", "Generated from the CLI (`python -m modelplane.cli_reference`).\n"]
    leaves = {n: c for n, c in root.commands.items() if not hasattr(c, "commands")}
    out.append("## `modelplane`\n")
    out.append(f"{(root.help or '').strip()}\n")
    for name in sorted(leaves):
        out.append(f"### `modelplane {name}`\n")
        out.append(f"{(leaves[name].help or '').strip()}\n")
        params = _params(leaves[name])
        if params:
            out.extend(params)
            out.append("")
    groups = [n for n, c in root.commands.items() if hasattr(c, "commands")]
    for name in sorted(groups):
        group = root.commands[name]
        out.append(f"## `modelplane {name}`\n")
        out.append(f"{(group.help or '').strip()}\n")
        _walk(group, f"modelplane {name}", out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
