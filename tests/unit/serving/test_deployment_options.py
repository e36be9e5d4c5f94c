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


def test_the_lean_ingress_reaches_endpoint_replicas_in_their_environment() -> None:
    def env_of(**options: bool) -> dict[str, str]:
        deployment = build_endpoint_app(endpoint(), env={"A": "1"}, **options)._bound_deployment
        return deployment.ray_actor_options["runtime_env"]["env_vars"]

    assert env_of() == {"A": "1"}
    assert env_of(lean_ingress=True) == {"A": "1", "MODELPLANE_LEAN_INGRESS": "true"}
    # Serve's access log is written by Serve's own server: asking for it keeps that server.
    assert env_of(lean_ingress=True, access_log=True) == {"A": "1"}
