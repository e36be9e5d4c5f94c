"""Ray's token authentication, handled so users never meet it raw.

Ray 2.60 turns token authentication on for a cluster it starts when a token exists
(``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), and ``ray.init()``
starting a local cluster makes the token file when there is none. Every client of a
cluster must then run in the cluster's mode (``RAY_AUTH_MODE``): without a token it is
refused with "InvalidAuthToken", and a client in token mode against a cluster without
authentication has its actors cancelled before they start.

So the mode a client takes is the cluster's, not this machine's: a token file made after
a cluster started (by any local ``ray.init()``) must not switch that cluster's clients.
modelplane leaves an explicit ``RAY_AUTH_MODE`` alone; a process of the cluster (a job's
driver, a replica) keeps the mode it inherited; a client that knows the cluster's dashboard
asks it (``/api/authentication_mode``, which needs no token), and one that knows its GCS
tries a read without a token; otherwise the token decides, as it does for ``ray start``.

Calls to the job API are plain HTTP and need no process-wide mode: they carry the token in
their own header where the dashboard asks for one (``dashboard_auth_headers``), so one
process can talk to clusters in different modes, whatever its own mode is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from modelplane.errors import ConfigurationError

AUTH_MODE = "RAY_AUTH_MODE"
MODES = ("token", "disabled")
# Ray's job supervisor sets this in every job driver's environment, beside the cluster's
# own variables, RAY_AUTH_MODE among them where the cluster runs with tokens.
JOB_DRIVER_SETTING = "RAY_JOB_CONFIG_JSON_ENV_VAR"
MODE_PATH = "/api/authentication_mode"
MODE_TIMEOUT_S = 5.0


# The mode apply_ray_auth_env put in os.environ: set for one cluster, it is not the user's
# choice, and a later call for another cluster decides again.
_mode_set_here: str | None = None


def _token_path(env: dict[str, str] | os._Environ[str]) -> Path:
    path = env.get("RAY_AUTH_TOKEN_PATH")
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()  # a child's HOME may differ
    return Path(path) if path else home / ".ray" / "auth_token"


def token_available(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("RAY_AUTH_TOKEN")) or _token_path(env).is_file()


def ensure_token(environ: dict[str, str] | None = None) -> Path | None:
    """Make this machine's Ray token where it has none, unless the operator turned Ray's
    token authentication off (``RAY_AUTH_MODE=disabled``): a head ``modelplane up`` starts
    then runs with it. Without a token Ray serves its GCS, raylets and client port on every
    interface, unauthenticated: anyone who can reach the machine could join the cluster, run
    code on it and steer the closed loop (the Monitor's statistics, the route board). Returns
    the file made (readable by its owner alone), or None."""
    env = os.environ if environ is None else environ
    if env.get(AUTH_MODE, "").lower() == "disabled" or token_available(dict(env)):
        return None
    path = _token_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))  # Ray's own tokens: 256 random bits
            handle.flush()
            os.fsync(handle.fileno())
        os.link(staged, path)  # whole, and never over a token another process just made
    except FileExistsError:
        return None
    finally:
        staged.unlink(missing_ok=True)
    return path


def read_token(environ: dict[str, str] | None = None) -> str | None:
    """This machine's Ray token, from where Ray looks for one; None where there is none."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    try:
        return _token_path(env).read_text().strip() or None
    except OSError:
        return None


def cluster_auth_mode(dashboard: str) -> str | None:
    """``token`` or ``disabled``, as the cluster's dashboard says; None where it cannot say
    (not reachable, or a Ray from before token authentication)."""
    import httpx

    try:
        answer = httpx.get(f"{dashboard.rstrip('/')}{MODE_PATH}", timeout=MODE_TIMEOUT_S)
        mode = answer.json().get("authentication_mode") if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return mode if mode in MODES else None


def gcs_auth_mode(address: str) -> str | None:
    """``token`` or ``disabled`` for the cluster whose GCS is at ``host:port``: a read
    without a token is refused only where tokens are required. None where the GCS does not
    answer. Call it before this process sets a mode (a token would be sent)."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():  # Ray's C++ client logs the refused read as a warning
            GcsClient(address=address).internal_kv_get(b"dashboard", b"dashboard",
                                                        timeout=MODE_TIMEOUT_S)
    except AuthenticationError:
        return "token"
    except Exception:  # unreachable, timed out, or a Ray without the call: cannot say
        return None
    return "disabled"


def ray_auth_env(environ: dict[str, str] | None = None, *, dashboard: str | None = None,
                 gcs: str | None = None) -> dict[str, str]:
    """Variables a Ray client process needs on this machine for the cluster whose dashboard
    or GCS (``host:port``) is given (a new cluster, where neither is); may be empty. Raises
    ConfigurationError where the cluster requires a token this machine lacks."""
    env = dict(os.environ if environ is None else environ)
    if AUTH_MODE in env or JOB_DRIVER_SETTING in env:
        return {}
    mode = cluster_auth_mode(dashboard) if dashboard else None
    if mode is None and gcs:
        mode = gcs_auth_mode(gcs)
    if mode == "token" and not token_available(env):
        raise _no_token(dashboard or gcs or "")
    if mode is not None:
        return {AUTH_MODE: mode}
    return {AUTH_MODE: "token"} if token_available(env) else {}


def dashboard_auth_headers(dashboard: str,
                           environ: dict[str, str] | None = None) -> dict[str, str]:
    """The header a call to the job API of the cluster at ``dashboard`` carries: the token
    where the dashboard says it requires one; none where it says tokens are off or cannot
    say (a listener that is not a Ray dashboard, another user's on a port a cluster left
    free, must never be handed the token that joins this user's clusters). Raises
    ConfigurationError where the cluster requires a token this machine lacks."""
    # Asked twice: one answer lost (a dashboard busy past the probe's deadline) would send
    # the job API no token, and the cluster would refuse the call.
    mode = cluster_auth_mode(dashboard) or cluster_auth_mode(dashboard)
    if mode != "token":
        return {}
    token = read_token(environ)
    if token is None:
        raise _no_token(dashboard)
    return {"authorization": f"Bearer {token}"}


def _no_token(cluster: str) -> ConfigurationError:
    return ConfigurationError(
        f"the Ray cluster at {cluster} requires Ray's token authentication and this machine "
        "has no token: copy ~/.ray/auth_token from the cluster's head to this machine (or set "
        "RAY_AUTH_TOKEN)", detail={"cluster": cluster})


def apply_ray_auth_env(*, dashboard: str | None = None, gcs: str | None = None) -> None:
    """Set this process's ``RAY_AUTH_MODE`` for the cluster at ``dashboard`` or ``gcs``
    (see ``ray_auth_env``). A process already connected to a cluster keeps its mode: it is
    that cluster's, and switching it would break its own calls.

    Ray caches its configuration when it is imported; if it already is, the cache is
    refreshed the way Ray itself does when it enables token mode.
    """
    global _mode_set_here
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return
    environ = dict(os.environ)
    if _mode_set_here is not None and environ.get(AUTH_MODE) == _mode_set_here:
        del environ[AUTH_MODE]  # set here for another cluster: decide again
    needed = ray_auth_env(environ, dashboard=dashboard, gcs=gcs)
    if not needed and AUTH_MODE in environ:
        return  # the user's own mode, or a job driver's inherited one
    mode = needed.get(AUTH_MODE)
    if mode == os.environ.get(AUTH_MODE):
        return
    if mode is None:
        del os.environ[AUTH_MODE]
    else:
        os.environ[AUTH_MODE] = mode
    _mode_set_here = mode
    # Looked up again: the probe of the cluster's mode imports Ray when it was not yet,
    # under no mode, and Ray then joined a cluster with tokens without one (refused).
    if sys.modules.get("ray") is not None:
        from ray._raylet import Config

        Config.initialize("")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block (native code writes there)."""
    sys.stderr.flush()
    kept = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(kept, 2)
        os.close(kept)
