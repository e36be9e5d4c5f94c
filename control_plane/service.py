"""The control plane's services wired together from settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from control_plane.artifacts import ArtifactStore
from control_plane.auth import TokenService
from control_plane.registry import Registry
from control_plane.store import Database
from control_plane.tracking import Tracker
from modelplane.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    """Everything a REST route or an in-process caller needs, built once per process."""

    settings: Settings
    db: Database
    artifacts: ArtifactStore
    registry: Registry
    tracker: Tracker
    tokens: TokenService
    new_admin_token: str | None = None

    @classmethod
    def start(cls, settings: Settings, *, migrate: bool = True) -> ControlPlane:
        """Open the store (migrating it), clean up partial uploads, make the admin token."""
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_url, migrate=migrate)
        artifacts = ArtifactStore(settings.artifact_uri, max_bytes=settings.max_artifact_bytes)
        removed = artifacts.remove_partial_writes()
        if removed:
            log.info("removed %d partial artifact upload(s) left by a crash", removed)
        tokens = TokenService(db)
        new_admin = tokens.bootstrap_admin(settings.admin_token_path)
        if new_admin:
            log.warning(
                "created the admin token and wrote it to %s (mode 0600); it is shown once: %s",
                settings.admin_token_path,
                new_admin,
            )
        return cls(
            settings=settings,
            db=db,
            artifacts=artifacts,
            registry=Registry(db, artifacts),
            tracker=Tracker(db, artifacts),
            tokens=tokens,
            new_admin_token=new_admin,
        )

    def close(self) -> None:
        self.db.dispose()
