"""Ray's token authentication, handled so users never meet it raw.

Ray 2.60 turns token authentication on for a cluster it starts when a token exists
(``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``); every client of
that cluster — drivers, ``ray job submit``, the job SDK — must then run with
``RAY_AUTH_MODE=token`` or it is refused with "InvalidAuthToken". modelplane sets the
mode for itself and for the processes it starts whenever a token is present, and leaves
an explicit ``RAY_AUTH_MODE`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"


def token_available(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH")
    candidate = Path(path) if path else Path.home() / ".ray" / "auth_token"
    return candidate.is_file()


def ray_auth_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables a Ray client process needs for this machine's token setup (may be empty)."""
    env = os.environ if environ is None else environ
    if AUTH_MODE in env or not token_available(dict(env)):
        return {}
    return {AUTH_MODE: "token"}


def apply_ray_auth_env() -> None:
    """Set ``RAY_AUTH_MODE=token`` in this process when needed.

    Ray caches its configuration when it is imported; if it already is, the cache is
    refreshed the way Ray itself does when it enables token mode.
    """
    import sys

    needed = ray_auth_env()
    if not needed:
        return
    os.environ.update(needed)
    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")
