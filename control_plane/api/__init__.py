"""The control plane's REST API (FastAPI)."""

from control_plane.api.app import build_api, build_standalone_app

__all__ = ["build_api", "build_standalone_app"]
