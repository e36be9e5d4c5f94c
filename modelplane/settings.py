"""The one settings object for the whole project, read from the environment.

| variable                        | default                                  | meaning |
|---------------------------------|------------------------------------------|---------|
| ``MODELPLANE_HOME``             | ``./.modelplane``                        | state folder: database, artifacts, admin token, logs |
| ``MODELPLANE_DB_URL``           | ``sqlite:///$MODELPLANE_HOME/modelplane.db`` | any SQLAlchemy URL (PostgreSQL on clusters) |
| ``MODELPLANE_ARTIFACT_URI``     | ``$MODELPLANE_HOME/artifacts``           | local folder or fsspec URI (``s3://bucket/prefix``) |
| ``MODELPLANE_HTTP_PORT``        | ``8000``                                 | port Serve listens on (inference and ``/api``) |
| ``MODELPLANE_HTTP_HOST``        | ``127.0.0.1``                            | address Serve binds (and the gRPC service) |
| ``MODELPLANE_GRPC_PORT``        | ``$MODELPLANE_HTTP_PORT + 1`` (``8001``) | port of the gRPC inference service (``tritonclient.grpc``); ``0`` turns it off |
| ``MODELPLANE_URL``              | ``http://127.0.0.1:$MODELPLANE_HTTP_PORT`` | the control plane's address, for clients |
| ``MODELPLANE_TOKEN``            | unset (falls back to ``$MODELPLANE_HOME/admin.token``) | bearer token clients send; in a model replica, the replicas' read-only token |
| ``MODELPLANE_CACHE_DIR``        | ``modelplane-cache-UID`` in the temp dir | node-local folder where model replicas keep downloaded artifacts |
| ``MODELPLANE_MAX_ARTIFACT_MB``  | ``2048``                                 | largest artifact accepted, in MiB |
| ``MODELPLANE_TRAINER_UPLOAD_MB`` | ``8 x $MODELPLANE_MAX_ARTIFACT_MB`` (``16384``) | what one training job's token may upload in all, in MiB (409 past it) |
| ``MODELPLANE_READS_REQUIRE_TOKEN`` | ``false``                             | whether GET calls also need a token |
| ``MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS`` | ``false``                      | accept ``/v2/models/{e}/feedback`` without a label source's token |
| ``MODELPLANE_MAX_REQUEST_MB``   | ``64``                                   | largest inference request body a replica reads, in MiB (413 above) |
| ``MODELPLANE_EVALUATE_MEMORY_MB`` | ``4096``                             | memory a pipeline's evaluate stage may use to score a model, in a process of its own |
| ``MODELPLANE_DATA_MAX_MB``      | ``2048``                                 | largest data file a pipeline reads (into the control plane's memory) |
| ``MODELPLANE_CONTROL_PLANE_REPLICAS`` | ``1``                              | control-plane replicas; more than one needs a PostgreSQL store and an artifact store every node reaches |
| ``MODELPLANE_DATA_PRIVATE_HOSTS`` | unset (public addresses only)        | private hosts or CIDRs pipelines may read http(s) data from |
| ``MODELPLANE_PROXY_LOCATION``   | ``EveryNode``                            | where Serve's HTTP ingress runs: ``EveryNode`` (put a load balancer over the nodes) or ``HeadOnly`` |

Each variable is a field of :class:`Settings` (``MODELPLANE_`` plus the field's name);
pydantic-settings reads and converts them. An empty variable counts as unset. Values are
validated when read: a bad one raises :class:`ConfigurationError` naming the variable, the
value and what is expected, before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse, urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from modelplane.errors import ConfigurationError

PREFIX = "MODELPLANE_"
MIB = 1024 * 1024
REPLICA_TOKEN_FILE = "replica.token"
_BOOLEAN = "one of true/false, 1/0, yes/no, on/off"

# The mapping Settings.from_env reads instead of os.environ, for the construction under way.
_given_environ: ContextVar[Mapping[str, str] | None] = ContextVar("_given_environ", default=None)


def _expects(phrase: str) -> dict[str, Any]:
    """Field metadata: what a valid value looks like, for the error that names the variable."""
    return {"expected": phrase}


def _default_cache_dir() -> Path:
    # Resolved in the process that reads the settings: each node's own temp folder, and
    # each user's own folder in it (what is unpacked there is run as code).
    return Path(tempfile.gettempdir()) / f"modelplane-cache-{os.getuid()}"


class Settings(BaseSettings):
    """Resolved configuration; build it with :meth:`from_env`."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True,
                                      extra="ignore")

    # Fields that default to something derived from another come after it: a validator
    # sees only the fields declared before its own.
    home: Path = Field(Path(".modelplane"), validate_default=True)
    http_port: int = Field(8000, gt=0, le=65535, json_schema_extra=_expects(
        "a TCP port (a positive integer of at most 65535)"))
    http_host: str = "127.0.0.1"
    # None means the HTTP port plus one: Triton's 8000 and 8001 by default, and a platform
    # started on a free HTTP port (tests, benchmarks) gets its own gRPC port too.
    grpc_port: int | None = Field(None, ge=0, le=65535, validate_default=True,
                                  json_schema_extra=_expects(
                                      "a TCP port (at most 65535), or 0 to turn gRPC off"))
    db_url: str = Field("", validate_default=True, json_schema_extra=_expects(
        "an SQLAlchemy URL such as sqlite:///path/modelplane.db or "
        "postgresql+psycopg://user:pass@host/db"))
    artifact_uri: str = Field("", validate_default=True)
    url: str = Field("", validate_default=True, json_schema_extra=_expects(
        "an http:// or https:// URL such as http://127.0.0.1:8000"))
    token: str | None = Field(None, repr=False)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    max_artifact_mb: int = Field(2048, gt=0, json_schema_extra=_expects("a positive integer"))
    # A job uploads its model three or four times over (bundle, ONNX, served package) and
    # retries some: a leaked job token filled the store's disk without end.
    trainer_upload_mb: int | None = Field(None, gt=0, validate_default=True,
                                          json_schema_extra=_expects("a positive integer"))
    reads_require_token: bool = Field(False, json_schema_extra=_expects(_BOOLEAN))
    # Labels steer rollouts (the accuracy gate): only label sources post them unless opened.
    feedback_allows_anonymous: bool = Field(False, json_schema_extra=_expects(_BOOLEAN))
    max_request_mb: int = Field(64, gt=0, le=4096, json_schema_extra=_expects(
        "a positive integer of at most 4096"))
    # What a pipeline's evaluate stage may use to score a registrant's graph, in a process
    # of its own (control_plane.pipelines.scoring).
    evaluate_memory_mb: int = Field(4096, ge=256, le=1024 * 1024, json_schema_extra=_expects(
        "a whole number of MiB from 256 to 1048576"))
    # The largest data file a pipeline reads, into the control plane's memory.
    data_max_mb: int = Field(2048, ge=1, le=1024 * 1024, json_schema_extra=_expects(
        "a whole number of MiB from 1 to 1048576"))
    access_log: bool = Field(False, json_schema_extra=_expects(_BOOLEAN))
    # Endpoint replicas answer on their own lean HTTP server (serving.lean_ingress) where
    # Serve's direct ingress runs; Serve keeps placement, health, drain and autoscaling.
    lean_ingress: bool = Field(True, json_schema_extra=_expects(_BOOLEAN))
    # Who may register a version that runs code (a python model, steps from its archive,
    # a torch program): that code runs as the platform's OS user (docs/models.md).
    model_code: Literal["deployer", "admin", "off"] = Field("deployer", json_schema_extra=_expects(
        "deployer, admin or off"))
    # All serve the API; one at a time runs the control loops (control_plane.leadership).
    control_plane_replicas: int = Field(1, ge=1, le=16, json_schema_extra=_expects(
        "a whole number from 1 to 16; more than 1 only with a PostgreSQL MODELPLANE_DB_URL"))

    # Hosts on private networks (names, addresses or CIDRs, comma-separated) a pipeline may
    # read data from over http(s): by default only public addresses, since the control
    # plane reads with its own place on the network for whoever holds a deployer token.
    data_private_hosts: str = Field("", json_schema_extra=_expects(
        "host names, IP addresses or CIDR blocks, comma-separated (10.0.0.0/8,data.internal)"))

    # Folders (absolute, comma-separated) a pipeline may read local data files from: the
    # control plane reads them with its own rights for whoever holds a deployer token, and
    # its report names a file's columns and values. Unset: <home>/data.
    data_roots: str = Field("", json_schema_extra=_expects(
        "absolute folders, comma-separated (/srv/datasets,/mnt/shared/data)"))

    # Serve's proxy_location, set when Serve starts (a running Serve keeps its own).
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", json_schema_extra=_expects("EveryNode or HeadOnly"))

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   env_settings: Any, dotenv_settings: Any,
                                   file_secret_settings: Any) -> tuple[Any, ...]:
        # The environment alone (or the mapping from_env was given): no .env file, no secrets dir.
        return init_settings, _Environment(settings_cls)

    @field_validator("reads_require_token", "feedback_allows_anonymous", "access_log",
                     "lean_ingress", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        # pydantic reads " true " as no boolean; a stray space in a shell export is forgiven.
        return value.strip() if isinstance(value, str) else value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().absolute()

    @field_validator("grpc_port")
    @classmethod
    def _default_grpc_port(cls, port: int | None, info: ValidationInfo) -> int | None:
        if port is None and "http_port" in info.data:
            return info.data["http_port"] + 1 if info.data["http_port"] < 65535 else 0
        if port and port == info.data.get("http_port"):
            raise ValueError(f"MODELPLANE_GRPC_PORT {port} is MODELPLANE_HTTP_PORT too: the "
                             "gRPC service needs a port of its own (or 0 for none)")
        return port

    @field_validator("trainer_upload_mb")
    @classmethod
    def _default_trainer_upload(cls, megabytes: int | None, info: ValidationInfo) -> int | None:
        if megabytes is None and "max_artifact_mb" in info.data:
            return 8 * info.data["max_artifact_mb"]
        return megabytes

    @field_validator("db_url")
    @classmethod
    def _check_db_url(cls, url: str, info: ValidationInfo) -> str:
        if not url and "home" in info.data:
            return f"sqlite:///{info.data['home'] / 'modelplane.db'}"
        if "://" not in url or not url.split(":", 1)[0]:
            raise ValueError("not an SQLAlchemy URL")
        return url

    @field_validator("control_plane_replicas")
    @classmethod
    def _replicas_need_a_shared_store(cls, replicas: int, info: ValidationInfo) -> int:
        # SQLite is one file on one node: replicas elsewhere would each open their own.
        if replicas > 1 and str(info.data.get("db_url", "")).startswith("sqlite"):
            raise ValueError("more than one control plane needs a store they all reach: set "
                             "MODELPLANE_DB_URL to a PostgreSQL URL")
        return replicas

    @field_validator("artifact_uri")
    @classmethod
    def _default_artifacts(cls, uri: str, info: ValidationInfo) -> str:
        if not uri and "home" in info.data:
            return str(info.data["home"] / "artifacts")
        return uri

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str, info: ValidationInfo) -> str:
        if not url:
            if "http_port" not in info.data:
                return url  # the port's own error is the one reported
            url = f"http://127.0.0.1:{info.data['http_port']}"
        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError("not an http(s) URL")
        return url.rstrip("/")

    @field_validator("data_private_hosts")
    @classmethod
    def _check_private_hosts(cls, hosts: str) -> str:
        private_hosts(hosts)
        return hosts

    @field_validator("data_roots")
    @classmethod
    def _absolute_roots(cls, roots: str) -> str:
        for root in (part.strip() for part in roots.split(",")):
            if root and not Path(root).expanduser().is_absolute():
                raise ValueError(f"{root!r} is not an absolute path")
        return roots

    @property
    def local_data_roots(self) -> tuple[Path, ...]:
        """``MODELPLANE_DATA_ROOTS`` read, links resolved; ``<home>/data`` when unset."""
        listed = [Path(part.strip()).expanduser() for part in self.data_roots.split(",")
                  if part.strip()]
        return tuple(Path(os.path.realpath(root)) for root in listed or [self.home / "data"])

    @property
    def private_data_hosts(self) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
        """``MODELPLANE_DATA_PRIVATE_HOSTS`` read: host names, and address blocks."""
        return private_hosts(self.data_private_hosts)

    @property
    def max_artifact_bytes(self) -> int:
        """``MODELPLANE_MAX_ARTIFACT_MB`` in bytes."""
        return self.max_artifact_mb * MIB

    @property
    def trainer_upload_bytes(self) -> int:
        """``MODELPLANE_TRAINER_UPLOAD_MB`` in bytes."""
        return (self.trainer_upload_mb or 8 * self.max_artifact_mb) * MIB

    @property
    def max_request_bytes(self) -> int:
        """``MODELPLANE_MAX_REQUEST_MB`` in bytes."""
        return self.max_request_mb * MIB

    @property
    def admin_token_path(self) -> Path:
        """Where the control plane writes the admin token on first start (mode 0600)."""
        return self.home / "admin.token"

    @property
    def replica_token_path(self) -> Path:
        """Where the control plane keeps the model replicas' read-only token (mode 0600)."""
        return self.home / REPLICA_TOKEN_FILE

    def resolved_token(self) -> str | None:
        """The token a client should send: ``MODELPLANE_TOKEN``, else the local admin token."""
        if self.token:
            return self.token
        try:
            return self.admin_token_path.read_text().strip() or None
        except OSError:
            return None

    def replica_token_kept(self) -> bool:
        """Whether the control plane keeps a token for model replicas (never its value)."""
        try:
            return bool(self.replica_token_path.read_text().strip())
        except OSError:
            return False

    def described(self) -> dict[str, str]:
        """Every setting as text for people (``modelplane config``), secrets hidden: the
        tokens only as set or unset, the store's password as ``***``."""
        values = {k: str(v) for k, v in self.model_dump(exclude={"token"}).items()}
        values["db_url"] = url_without_password(self.db_url)
        values["token"] = "set" if self.token else "unset"
        values["replica_token"] = "set" if self.replica_token_kept() else "unset"
        return values

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and the CLI's ``--url`` use this)."""
        return self.model_copy(update=changes)

    def to_env(self) -> dict[str, str]:
        """These settings as ``MODELPLANE_*`` variables, to hand to another process or replica."""
        env = {}
        for field, value in self.model_dump().items():
            if value is None:  # an unset token stays unset
                continue
            env[variable(field)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``MODELPLANE_*`` variable of ``environ`` (default: os.environ)."""
        given = _given_environ.set(environ)
        try:
            return cls()
        except ValidationError as error:
            raise _invalid(error) from None
        finally:
            _given_environ.reset(given)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, reading the mapping ``from_env`` was given."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _given_environ.get()
        if given is None:
            return super()._load_env_vars()
        return {(name if self.case_sensitive else name.lower()): value
                for name, value in given.items() if not (self.env_ignore_empty and value == "")}


def variable(field: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    return PREFIX + field.upper()


def url_without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _invalid(error: ValidationError) -> ConfigurationError:
    # The first failure, in field order: the one the reader fixes first.
    first = error.errors()[0]
    field = str(first["loc"][0])
    name, value = variable(field), str(first["input"])
    extra = Settings.model_fields[field].json_schema_extra
    expected = extra["expected"] if isinstance(extra, dict) else first["msg"]
    return ConfigurationError(
        f"{name}={value!r} is invalid: expected {expected}. Fix or unset {name}.",
        detail={"variable": name, "value": value, "expected": expected},
    )


_cached: Settings | None = None


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def private_hosts(hosts: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """Host names and address blocks from a comma-separated list; ValueError for an entry
    that is neither."""
    names, blocks = set(), []
    for entry in filter(None, (part.strip() for part in hosts.split(","))):
        try:
            blocks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", entry):
                raise ValueError(f"{entry!r} is neither a host name, an address nor a CIDR "
                                 "block") from None
            names.add(entry.lower().rstrip("."))
    return frozenset(names), tuple(blocks)


def make_private_home(home: Path) -> Path:
    """``home``, made if missing, readable by its owner alone: it holds the store (with
    receivers' webhook URLs, which often carry a secret), the artifacts and token files.
    A home of this user's that others may read is closed to them; another user's is left
    as it is."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = home.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        home.chmod(info.st_mode & 0o700)
    return home


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
