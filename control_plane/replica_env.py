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
from collections.abc import Callable, Mapping

from control_plane.auth import TokenService
from control_plane.schemas import Role
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
# Who minted the replicas' token: the control plane, for itself.
_MINTED_BY = "control-plane"


def replica_environment(settings: Settings, tokens: TokenService) -> dict[str, str]:
    """Variables for every model replica's runtime environment."""
    if not settings.reads_require_token:
        return {}
    return {"MODELPLANE_TOKEN": replica_read_token(settings, tokens)}


def replica_read_token(settings: Settings, tokens: TokenService) -> str:
    """The replicas' read-only token: the kept one while it still works, else a new one."""
    secret, minted = tokens.kept_token(settings.replica_token_path, name=REPLICA_TOKEN_NAME,
                                       role=Role.READER, created_by=_MINTED_BY)
    if minted:
        log.info("minted the replicas' read-only token (kept in %s)", settings.replica_token_path)
    return secret


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
