"""Approval gating: an unapproved candidate never takes more than its policy's share.

Where approval is required (the model's policy, or a rollout that asks for more), the
rollout walks its steps up to the limit and waits there, in ``awaiting_approval``, before
any step that would give the candidate more; an approval by a subject other than the
registrant's lets it continue, a rejection rolls it back. The limit is the model policy's
``max_unapproved_weight``, or by default the plan's last step below 100% (0 for a plan
with none: the rollout waits before its first step, with the candidate taking nothing).

A rollout option can only add the requirement: ``require_approval: false`` never lifts a
model's policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.errors import ConflictError
from control_plane.registry import latest_decision, registrant_subject
from control_plane.schemas import ModelPolicy
from control_plane.store.models import ModelRow, ModelVersionRow, RolloutRow

POLICY = "require_approval_for_production"


@dataclass(frozen=True)
class ApprovalGate:
    """What approval a rollout's candidate needs now, and whether it has it."""

    required: bool
    limit: float  # percent of traffic an unapproved candidate may take
    decision: str | None  # the candidate's latest decision: approved, rejected or None
    model: str
    version: int
    registrant: str  # the registrant's subject, whom the approver must differ from

    @property
    def approved(self) -> bool:
        return self.decision == "approved"

    def blocks(self, weight: float) -> bool:
        """Whether giving the candidate ``weight`` percent must wait for an approval."""
        return self.required and not self.approved and weight > self.limit

    def waiting_reason(self) -> str:
        return (f"waiting for an approval of {self.model}:{self.version} by a subject other "
                f"than {self.registrant!r} before the candidate takes more than "
                f"{self.limit:g}% (`modelplane models approve {self.model}:{self.version}`)")

    def refuse_promotion(self, rollout_id: int) -> None:
        """Raise the 409 a manual promotion of an unapproved candidate gets."""
        if self.required and not self.approved:
            raise ConflictError(
                f"model {self.model!r} requires approval (policy {POLICY}): rollout "
                f"#{rollout_id} cannot promote {self.model}:{self.version} before an approver "
                f"other than {self.registrant!r} approves it; it takes at most "
                f"{self.limit:g}% until then",
                detail={"field": "state", "policy": POLICY, "limit": self.limit,
                        "version": self.version})


def approval_gate(session: Session, row: RolloutRow) -> ApprovalGate:
    """The gate for ``row``'s candidate, read from the model's policy as it is now."""
    model = session.get(ModelRow, row.model_id)
    assert model is not None
    policy = ModelPolicy.model_validate(model.policy)
    version = session.scalar(select(ModelVersionRow).where(
        ModelVersionRow.model_id == model.id, ModelVersionRow.version == row.candidate_version))
    assert version is not None
    limit = policy.max_unapproved_weight
    return ApprovalGate(
        required=policy.require_approval_for_production or row.spec.get("require_approval") is True,
        limit=default_limit(row.spec["plan"]) if limit is None else limit,
        decision=latest_decision(session, version), model=model.name,
        version=row.candidate_version, registrant=registrant_subject(version))


def default_limit(plan: list[dict[str, Any]]) -> float:
    """The plan's last step below 100% (shadow steps give the candidate no traffic)."""
    below = [s["candidate_weight"] for s in plan
             if not s["shadow"] and s["candidate_weight"] < 100]
    return max(below, default=0.0)
