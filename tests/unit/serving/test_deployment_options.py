"""What the data plane's applications ask of Serve, read off the built applications."""

from __future__ import annotations

from serving.applications import build_endpoint_app, build_version_app
from serving.schemas import EndpointConfig, RouteTable
from tests.unit.serving.monitoring_helpers import version_config


def endpoint(placement: str = "colocated") -> EndpointConfig:
    return EndpointConfig(endpoint="e", versions=[version_config()], placement=placement,
                          routes=RouteTable(weights={1: 100}))


def test_serves_access_log_is_off_unless_asked_for() -> None:
    for placement in ("colocated", "isolated"):
        config = endpoint(placement)
        quiet = build_endpoint_app(config, env={})._bound_deployment
        logged = build_endpoint_app(config, env={}, access_log=True)._bound_deployment
        assert quiet.logging_config["enable_access_log"] is False
        assert logged.logging_config["enable_access_log"] is True
        # Serve applies a logging change in place: the replicas are not replaced for it.
        assert quiet.version == logged.version
    version = build_version_app(endpoint("isolated"), version_config(), env={})._bound_deployment
    assert version.logging_config["enable_access_log"] is False
