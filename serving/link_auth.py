"""The cluster's link secret: what the routes between modelplane's own processes require.

The isolated placement's link (``serving.version_link``) and the gRPC ingress's calls
(``serving.grpc_link``) ride routes of the HTTP ingress, which anyone who reaches the
ingress can reach. A request on them must carry the secret in :data:`LINK_HEADER`; it is a
random value kept in Ray's internal key-value store, made by the first process that asks,
so only the cluster's own processes (which may read that store) know it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import secrets
import threading
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


_reading: concurrent.futures.Future[str] | None = None  # the read under way, or its answer
_reading_lock = threading.Lock()


async def link_secret_bounded() -> str:
    """:func:`link_secret` off the event loop, waited for :data:`LINK_SECRET_TIMEOUT_S` at
    most: TimeoutError where the GCS did not answer (each caller then goes by Serve's
    handles), where a replica's start waited on it for as long as it did not. One read at
    a time, in a thread of its own, whoever asks: a GCS that stays away costs one thread."""
    global _reading
    with _reading_lock:
        reading = _reading
        if reading is None or (reading.done() and (reading.cancelled()
                                                    or reading.exception() is not None)):
            reading = _reading = concurrent.futures.Future()
            reading.set_running_or_notify_cancel()  # nobody can cancel it for the others
            threading.Thread(target=_read_into, args=(reading,), name="gcs-link-secret",
                             daemon=True).start()
    waited = asyncio.wrap_future(reading)
    # A read that fails after its callers stopped waiting is not logged as never retrieved.
    waited.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.wait_for(asyncio.shield(waited), LINK_SECRET_TIMEOUT_S)


def _read_into(reading: concurrent.futures.Future[str]) -> None:
    try:
        reading.set_result(link_secret())
    except StopIteration as error:  # an asyncio future cannot hold one
        reading.set_exception(RuntimeError(f"the read raised {error!r}"))
    except BaseException as error:  # raised to whoever awaits it
        reading.set_exception(error)


def carries_secret(headers: Mapping[str, str], secret: str | None) -> bool:
    """Whether a request's headers carry ``secret`` (compared in constant time)."""
    return secret is not None and hmac.compare_digest(
        headers.get(LINK_HEADER, "").encode(), secret.encode())
