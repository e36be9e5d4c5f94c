"""The control plane: store, artifacts, registry, tracking, REST API, client."""

from control_plane.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    ControlPlaneUnavailableError,
    IntegrityError,
    InvalidArtifactError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SchemaOutdatedError,
    StageTransitionError,
)

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "ConflictError",
    "ControlPlaneError",
    "ControlPlaneUnavailableError",
    "IntegrityError",
    "InvalidArtifactError",
    "InvalidInputError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SchemaOutdatedError",
    "StageTransitionError",
]
