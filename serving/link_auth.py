"""The cluster's link secret: what the routes between modelplane's own processes require.

The isolated placement's link (``serving.version_link``) and the gRPC ingress's calls
(``serving.grpc_link``) ride routes of the HTTP ingress, which anyone who reaches the
ingress can reach. A request on them must carry the secret in :data:`LINK_HEADER`; it is a
random value kept in Ray's internal key-value store, made by the first process that asks,
so only the cluster's own processes (which may read that store) know it.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Mapping

LINK_HEADER = "x-modelplane-link"
_SECRET_KEY = b"modelplane-link-secret"
LINK_SECRET_TIMEOUT_S = 10.0


@functools.cache  # one read per process: the secret lives as long as the cluster
def link_secret() -> str:
    """The cluster's link secret, made by the first process that asks (a put that never
    overwrites, so every process reads the one that won). Blocks on the GCS the first time:
    call it off the event loop."""
    from ray.experimental import internal_kv

    kept = internal_kv._internal_kv_get(_SECRET_KEY)
    if kept is None:
        internal_kv._internal_kv_put(_SECRET_KEY, secrets.token_hex(32).encode(), overwrite=False)
        kept = internal_kv._internal_kv_get(_SECRET_KEY)
    return bytes(kept).decode()


async def link_secret_bounded() -> str:
    """:func:`link_secret` off the event loop, waited for :data:`LINK_SECRET_TIMEOUT_S` at
    most: TimeoutError where the GCS did not answer (each caller then goes by Serve's
    handles), where a replica's start waited on it for as long as it did not."""
    from serving.detached import bounded_call

    return await bounded_call(link_secret, LINK_SECRET_TIMEOUT_S)  # type: ignore[no-any-return]


def carries_secret(headers: Mapping[str, str], secret: str | None) -> bool:
    """Whether a request's headers carry ``secret`` (compared in constant time)."""
    return secret is not None and hmac.compare_digest(
        headers.get(LINK_HEADER, "").encode(), secret.encode())
