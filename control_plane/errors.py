"""Errors raised by the control plane; each maps to one HTTP status in the REST API.

::

    ModelplaneError
    └── ControlPlaneError               control_plane_error, 500
        ├── NotFoundError               not_found, 404 (model, version, alias, run, token …)
        ├── AlreadyExistsError          already_exists, 409
        ├── ConflictError               conflict, 409 (state forbids it: deployed version archived …)
        │   └── RequestInProgressError  request_in_progress, 409 (its idempotency key's first call runs)
        ├── InvalidInputError           invalid_input, 400 (names the field)
        │   ├── InvalidArtifactError    invalid_artifact, 400 (not ONNX, signature mismatch)
        │   ├── StageTransitionError    invalid_stage_transition, 409
        │   ├── IdempotencyKeyReusedError idempotency_key_reused, 422 (the key came with another request)
        │   └── RequestSchemaError      validation_error, 422 (body, query or path off its schema)
        ├── MethodNotAllowedError       method_not_allowed, 405
        ├── PayloadTooLargeError        payload_too_large, 413
        ├── StorageFullError            storage_full, 507 (the artifact store has no space left)
        ├── AuthenticationError         unauthenticated, 401 (missing, unknown, expired token)
        ├── PermissionDeniedError       permission_denied, 403 (role too low, self-approval)
        ├── IntegrityError              artifact_corrupt, 500 (digest mismatch on read)
        ├── SchemaOutdatedError         schema_outdated, 503 (database needs `modelplane db upgrade`)
        ├── StoreUnavailableError       store_unavailable, 503 (the database cannot be reached)
        ├── ControlPlaneUnavailableError control_plane_unavailable, 503 (no answer reached the client)
        ├── MonitorUnavailableError     monitor_unavailable, 503 (statistics are unknown now)
        ├── OwnershipConflictError      ownership_conflict, 409 (another store's control plane runs)
        └── WorkNotStoppedError         work_not_stopped, 502 (done, but what it had running was not stopped)
"""

from modelplane.errors import ModelplaneError


class ControlPlaneError(ModelplaneError):
    """A failure in the control plane."""

    code = "control_plane_error"
    http_status = 500


class NotFoundError(ControlPlaneError):
    code = "not_found"
    http_status = 404


class AlreadyExistsError(ControlPlaneError):
    code = "already_exists"
    http_status = 409


class ConflictError(ControlPlaneError):
    code = "conflict"
    http_status = 409


class RequestInProgressError(ConflictError):
    """A write asked again with the idempotency key of a call still being answered;
    ``detail["retry_after_s"]`` says when to ask again (control_plane.idempotency)."""

    code = "request_in_progress"
    http_status = 409


class InvalidInputError(ControlPlaneError):
    code = "invalid_input"
    http_status = 400


class InvalidArtifactError(InvalidInputError):
    code = "invalid_artifact"
    http_status = 400


class StageTransitionError(InvalidInputError):
    code = "invalid_stage_transition"
    http_status = 409


class IdempotencyKeyReusedError(InvalidInputError):
    """An idempotency key sent again with a different method, path or body."""

    code = "idempotency_key_reused"
    http_status = 422


class RequestSchemaError(InvalidInputError):
    """The body, query or path does not match the route's schema; ``detail["fields"]`` names them."""

    code = "validation_error"
    http_status = 422


class MethodNotAllowedError(ControlPlaneError):
    """The path exists but not with this HTTP method."""

    code = "method_not_allowed"
    http_status = 405


class PayloadTooLargeError(ControlPlaneError):
    code = "payload_too_large"
    http_status = 413


class StorageFullError(ControlPlaneError):
    code = "storage_full"
    http_status = 507


class AuthenticationError(ControlPlaneError):
    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(ControlPlaneError):
    code = "permission_denied"
    http_status = 403


class IntegrityError(ControlPlaneError):
    code = "artifact_corrupt"
    http_status = 500


class SchemaOutdatedError(ControlPlaneError):
    code = "schema_outdated"
    http_status = 503


class StoreUnavailableError(ControlPlaneError):
    code = "store_unavailable"
    http_status = 503


class ControlPlaneUnavailableError(ControlPlaneError):
    code = "control_plane_unavailable"
    http_status = 503


class MonitorUnavailableError(ControlPlaneError):
    """The Monitor did not answer (gone, restarting or overloaded): statistics are unknown."""

    code = "monitor_unavailable"
    http_status = 503


class MonitorBusyError(MonitorUnavailableError):
    """The Monitor was not asked: the API's reads of it are in line (control_plane.read_gate)."""

    code = "monitor_busy"


class OwnershipConflictError(ControlPlaneError):
    """The Ray cluster runs the control plane (or an application) of another store."""

    code = "ownership_conflict"
    http_status = 409


class WorkNotStoppedError(ControlPlaneError):
    """The change is stored (a run cancelled), but the work it had running (a training job,
    a rollout) could not be stopped: the message says what, and how to stop it by hand."""

    code = "work_not_stopped"
    http_status = 502


def cannot_answer_now(error: BaseException) -> bool:
    """Whether ``error`` says the control plane, its store or its Monitor could not answer
    now (no answer at all, or a 5xx), not that the request was refused: a caller that must
    not give up (a job's last calls, a watch) asks again. An outdated store schema waits
    for an operator (`modelplane db upgrade`), not for time."""
    if isinstance(error, ControlPlaneUnavailableError | StoreUnavailableError
                  | MonitorUnavailableError):
        return True
    status = getattr(error, "detail", {}).get("status", 0)
    return (isinstance(error, ModelplaneError) and not isinstance(error, SchemaOutdatedError)
            and isinstance(status, int) and status >= 500)
