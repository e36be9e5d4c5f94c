"""The fast ingress's environment: HAProxy's own listeners on ports free for this head,
so two clusters on one machine (two homes, a test beside a benchmark) both start, and
no per-request work nobody asked for."""

from __future__ import annotations

import os
import socket

import pytest

from control_plane.platform import (
    HAPROXY_LOG_TARGET,
    HAPROXY_PORT_SETTINGS,
    HAPROXY_REQUEST_METRICS,
    HAPROXY_THREADS,
    ingress_env,
)


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


def test_haproxys_access_log_is_sampled_unless_the_operator_chose_a_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HAPROXY_LOG_TARGET, raising=False)
    target = ingress_env(True)[HAPROXY_LOG_TARGET]
    # Serve writes `log <target> local0 info`: the default address, sampling one in a million.
    assert target == "127.0.0.1:514 sample 1:1000000"
    monkeypatch.setenv(HAPROXY_LOG_TARGET, "10.0.0.5:514")
    assert ingress_env(True)[HAPROXY_LOG_TARGET] == "10.0.0.5:514"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity masks here")
def test_haproxy_runs_a_thread_per_core_the_head_may_use_up_to_serves_four(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HAPROXY_THREADS, raising=False)
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})  # as the benchmarks pin the server side
        assert ingress_env(True)[HAPROXY_THREADS] == "1"
    finally:
        os.sched_setaffinity(0, cores)
    assert ingress_env(True)[HAPROXY_THREADS] == str(min(4, len(cores)))
    monkeypatch.setenv(HAPROXY_THREADS, "8")
    assert ingress_env(True)[HAPROXY_THREADS] == "8"
