"""Who may call each REST route: one table, enforced on every request.

Every route of the control plane's API has exactly one entry in :data:`ROUTE_ACCESS`,
keyed ``"METHOD /path"`` as the OpenAPI document names it. :func:`enforce_access` runs
before each route (an app-wide dependency) and refuses a call the entry does not allow:
401 without a valid token where one is needed, 403 for a role below the entry's. A route
with no entry is refused for everyone (fail closed) and fails
tests/unit/control_plane/test_route_access_matrix.py, which calls every route the app
has anonymously, as each role and with a revoked token, and checks the answers against
this table.

Services still check roles themselves (defence in depth, and in-process callers); where a
service decides more finely than a route can (whose token may be revoked, which fields
need an admin), the entry says so in ``finer``.

To declare a new route, add ``"METHOD /path": RULE`` below, with one of the rules here or
a new :class:`Access`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from control_plane.auth import ANONYMOUS, TRAINING, Principal
from control_plane.errors import AuthenticationError, PermissionDeniedError
from control_plane.schemas import Role
from modelplane.settings import Settings


@dataclass(frozen=True)
class Opening:
    """An operator setting that lets anonymous callers in while it says so."""

    setting: str  # what the operator sets, as documented
    is_open: Callable[[Settings], bool]


@dataclass(frozen=True)
class Access:
    """Who may call a route.

    ``role`` None: anyone, token or not (a token is not even looked at). Otherwise a valid
    token of at least ``role`` (or one of the narrow roles in ``also``), and anonymous
    callers only while ``opened_by`` says so.
    """

    role: Role | None
    also: frozenset[Role] = frozenset()
    opened_by: Opening | None = None
    finer: str = ""  # what the service checks beyond this rule, for readers of the table
    label: str = field(default="", compare=False)

    def anonymous_allowed(self, settings: Settings) -> bool:
        return self.role is None or (self.opened_by is not None and self.opened_by.is_open(settings))

    def allows(self, role: Role) -> bool:
        """Whether a valid token of ``role`` passes this rule."""
        if self.role is None or role in self.also:
            return True
        try:
            Principal("probe", role).require(self.role)
        except PermissionDeniedError:
            return False
        return True


READS = Opening("MODELPLANE_READS_REQUIRE_TOKEN=false (the default)",
                lambda settings: not settings.reads_require_token)

PUBLIC = Access(None, label="anyone")
READ = Access(Role.READER, opened_by=READS, label="reader; anyone unless reads require a token")
TOKEN = Access(Role.READER, label="any valid token")
TRAIN = Access(Role.DEPLOYER, also=TRAINING, label="deployer, or a training job's token")
DEPLOY = Access(Role.DEPLOYER, label="deployer")
APPROVE = Access(Role.APPROVER, label="approver")
ADMIN = Access(Role.ADMIN, label="admin")

ROUTE_ACCESS: dict[str, Access] = {
    # The API's own description and health; Prometheus scrapes name every endpoint, model
    # and feature, so they are read as the rest (a scrape sends a reader's token where
    # reads require one).
    "GET /openapi.json": PUBLIC,
    "GET /health": PUBLIC,
    "GET /metrics": READ,
    # Admin: who am I, artifacts, the integrity check, tokens.
    "GET /whoami": READ,
    # Host names, node addresses and process ids: not for anonymous readers.
    "GET /leadership": TOKEN,
    "GET /cluster": TOKEN,
    "POST /artifacts": TRAIN,
    "GET /artifacts/{digest}": READ,
    "GET /integrity": ADMIN,
    "GET /tokens": ADMIN,
    "POST /tokens": Access(Role.DEPLOYER, label="deployer",
                           finer="admins mint any token; deployers only expiring trainer tokens"),
    "DELETE /tokens/{name}": Access(Role.READER, label="any valid token",
                                    finer="a token revokes itself; a deployer the trainer tokens "
                                          "it minted; an admin any"),
    # Registry.
    "GET /models": READ,
    "POST /models": DEPLOY,
    "GET /models/{name}": READ,
    "PATCH /models/{name}": Access(Role.DEPLOYER, label="deployer",
                                   finer="changing the approval policy needs an admin"),
    "GET /models/{name}/versions": READ,
    "POST /models/{name}/versions": TRAIN,
    "GET /models/{name}/versions/{version}": READ,
    "DELETE /models/{name}/versions/{version}": ADMIN,
    "GET /refs/{ref}": READ,
    "PUT /models/{name}/aliases/{alias}": TRAIN,
    "DELETE /models/{name}/aliases/{alias}": DEPLOY,
    "POST /models/{name}/versions/{version}/stage": DEPLOY,
    "POST /models/{name}/versions/{version}/reject": DEPLOY,
    "POST /models/{name}/versions/{version}/approvals": APPROVE,
    "GET /models/{name}/versions/{version}/approvals": READ,
    "GET /models/{name}/versions/{version}/lineage": READ,
    "POST /models/{name}/versions/{version}/benchmarks": DEPLOY,
    "GET /models/{name}/versions/{version}/benchmarks": READ,
    "GET /models/{name}/versions/{version}/benchmarks/{benchmark_id}": READ,
    # Tracking.
    "GET /experiments": READ,
    "POST /experiments": TRAIN,
    "GET /experiments/{name}/runs": READ,
    "POST /runs": TRAIN,
    "GET /runs/compare": READ,
    "GET /runs/{run_id}": READ,
    "PATCH /runs/{run_id}": TRAIN,
    "POST /runs/{run_id}/alive": TRAIN,
    "POST /runs/{run_id}/params": TRAIN,
    "POST /runs/{run_id}/metrics": TRAIN,
    "GET /runs/{run_id}/metrics/{key}": READ,
    "POST /runs/{run_id}/artifacts": TRAIN,
    "POST /training/submissions": DEPLOY,
    # Serving.
    "GET /endpoints": READ,
    "POST /endpoints": DEPLOY,
    "GET /endpoints/{name}": READ,
    "DELETE /endpoints/{name}": DEPLOY,
    "PUT /endpoints/{name}/traffic": DEPLOY,
    "GET /endpoints/{name}/stats": READ,
    "GET /endpoints/{name}/stats/history": READ,
    # Rollouts.
    "POST /rollouts": DEPLOY,
    "GET /rollouts": READ,
    "GET /rollouts/{rollout_id}": READ,
    "GET /rollouts/{rollout_id}/events": READ,
    "POST /rollouts/{rollout_id}/pause": DEPLOY,
    "POST /rollouts/{rollout_id}/resume": DEPLOY,
    "POST /rollouts/{rollout_id}/promote": DEPLOY,
    "POST /rollouts/{rollout_id}/rollback": DEPLOY,
    "POST /rollouts/{rollout_id}/abort": DEPLOY,
    "GET /endpoints/{name}/rollout-policy": READ,
    "PUT /endpoints/{name}/rollout-policy": DEPLOY,
    "DELETE /endpoints/{name}/rollout-policy": DEPLOY,
    # Pipelines: a run trains, registers and deploys, so starting one is a deployer's act.
    "PUT /pipelines/{name}": DEPLOY,
    "GET /pipelines": READ,
    "GET /pipelines/{name}": READ,
    "DELETE /pipelines/{name}": DEPLOY,
    "POST /pipelines/{name}/runs": DEPLOY,
    "GET /pipelines/{name}/runs": READ,
    "GET /pipelines/{name}/runs/latest": READ,
    "GET /pipelines/{name}/runs/{number}": READ,
    # A job's output names the nodes it ran on, their addresses and its process ids.
    "GET /pipelines/{name}/runs/{number}/logs": TOKEN,
    "POST /pipelines/{name}/cancel": DEPLOY,
    # Monitoring and alerts; receivers are admin-only, reads included (webhook URLs
    # often carry a secret).
    "GET /endpoints/{name}/monitoring": READ,
    "GET /endpoints/{name}/monitoring/histograms": READ,
    "GET /monitoring/signals": READ,
    "GET /alerts": READ,
    "GET /alerts/history": READ,
    "GET /alerts/changes": READ,
    "GET /alerts/receivers/changes": ADMIN,
    "POST /alerts/events": DEPLOY,
    "GET /alerts/rules": READ,
    "PUT /alerts/rules/{name}": DEPLOY,
    "DELETE /alerts/rules/{name}": DEPLOY,
    "POST /alerts/rules/{name}/silence": DEPLOY,
    "DELETE /alerts/rules/{name}/silence": DEPLOY,
    "GET /alerts/receivers": ADMIN,
    "PUT /alerts/receivers/{name}": ADMIN,
    "DELETE /alerts/receivers/{name}": ADMIN,
    # The web console: page shells and their assets, with no data in them; every figure a
    # page shows comes from the routes above, called with the person's own token.
    "GET /ui": PUBLIC,
    "GET /ui/endpoints": PUBLIC,
    "GET /ui/rollouts": PUBLIC,
    "GET /ui/rollouts/{rollout_id}": PUBLIC,
    "GET /ui/monitoring": PUBLIC,
    "GET /ui/models": PUBLIC,
    "GET /ui/models/{name}": PUBLIC,
    "GET /ui/models/{name}/versions/{version}": PUBLIC,
    "GET /ui/alerts": PUBLIC,
    "GET /ui/experiments": PUBLIC,
    "GET /ui/signin": PUBLIC,
    "GET /ui/static/{name}": PUBLIC,
}


def route_key(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def access_for(method: str, path: str) -> Access | None:
    """The declared rule of a route (``path`` as the route declares it), or None."""
    # HEAD is GET without the body, for every route that answers GET.
    return ROUTE_ACCESS.get(route_key("GET" if method.upper() == "HEAD" else method, path))


def anonymous_refused(rule: Access) -> AuthenticationError:
    """The 401 for a call without a token to a route whose ``rule`` needs one."""
    if rule.opened_by is not None:
        message = (f"this call needs a token on this control plane (anonymous callers are "
                   f"let in only with {rule.opened_by.setting}); send "
                   "`Authorization: Bearer <token>`")
    else:
        message = ("this call needs `Authorization: Bearer <token>`; set MODELPLANE_TOKEN (the "
                   "admin token is in $MODELPLANE_HOME/admin.token)")
    return AuthenticationError(message, detail={"field": "authorization"})


async def enforce_access(request: Request) -> None:
    """The app-wide dependency: refuse the call unless the route's rule allows it.

    The principal it finds is kept on ``request.state`` so the route's own ``Reader`` /
    ``Writer`` dependency does not look the token up again.
    """
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", "")
    rule = access_for(request.method, path)
    if rule is None:
        raise PermissionDeniedError(
            f"the route {request.method} {path} declares no access rule, so nobody may call it; "
            "declare one in control_plane/api/access.py (ROUTE_ACCESS)",
            detail={"route": route_key(request.method, path)},
        )
    if rule.role is None:
        return
    from control_plane.api.deps import authenticate, bearer_secret

    cp = request.app.state.control_plane
    secret = bearer_secret(request)
    if secret is None:
        if rule.anonymous_allowed(cp.settings):
            request.state.principal = ANONYMOUS
            return
        raise anonymous_refused(rule)
    found = getattr(request.state, "authenticated", None)  # by call_gate, before the body
    principal = found[1] if found is not None and found[0] == secret else \
        await authenticate(cp, secret)
    principal.require(rule.role, also=rule.also)
    request.state.principal = principal
