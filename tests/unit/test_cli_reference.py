"""docs/cli.md is exactly what the CLI says about itself, and the README points at it."""

from __future__ import annotations

from pathlib import Path

import typer

from modelplane.cli import app
from modelplane.cli_reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_docs_cli_md_matches_the_commands() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `python -m modelplane.cli_reference > docs/cli.md`"
    )


def test_readme_names_every_top_level_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"modelplane {name}" in readme, name
