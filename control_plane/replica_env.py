"""The environment model replicas get from the control plane: only what they need.

A replica needs no store (it is handed its artifact URL, digest and manifest) and no
token of the operator's: what a replica's runtime environment holds is visible to anyone
who can read the Serve application's config on Ray's dashboard. So replicas get nothing,
except, when reads require a token (``MODELPLANE_READS_REQUIRE_TOKEN``), a read-only
token to download their artifacts with.

That token is a ``reader`` token the control plane mints for itself and keeps in
``$MODELPLANE_HOME/replica.token`` (mode 0600), so it is the same after a restart and
replicas are not replaced for a new one; a revoked or lost one is replaced.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping

from control_plane.auth import Principal, TokenService, write_secret_file
from control_plane.errors import AuthenticationError
from control_plane.schemas import Role, TokenCreate
from modelplane.settings import Settings
from serving.link_client import ingress_address

log = logging.getLogger(__name__)

REPLICA_TOKEN_NAME = "serving-replicas"
# The artifact store's credentials (S3 and S3-protocol stores, read by s3fs/botocore).
ARTIFACT_STORE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Where and how to reach it: given to the control plane with the credentials.
ARTIFACT_STORE_VARIABLES = (*ARTIFACT_STORE_SECRETS, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                            "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                            "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
# What no Ray worker may inherit: the store's URL (with its password), the artifact store's
# credentials and a person's token. The control plane gets the first two explicitly.
SECRET_VARIABLES = ("MODELPLANE_DB_URL", "MODELPLANE_TOKEN", *ARTIFACT_STORE_SECRETS)
# The control plane acting for itself when it mints the replicas' token.
_SELF = Principal(name="control-plane", role=Role.ADMIN)


def replica_environment(settings: Settings, tokens: TokenService) -> dict[str, str]:
    """Variables for every model replica's runtime environment."""
    if not settings.reads_require_token:
        return {}
    return {"MODELPLANE_TOKEN": replica_read_token(settings, tokens)}


def replica_read_token(settings: Settings, tokens: TokenService) -> str:
    """The replicas' read-only token: the kept one while it still works, else a new one."""
    path = settings.replica_token_path
    try:
        kept = path.read_text().strip()
    except OSError:
        kept = ""
    if kept:
        try:
            if tokens.authenticate(kept).role is Role.READER:
                return kept
        except AuthenticationError:
            pass  # revoked or expired: mint another below
    names = {token.name for token in tokens.list()}
    name = REPLICA_TOKEN_NAME
    while name in names:
        name = f"{REPLICA_TOKEN_NAME}-{secrets.token_hex(3)}"
    created = tokens.create(TokenCreate(name=name, role=Role.READER), _SELF)
    write_secret_file(path, created.token)
    log.info("minted the replicas' read-only token %r (kept in %s)", name, path)
    return created.token


def link_address(settings: Settings, environ: Mapping[str, str] = os.environ,
                 head_address: Callable[[], str] | None = None) -> str | None:
    """Where isolated routers reach their versions' own listeners (``serving.version_link``):
    the HTTP ingress, where it is HAProxy (Serve's direct ingress, which the links ride) and
    the lean ingress is on; None otherwise (the routers use Serve's handles). An ingress
    listening on every address is reached on each router's own node, or, where only the
    head runs one (``proxy_location`` HeadOnly), at the head's address (``head_address``:
    this node's, as the control plane runs on the head)."""
    if not settings.lean_ingress:
        return None
    host = settings.http_host
    if host in ("", "0.0.0.0", "::") and settings.proxy_location == "HeadOnly":
        host = (head_address or _this_node_address)()
    return ingress_address(host, settings.http_port, environ)


def _this_node_address() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


def artifact_store_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that say where the artifact store is and how to sign in
    to it (``AWS_*``), for the control plane's runtime environment only."""
    return {name: environ[name] for name in ARTIFACT_STORE_VARIABLES if environ.get(name)}


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less :data:`SECRET_VARIABLES`, for a Ray head every worker inherits from."""
    return {name: value for name, value in environ.items() if name not in SECRET_VARIABLES}
