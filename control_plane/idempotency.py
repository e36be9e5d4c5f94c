"""Answers kept for writes asked again: the ``Idempotency-Key`` header.

A write whose answer never reached its caller (a proxy reloaded under it, a connection
dropped) cannot simply be sent again: it may have acted. Sent with a key, it can. The
first call with a key reserves it; its answer, once given, is kept for
:data:`REPLAY_WINDOW_S`, and a call that comes again with the key gets that answer instead
of acting a second time. A call that comes while the first is still being answered is told
so (:class:`RequestInProgressError`, with when to ask again). A key is its caller's own
(keys are kept per token) and names one request: sent with another method, path or body it
is refused (:class:`IdempotencyKeyReusedError`).

An answer of 5xx is not kept: the call failed, the reservation is released, and asking
again acts again. The answer is kept in a transaction of its own, after the route's: a
control plane that dies between the two leaves the key held until ``held_until``, and a
call with it after that acts again (the registry keeps a registration's own key in the
version's row, in the same transaction, for the one write that must be exact).

This module holds the terms both sides speak. The keys and answers are kept by
:class:`control_plane.idempotency_store.IdempotencyStore`; the REST side is
:class:`control_plane.api.idempotency_guard.IdempotencyGuard`; the Python client sends a
key with every write and asks again after an answer it lost.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

KEY_HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
# What GET /api/health says where writes with a key are answered once.
HEALTH_FLAG = "idempotency_keys"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:-]{8,64}")


def new_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Reply:
    """An answer as it was given: status, headers (``[name, value]``) and body."""

    status: int
    headers: list[list[str]]
    body: bytes


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What a key is bound to: the request's method, path, query and body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(body)
    return digest.hexdigest()
