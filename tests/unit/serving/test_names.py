"""The data plane's names, spelled out: they are what operators see in Serve and Ray, and
what the reconciler sweeps by."""

from __future__ import annotations

from serving.names import (
    endpoint_app_name,
    endpoint_route_prefix,
    endpoint_url,
    is_endpoint_app,
    serving_app_name,
    version_app_name,
)


def test_application_names_and_routes() -> None:
    assert endpoint_app_name("iris") == "endpoint-iris"
    assert version_app_name("iris", 2) == "endpoint-iris-v2"
    assert serving_app_name("iris", 2, "colocated") == "endpoint-iris"
    assert serving_app_name("iris", 2, "isolated") == "endpoint-iris-v2"
    assert endpoint_route_prefix("iris") == "/v2/models/iris"
    assert endpoint_url("http://h:8000", "iris") == "http://h:8000/v2/models/iris"
    assert endpoint_url("http://h:8000", "iris", "versions", "2", "infer") == \
        "http://h:8000/v2/models/iris/versions/2/infer"


def test_which_applications_belong_to_an_endpoint() -> None:
    assert is_endpoint_app("endpoint-iris") and not is_endpoint_app("control-plane")
    assert is_endpoint_app("endpoint-iris", "iris") and is_endpoint_app("endpoint-iris-v3", "iris")
    assert not is_endpoint_app("endpoint-irises", "iris")
    assert not is_endpoint_app("endpoint-iris", "iri")

