"""The main job: the modelplane story on the embedded default, step by step."""

from __future__ import annotations

from rich.console import Console

from modelplane import __version__
from modelplane.settings import get_settings


def run_quickstart() -> None:
    """Run every part of the story that exists, printing what each step does."""
    console = Console()
    settings = get_settings()
    console.rule(f"modelplane {__version__} quickstart")
    console.print(f"home      {settings.home}")
    console.print(f"database  {settings.db_url}")
    console.print(f"artifacts {settings.artifact_uri}")
