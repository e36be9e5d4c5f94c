"""Who may post feedback: the caller's bearer token, checked with the control plane.

Labels steer rollouts (the accuracy gate), so only label sources may send them: tokens
whose role is ``labeler`` or higher. Serving never imports the control plane, so a replica
asks it over HTTP: ``GET {control plane}/api/whoami`` with the caller's token answers the
token's name and role (and, for a labeler token limited to one endpoint, that endpoint:
its labels are refused on every other), or 401 for a token that is unknown, revoked or
expired. Answers
(refusals too) are cached by the token's sha256 for a short time, so a label source posting
often costs one check per TTL and a revoked token stops working within it. When the
control plane cannot be reached the call is refused with 503: failing open would let
anyone post labels whenever the control plane restarts.

Feedback is open to the network, and every token never seen costs a call to the control
plane, so anyone could make a replica hammer it with made-up tokens. Such checks are
bounded per replica (:data:`MAX_UNKNOWN_CHECKS` in flight; past that a 503 with
Retry-After), callers with one token share one check, and refusals are cached apart from
the tokens that were accepted, so neither a flood of made-up tokens nor its refusals can
crowd out a label source: a token accepted before is checked again without waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from serving.errors import (
    AuthorityUnavailableError,
    ForbiddenError,
    OverloadedError,
    UnauthenticatedError,
)

# The control plane's roles from ``labeler`` up (reader < labeler < deployer < approver < admin).
LABEL_SOURCE_ROLES = frozenset({"labeler", "deployer", "approver", "admin"})
CACHE_TTL_S = 10.0
MAX_CACHED_TOKENS = 1024  # accepted tokens kept; as many refusals are kept apart
MAX_UNKNOWN_CHECKS = 8  # checks in flight of tokens this replica never accepted
UNKNOWN_RETRY_AFTER_S = 1
CHECK_TIMEOUT_S = 3.0
MAX_TOKEN_CHARS = 512
ANONYMOUS_SETTING = "MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS"
_HOW = (f"send `Authorization: Bearer <token>` of a label source (role labeler or higher: "
        f"`modelplane token create NAME --role labeler`); an operator can open feedback to "
        f"anyone with {ANONYMOUS_SETTING}=true")


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the control plane said about one token: its role, or why it refused it."""

    name: str = ""
    role: str = ""
    endpoint: str | None = None  # the one endpoint a labeler token posts to (None: any)
    refusal: str = ""


class FeedbackAuthorizer:
    """Checks that a feedback call comes from a label source; see the module docstring."""

    def __init__(self, authority_url: str | None, *, allows_anonymous: bool = False,
                 ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic,
                 transport: Any = None) -> None:
        self.authority_url = authority_url.rstrip("/") if authority_url else None
        self.allows_anonymous = allows_anonymous
        self.ttl_s = ttl_s
        self._clock = clock
        self._transport = transport  # tests hand an httpx transport; None is the network
        # By the token's sha256: (valid until, answer); accepted and refused apart.
        self._accepted: OrderedDict[str, tuple[float, _Answer]] = OrderedDict()
        self._refused: OrderedDict[str, tuple[float, _Answer]] = OrderedDict()
        self._checking: dict[str, asyncio.Future[_Answer]] = {}
        self._unknown_checks = 0
        self.checks = 0  # calls made to the control plane (the cache's effect is visible)

    async def check(self, headers: Mapping[str, str], endpoint: str) -> str:
        """The name of the caller's token, a label source's for ``endpoint`` ("anonymous"
        where the operator allows it); raises 401/403/503."""
        if self.allows_anonymous:  # the operator opened feedback: tokens are not checked
            return "anonymous"
        header = headers.get("authorization")
        if header is None:
            raise UnauthenticatedError(f"feedback needs a token: {_HOW}",
                                       detail={"field": "authorization"})
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        # Tokens are printable ASCII; another character is no token (and cannot be sent on).
        if scheme.lower() != "bearer" or not secret or len(secret) > MAX_TOKEN_CHARS or \
                not (secret.isascii() and secret.isprintable()):
            raise UnauthenticatedError(f"the Authorization header must be `Bearer <token>`: {_HOW}",
                                       detail={"field": "authorization"})
        answer = await self._answer(secret)
        if answer.refusal:
            raise UnauthenticatedError(f"the control plane refused the token: {answer.refusal}",
                                       detail={"field": "authorization"})
        if answer.role not in LABEL_SOURCE_ROLES:
            raise ForbiddenError(
                f"token {answer.name!r} has role {answer.role}; feedback needs labeler or higher "
                "(ask an admin: `modelplane token create NAME --role labeler`)",
                detail={"field": "authorization", "role": answer.role,
                        "required_role": "labeler"},
            )
        if answer.endpoint is not None and answer.endpoint != endpoint:
            raise ForbiddenError(
                f"token {answer.name!r} posts labels for endpoint {answer.endpoint!r} only, "
                f"not {endpoint!r}; use the label source's token for {endpoint!r}",
                detail={"field": "authorization", "endpoint": answer.endpoint})
        return answer.name

    async def _answer(self, secret: str) -> _Answer:
        key = hashlib.sha256(secret.encode()).hexdigest()
        now = self._clock()
        accepted, refused = self._accepted.get(key), self._refused.get(key)
        for cached in (accepted, refused):
            if cached is not None and cached[0] > now:
                return cached[1]
        checking = self._checking.get(key)
        if checking is not None:  # another caller with this token is asking already
            try:
                return await asyncio.shield(checking)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not checking.cancelled() or (task is not None and task.cancelling()):
                    raise  # this caller was cancelled
                return await self._answer(secret)  # only the asking caller was: ask again
        known = accepted is not None  # accepted before: never made to wait for a slot
        if not known and self._unknown_checks >= MAX_UNKNOWN_CHECKS:
            raise OverloadedError(
                f"{MAX_UNKNOWN_CHECKS} tokens this replica has not seen are being checked "
                f"already; retry in {UNKNOWN_RETRY_AFTER_S}s",
                detail={"field": "authorization", "retry_after_s": UNKNOWN_RETRY_AFTER_S})
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._checking[key] = future
        self._unknown_checks += not known
        try:
            answer = await self._ask(secret)
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved here: callers that shared it raise it themselves
            raise
        except BaseException:  # cancelled (its client went away), or the process stopping
            future.cancel()
            raise
        finally:
            self._unknown_checks -= not known
            del self._checking[key]
        future.set_result(answer)
        self._remember(key, answer)
        return answer

    def _remember(self, key: str, answer: _Answer) -> None:
        keep, drop = ((self._refused, self._accepted) if answer.refusal
                      else (self._accepted, self._refused))
        drop.pop(key, None)
        keep.pop(key, None)
        keep[key] = (self._clock() + self.ttl_s, answer)
        while len(keep) > MAX_CACHED_TOKENS:
            keep.popitem(last=False)

    async def _ask(self, secret: str) -> _Answer:
        import httpx

        if self.authority_url is None:
            raise AuthorityUnavailableError(
                "this endpoint was not given the control plane's address, so it cannot check "
                f"tokens; redeploy it from `modelplane up`, or set {ANONYMOUS_SETTING}=true",
                detail={"cause": "no control plane address"})
        url = f"{self.authority_url}/api/whoami"
        self.checks += 1
        try:
            async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S, transport=self._transport) as http:
                response = await http.get(url, headers={"authorization": f"Bearer {secret}"})
        except httpx.HTTPError as error:
            raise AuthorityUnavailableError(
                f"cannot check the token: the control plane at {self.authority_url} did not "
                f"answer ({type(error).__name__}); retry when it is back",
                detail={"cause": "control plane unreachable"}) from None
        if response.status_code in (401, 403):
            return _Answer(refusal=_message(response))
        if response.status_code != 200:
            raise AuthorityUnavailableError(
                f"cannot check the token: the control plane answered HTTP "
                f"{response.status_code}; retry shortly",
                detail={"cause": f"control plane answered {response.status_code}"})
        try:
            body = response.json()
            endpoint = body.get("endpoint")
            return _Answer(name=str(body["name"]), role=str(body["role"]),
                           endpoint=None if endpoint is None else str(endpoint))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuthorityUnavailableError(
                "cannot check the token: the control plane's answer was not understood",
                detail={"cause": "unreadable whoami answer"}) from None


def _message(response: Any) -> str:
    try:
        return str(response.json().get("error") or "not accepted")[:300]
    except ValueError:
        return "not accepted"
