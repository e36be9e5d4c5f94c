"""The store: typed tables and the one transactional session helper."""

from control_plane.store.database import Database, ensure_schema_current, upgrade_schema

__all__ = ["Database", "ensure_schema_current", "upgrade_schema"]
