"""The fast ingress's environment: HAProxy's own listeners on ports free for this head,
so two clusters on one machine (two homes, a test beside a benchmark) both start."""

from __future__ import annotations

import socket

import pytest

from control_plane.platform import HAPROXY_PORT_SETTINGS, HAPROXY_REQUEST_METRICS, ingress_env


def test_each_head_gets_free_haproxy_ports_of_its_own() -> None:
    first, second = ingress_env(True), ingress_env(True)
    for env in (first, second):
        ports = [int(env[name]) for name in HAPROXY_PORT_SETTINGS]
        assert len(set(ports)) == len(ports)
        assert not {8404, 9101} & set(ports)  # HAProxy's fixed defaults
        for port in ports:
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", port))  # free when chosen
    assert ingress_env(False) == {}


def test_ports_an_operator_chose_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")
    env = ingress_env(True)
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "9101"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404"


def test_haproxys_per_request_metrics_are_off_unless_the_operator_asks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HAPROXY_REQUEST_METRICS, raising=False)
    assert ingress_env(True)[HAPROXY_REQUEST_METRICS] == "0"
    monkeypatch.setenv(HAPROXY_REQUEST_METRICS, "1")
    assert ingress_env(True)[HAPROXY_REQUEST_METRICS] == "1"
