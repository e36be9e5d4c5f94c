"""The one settings object for the whole project, read from the environment.

| variable                        | default                                  | meaning |
|---------------------------------|------------------------------------------|---------|
| ``MODELPLANE_HOME``             | ``./.modelplane``                        | state folder: database, artifacts, admin token, logs |
| ``MODELPLANE_DB_URL``           | ``sqlite:///$MODELPLANE_HOME/modelplane.db`` | any SQLAlchemy URL (PostgreSQL on clusters) |
| ``MODELPLANE_ARTIFACT_URI``     | ``$MODELPLANE_HOME/artifacts``           | local folder or fsspec URI (``s3://bucket/prefix``) |
| ``MODELPLANE_HTTP_PORT``        | ``8000``                                 | port Serve listens on (inference and ``/api``) |
| ``MODELPLANE_HTTP_HOST``        | ``127.0.0.1``                            | address Serve binds |
| ``MODELPLANE_URL``              | ``http://127.0.0.1:$MODELPLANE_HTTP_PORT`` | the control plane's address, for clients |
| ``MODELPLANE_TOKEN``            | unset (falls back to ``$MODELPLANE_HOME/admin.token``) | bearer token clients send |
| ``MODELPLANE_MAX_ARTIFACT_MB``  | ``2048``                                 | largest artifact accepted, in MiB |
| ``MODELPLANE_READS_REQUIRE_TOKEN`` | ``false``                             | whether GET calls also need a token |
| ``MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS`` | ``false``                      | accept ``/v2/models/{e}/feedback`` without a label source's token |
| ``MODELPLANE_MAX_REQUEST_MB``   | ``64``                                   | largest inference request body a replica reads, in MiB (413 above) |

Values are validated when read: a bad one raises :class:`ConfigurationError` naming the
variable, the value and what is expected, before anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from modelplane.errors import ConfigurationError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; build it with :meth:`from_env`."""

    home: Path
    db_url: str
    artifact_uri: str
    http_host: str
    http_port: int
    url: str
    token: str | None = field(default=None, repr=False)
    max_artifact_bytes: int = 2048 * 1024 * 1024
    reads_require_token: bool = False
    # Labels steer rollouts (the accuracy gate): only label sources post them unless opened.
    feedback_allows_anonymous: bool = False
    max_request_bytes: int = 64 * 1024 * 1024

    @property
    def admin_token_path(self) -> Path:
        """Where the control plane writes the admin token on first start (mode 0600)."""
        return self.home / "admin.token"

    def resolved_token(self) -> str | None:
        """The token a client should send: ``MODELPLANE_TOKEN``, else the local admin token."""
        if self.token:
            return self.token
        try:
            return self.admin_token_path.read_text().strip() or None
        except OSError:
            return None

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and the CLI's ``--url`` use this)."""
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """These settings as ``MODELPLANE_*`` variables, to hand to another process or replica."""
        env = {
            "MODELPLANE_HOME": str(self.home),
            "MODELPLANE_DB_URL": self.db_url,
            "MODELPLANE_ARTIFACT_URI": self.artifact_uri,
            "MODELPLANE_HTTP_HOST": self.http_host,
            "MODELPLANE_HTTP_PORT": str(self.http_port),
            "MODELPLANE_URL": self.url,
            "MODELPLANE_MAX_ARTIFACT_MB": str(self.max_artifact_bytes // (1024 * 1024)),
            "MODELPLANE_READS_REQUIRE_TOKEN": "true" if self.reads_require_token else "false",
            "MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS": "true" if self.feedback_allows_anonymous else "false",
            "MODELPLANE_MAX_REQUEST_MB": str(self.max_request_bytes // (1024 * 1024)),
        }
        if self.token:
            env["MODELPLANE_TOKEN"] = self.token
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``MODELPLANE_*`` variable."""
        env = os.environ if environ is None else environ
        home = Path(env.get("MODELPLANE_HOME") or ".modelplane").expanduser().absolute()
        port = _port(env, "MODELPLANE_HTTP_PORT", 8000)
        host = env.get("MODELPLANE_HTTP_HOST") or "127.0.0.1"
        db_url = env.get("MODELPLANE_DB_URL") or f"sqlite:///{home / 'modelplane.db'}"
        _check_db_url(db_url)
        url = (env.get("MODELPLANE_URL") or f"http://127.0.0.1:{port}").rstrip("/")
        _check_http_url(url)
        return cls(
            home=home,
            db_url=db_url,
            artifact_uri=env.get("MODELPLANE_ARTIFACT_URI") or str(home / "artifacts"),
            http_host=host,
            http_port=port,
            url=url,
            token=env.get("MODELPLANE_TOKEN") or None,
            max_artifact_bytes=_positive_int(env, "MODELPLANE_MAX_ARTIFACT_MB", 2048) * 1024 * 1024,
            reads_require_token=_bool(env, "MODELPLANE_READS_REQUIRE_TOKEN", False),
            feedback_allows_anonymous=_bool(env, "MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS", False),
            max_request_bytes=_bounded_int(env, "MODELPLANE_MAX_REQUEST_MB", 64, 4096) * 1024 * 1024,
        )


def _invalid(name: str, value: str, expected: str) -> ConfigurationError:
    return ConfigurationError(
        f"{name}={value!r} is invalid: expected {expected}. Fix or unset {name}.",
        detail={"variable": name, "value": value, "expected": expected},
    )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, raw, "a positive integer") from None
    if value <= 0:
        raise _invalid(name, raw, "a positive integer")
    return value


def _bounded_int(env: Mapping[str, str], name: str, default: int, most: int) -> int:
    value = _positive_int(env, name, default)
    if value > most:
        raise _invalid(name, env[name], f"a positive integer of at most {most}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _positive_int(env, name, default)
    if value > 65535:
        raise _invalid(name, env[name], "a TCP port between 1 and 65535")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _invalid(name, raw, "one of true/false, 1/0, yes/no, on/off")


def _check_db_url(url: str) -> None:
    scheme = url.split(":", 1)[0]
    if "://" not in url or not scheme:
        raise _invalid(
            "MODELPLANE_DB_URL", url,
            "an SQLAlchemy URL such as sqlite:///path/modelplane.db or "
            "postgresql+psycopg://user:pass@host/db",
        )


def _check_http_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise _invalid("MODELPLANE_URL", url, "an http:// or https:// URL such as http://127.0.0.1:8000")


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached


def reset_settings_cache() -> None:
    """Forget the cached settings so the next :func:`get_settings` re-reads the environment."""
    global _cached
    _cached = None
