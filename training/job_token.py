"""Per-job control-plane tokens: minted by ``train submit``, revoked when the job ends.

The job's runtime environment is readable by anyone who can list the cluster's jobs, so
it never holds the submitter's own token. ``train submit`` mints a ``trainer`` token for
the job (runs, metrics, artifacts, versions, aliases; no deploying, approving or minting),
expiring on its own after ``lifetime_minutes``, and records its name in the job's
metadata. It is revoked by the job itself on exit, by ``train status`` / ``train stop`` /
``train submit --wait`` once they see the job ended, and by the control plane's sweep of
runs whose job ended without ending them (control_plane.abandoned_runs); the expiry covers
a job of another cluster killed before anyone looks.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# The job's environment: the name of its own token, which it revokes on exit.
JOB_TOKEN_ENV = "MODELPLANE_JOB_TOKEN_NAME"
# The job's Ray metadata: the same name, for whoever sees the job end.
JOB_TOKEN_METADATA = "modelplane_token"
DEFAULT_LIFETIME_MINUTES = 24 * 60


@dataclass(frozen=True)
class JobToken:
    """A job's token: its name (in the job's metadata) and its secret (in its environment)."""

    name: str
    secret: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """What the job's runtime environment holds of it."""
        return {"MODELPLANE_TOKEN": self.secret, JOB_TOKEN_ENV: self.name}


def mint_job_token(experiment: str, *, model: str | None = None,
                   lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES) -> JobToken:
    """A fresh trainer token for one job, minted with the caller's token (deployer or admin),
    for ``model`` only (the job's: see ``TokenCreate.model``)."""
    from control_plane.client import Client
    from control_plane.errors import AuthenticationError, PermissionDeniedError, RequestSchemaError
    from control_plane.schemas import Role
    from training.errors import JobSubmissionError

    # Names are unique and recorded as the actor of what the job does: say whose job it is.
    name = f"job-{experiment[:40]}-{secrets.token_hex(4)}"
    try:
        with Client() as client:
            try:
                created = client.create_token(name, Role.TRAINER,
                                              expires_in_minutes=lifetime_minutes, model=model)
            except RequestSchemaError as error:
                if model is None or "model" not in error.detail.get("fields", ()):
                    raise
                # A control plane from before token models: the job's token reaches every
                # model, as all its tokens do.
                created = client.create_token(name, Role.TRAINER,
                                              expires_in_minutes=lifetime_minutes)
    except (AuthenticationError, PermissionDeniedError) as error:
        raise JobSubmissionError(
            f"cannot mint the job's own token: {error.message}. `train submit` needs a "
            "deployer or admin token in MODELPLANE_TOKEN (or the local admin token file)",
            detail={"field": "MODELPLANE_TOKEN"},
        ) from None
    return JobToken(name, created.token)


def revoke_job_token(name: str) -> bool:
    """Revoke a job's token with the caller's own token; True when it is revoked now.

    Best effort: a failure is logged, never raised, since the token expires anyway and the
    caller (a status read, a stop) must not fail for it.
    """
    from control_plane.client import Client
    from modelplane.errors import ModelplaneError

    try:
        with Client() as client:
            return client.revoke_token(name).revoked_at is not None
    except (ModelplaneError, OSError) as error:
        log.warning("could not revoke the job token %s (it expires on its own): %s", name, error)
        return False


def revoke_if_ended(info: Any, terminal_states: set[str]) -> None:
    """Revoke the token of a job whose Ray ``JobInfo`` shows it ended."""
    name = (getattr(info, "metadata", None) or {}).get(JOB_TOKEN_METADATA)
    status = getattr(getattr(info, "status", None), "value", None)
    if name and status in terminal_states:
        revoke_job_token(name)


def revoke_own_token() -> None:
    """In the job, on exit: revoke the token ``train submit`` minted for it, if any.

    Only a token whose name the submitter put in :data:`JOB_TOKEN_ENV` is revoked, so a job
    started by hand with a person's token never revokes that token.
    """
    name = os.environ.get(JOB_TOKEN_ENV)
    if name:
        revoke_job_token(name)
