"""Shared fixtures: one real local Ray (and Serve) per test session, isolated settings.

Ray is started at most once per session: on two cores a start costs several seconds, and
a second ``ray.init`` in one process is not supported anyway. Tests ask for ``ray_session``
or ``serve_session``; unit tests never touch Ray.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.settings import Settings, reset_settings_cache

_TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its tier folder, so ``-m unit`` picks the fast tier."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(_TESTS_DIR).parts
        if parts and parts[0] == "unit":
            item.add_marker(pytest.mark.unit)
        elif parts and parts[0] == "integration":
            item.add_marker(pytest.mark.integration)
        elif parts and parts[0] == "faults":
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.faults)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def modelplane_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh MODELPLANE_HOME for one test, with every other MODELPLANE_* variable unset."""
    for name in list(os.environ):
        if name.startswith("MODELPLANE_") and name != "MODELPLANE_TEST_PG_URL":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELPLANE_HOME", str(home))
    reset_settings_cache()
    yield home
    reset_settings_cache()


@pytest.fixture
def settings(modelplane_home: Path) -> Settings:
    """Settings for a test, rooted in its own MODELPLANE_HOME."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real local Ray for the whole session, shut down cleanly at the end.

    Four logical CPUs on two cores: replicas and workers ask for fractions, and the
    logical count only bounds how many fit, not how fast they run.
    """
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        namespace="modelplane-tests",
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_session(ray_session: None) -> Iterator[int]:
    """Ray Serve on a free loopback port for the whole session; yields the port."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()


@pytest.fixture(scope="session")
def platform(serve_session: int, tmp_path_factory: pytest.TempPathFactory):
    """The whole platform on the session's Ray and Serve (one control plane for all tests)."""
    from tests.platform import start_platform_on_session

    return start_platform_on_session(serve_session, tmp_path_factory.mktemp("platform") / "home")
