"""Which store owns what runs on Serve: the store's identity and the owner of each application.

A store has one identity (a random id in the ``store_identity`` row, created on first
start). Every Serve application the store's control plane creates carries it as the
``MODELPLANE_STORE_ID`` variable in each deployment's runtime environment, next to
``MODELPLANE_HOME`` on the control plane's own application. Serve keeps a deployment's
actor options in its checkpoint, so the mark survives a Serve controller restart, and
anyone can read it (``serve status`` details, the dashboard's Serve page, or
:func:`application_owners`). The reconciler never deletes or changes an application
marked by another store, and ``modelplane up`` refuses to replace another store's
control plane unless told to take over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from control_plane.store import Database
from control_plane.store.models import StoreIdentityRow
from serving.applications import SERVE_DETAILS_TIMEOUT_S

STORE_ID_ENV = "MODELPLANE_STORE_ID"
HOME_ENV = "MODELPLANE_HOME"
_IDENTITY_ROW = 1  # one row; a fixed key makes two first starts race to one winner


def store_identity(db: Database) -> str:
    """This store's id, created on first call (safe when two processes start at once)."""
    with db.session(readonly=True) as session:
        row = session.get(StoreIdentityRow, _IDENTITY_ROW)
        if row is not None:
            return row.store_id
    try:
        with db.session() as session:
            session.add(StoreIdentityRow(id=_IDENTITY_ROW, store_id=uuid.uuid4().hex))
    except IntegrityError:  # another process created it first: theirs is the identity
        pass
    with db.session(readonly=True) as session:
        found = session.scalar(select(StoreIdentityRow.store_id).where(
            StoreIdentityRow.id == _IDENTITY_ROW))
        assert found is not None
        return found


@dataclass(frozen=True)
class AppOwner:
    """Who deployed a Serve application, as its deployments say (None: unmarked)."""

    store_id: str | None
    home: str | None = None

    def describe(self) -> str:
        where = f"home {self.home}" if self.home else "home unknown"
        return f"store {self.store_id or 'unknown'} ({where})"


def application_owners(details: dict[str, Any]) -> dict[str, AppOwner]:
    """Application name → owner, from Serve's instance details (``get_serve_details()``)."""
    owners: dict[str, AppOwner] = {}
    for name, app in (details.get("applications") or {}).items():
        owner = AppOwner(None)
        for deployment in (app.get("deployments") or {}).values():
            options = (deployment.get("deployment_config") or {}).get("ray_actor_options") or {}
            env = ((options.get("runtime_env") or {}).get("env_vars")) or {}
            if env.get(STORE_ID_ENV) or env.get(HOME_ENV):  # a control plane from before marks has a home
                owner = AppOwner(env.get(STORE_ID_ENV) or None, env.get(HOME_ENV))
            if owner.store_id:
                break
        owners[name] = owner
    return owners


def serve_details(timeout_s: float = SERVE_DETAILS_TIMEOUT_S) -> dict[str, Any]:
    """Serve's instance details (applications, deployments, their options) from its
    controller; ControlPlaneUnavailableError where it does not answer in ``timeout_s``
    (``serving.applications.serve_instance_details``)."""
    from control_plane.errors import ControlPlaneUnavailableError
    from serving.applications import ServeControllerUnanswered, serve_instance_details

    try:
        return serve_instance_details(timeout_s)
    except ServeControllerUnanswered as error:
        raise ControlPlaneUnavailableError(str(error)) from None


def claim_control_plane(home: str, store_id: str, *, take_over: bool,
                        details: dict[str, Any] | None = None) -> AppOwner | None:
    """Check that the control plane running on Serve (if any) is this store's.

    Returns the other store's owner when ``take_over`` allows replacing it, None when
    there is nothing to take over. Raises OwnershipConflictError, naming both homes, when
    another store's control plane runs and ``take_over`` is not set.
    """
    from control_plane.errors import OwnershipConflictError
    from control_plane.serve_app import APP_NAME

    running = application_owners(details if details is not None else serve_details()).get(APP_NAME)
    if running is None or running.store_id == store_id:
        return None
    if running.store_id is None and running.home == home:
        return None  # this home's control plane from before applications were marked
    if take_over:
        return running
    raise OwnershipConflictError(
        f"this Ray cluster already runs the control plane of {running.describe()}; this is "
        f"store {store_id} (home {home}). Nothing was changed and its endpoints keep serving. "
        f"Manage it from its home (MODELPLANE_HOME={running.home or '?'}), or replace its "
        "control plane with this store's: `modelplane up --take-over` (its endpoints keep "
        "serving, untouched by this store)",
        detail={"running_store": running.store_id, "running_home": running.home,
                "store": store_id, "home": home})

