"""What the data plane's applications ask of Serve, read off the built applications."""

from __future__ import annotations

from serving.applications import build_endpoint_app, build_version_app
from serving.schemas import EndpointConfig, RouteTable, VersionConfig
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


def test_placement_queue_and_autoscaling_reach_serve() -> None:
    import pytest
    from pydantic import ValidationError

    from serving.schemas import RETRY_AFTER_S, ScalingConfig

    scaling = ScalingConfig(
        autoscaling={"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 3,
                     "downscale_delay_s": 5, "look_back_period_s": 10},
        max_queued_requests=16, max_replicas_per_node=1, resources={"node:gpu-a": 0.01},
        num_gpus=1, accelerator_type="L4")
    config = EndpointConfig(endpoint="e", versions=[version_config()], scaling=scaling,
                            routes=RouteTable(weights={1: 100}))
    deployment = build_endpoint_app(config, env={})._bound_deployment
    assert deployment.ray_actor_options["resources"] == {"node:gpu-a": 0.01}
    assert deployment.ray_actor_options["accelerator_type"] == "L4"
    assert deployment._deployment_config.max_queued_requests == 16
    backpressure = deployment._deployment_config.backpressure_config
    assert backpressure.status_code == 503 and backpressure.retry_after_s == RETRY_AFTER_S
    assert deployment._replica_config.max_replicas_per_node == 1
    auto = deployment._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.initial_replicas) == (0, 4, 1)
    assert auto.target_ongoing_requests == 3 and auto.downscale_delay_s == 5
    assert auto.look_back_period_s == 10
    # Unset, Serve's own defaults stand: no queue bound, no cap per node, no labels.
    plain = build_endpoint_app(endpoint(), env={})._bound_deployment
    assert plain._deployment_config.max_queued_requests == -1
    assert plain._replica_config.max_replicas_per_node is None
    assert "resources" not in plain.ray_actor_options

    with pytest.raises(ValidationError, match="num_cpus, num_gpus and memory_mb"):
        ScalingConfig(resources={"CPU": 2})
    with pytest.raises(ValidationError, match="accelerator_type needs num_gpus"):
        ScalingConfig(accelerator_type="A100")
    with pytest.raises(ValidationError, match="resources"):
        ScalingConfig(resources={"bad name!": 1})


def test_an_isolated_version_turns_its_link_on_only_where_the_router_has_an_address() -> None:
    linked = endpoint("isolated").model_copy(update={"link_address": "127.0.0.1:8000"})
    with_link = build_version_app(linked, version_config(), env={})._bound_deployment
    without = build_version_app(endpoint("isolated"), version_config(), env={})._bound_deployment
    assert with_link._deployment_config.user_config == {"link": True}
    assert without._deployment_config.user_config is None
    # Turning the link on reconfigures the replicas; it never replaces them.
    assert with_link.version == without.version


def _python_objects(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(_python_objects(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_python_objects(v) for v in value)
    return 1


def test_a_reference_profile_travels_to_serve_as_one_string() -> None:
    """Serve's controller deep-copies every deployment's user_config ten times a second:
    a profile's sample rows as Python numbers kept it busy (13 ms a copy), so the wire
    carries the profile as one string, whatever its size, and replicas read it back whole."""
    import copy

    from tests.unit.serving.monitoring_helpers import reference_profile

    profile = reference_profile()
    assert _python_objects(profile) > 1_000  # the sample rows alone
    versions = [version_config(1, profile=profile), version_config(2, profile=profile)]
    for placement in ("colocated", "isolated"):
        config = EndpointConfig(endpoint="e", versions=versions, placement=placement,
                                routes=RouteTable(weights={1: 90, 2: 10}))
        deployment = build_endpoint_app(config, env={})._bound_deployment
        user_config = copy.deepcopy(deployment._deployment_config.user_config)
        assert _python_objects(user_config) < 200
        assert isinstance(user_config["versions"][0]["reference_profile"], str)
        read = EndpointConfig.model_validate(user_config)
        assert read == config
        assert read.versions[1].reference_profile == profile
    model_server = build_version_app(config, versions[0], env={})._bound_deployment
    (init,) = model_server.init_args
    assert isinstance(init["reference_profile"], str)
    assert init["reference_profile"] and VersionConfig.model_validate(init) == versions[0]


def test_a_profile_that_is_not_json_is_refused_naming_the_field() -> None:
    import pytest
    from pydantic import ValidationError

    document = version_config().model_dump(mode="json")
    with pytest.raises(ValidationError, match="reference_profile is not a JSON document"):
        VersionConfig.model_validate({**document, "reference_profile": "{not json"})


def test_a_stopping_replica_gets_its_draining_period_and_time_to_finish(monkeypatch) -> None:
    """Behind HAProxy Serve holds a stopping replica reachable for its draining period and
    force-kills it at the larger of that and this timeout: at 10 s the kill came as the
    period ended, cutting requests in flight and the replica's goodbye to the Monitor."""
    from serving.applications import DRAINING_SETTING

    def timeout() -> float:
        app = build_endpoint_app(endpoint(), env={})
        return app._bound_deployment._deployment_config.graceful_shutdown_timeout_s

    monkeypatch.delenv(DRAINING_SETTING, raising=False)
    assert timeout() == 40.0
    monkeypatch.setenv(DRAINING_SETTING, "1")  # the benchmarks' scratch clusters
    assert timeout() == 11.0
    version = build_version_app(endpoint("isolated"), version_config(), env={})._bound_deployment
    assert version._deployment_config.graceful_shutdown_timeout_s == 11.0
