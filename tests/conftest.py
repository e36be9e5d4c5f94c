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
from tests.databases import fresh_postgres_database, platform_store, platform_store_description

_TESTS_DIR = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad MODELPLANE_TEST_PLATFORM_STORE before any test runs, not in the first test."""
    platform_store()


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the header which store the platform runs on, so two runs' logs tell apart."""
    return platform_store_description()


@pytest.hookimpl(tryfirst=True)  # before -m deselects, and before xdist reads the groups
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
    for item in items:
        if item.get_closest_marker("no_ray") is None:
            continue
        if "ray_session" in item.fixturenames:
            raise pytest.UsageError(
                f"{item.nodeid} is marked no_ray but uses the session's Ray (through one of its "
                "fixtures); no_ray tests run beside the unit tier, where no Ray is started")
    # One process: the modules without Ray first (beside the unit tier, which
    # scripts/test.sh runs on every core with them, the long server tests start at once
    # rather than last, on one core); then the unit tier; then the modules that start their
    # own Ray head, while the session's Ray (started at its first use) is not yet there
    # idling beside them on two cores; then the modules on the session's Ray.
    # Spread over processes by group (scripts/test.sh, `--dist loadgroup`): the session's
    # Ray is one group, the largest, so it goes first and the own-head modules fill the
    # other process around it. Stable: each module keeps its order.
    spread = bool(getattr(config.option, "loadgroup", False))
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        on_session = "ray_session" in item.fixturenames
        own = (0 if item.get_closest_marker("no_ray") else 1 if item.get_closest_marker("unit")
               else 3 if on_session else 2)
        rank[module] = max(rank.get(module, 0), own)
        item.add_marker(pytest.mark.xdist_group(_process_group(item, on_session)))
    if spread:
        rank = {module: -1 if own == 3 else own for module, own in rank.items()}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


def _process_group(item: pytest.Item, on_session: bool) -> str:
    """The tests that must share one process: all that use the session's Ray (one Ray per
    process, started once), a package whose fixture is package-scoped (the job tests'
    head), else a module (its module-scoped server, and tests that build on each other)."""
    if on_session:
        return "ray-session"
    path = Path(str(item.fspath)).relative_to(_TESTS_DIR)
    fixtures = getattr(item, "_fixtureinfo", None)
    scopes = {definition.scope for definitions in (fixtures.name2fixturedefs.values()
                                                   if fixtures else ())
              for definition in definitions}
    return path.parent.as_posix() if "package" in scopes else path.as_posix()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def modelplane_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh MODELPLANE_HOME for one test, with every other MODELPLANE_* variable unset
    (but the MODELPLANE_TEST_* ones, which choose the tests' databases)."""
    for name in list(os.environ):
        if name.startswith("MODELPLANE_") and not name.startswith("MODELPLANE_TEST_"):
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
    """The whole platform on the session's Ray and Serve (one for all tests).

    Its store is a SQLite file in its home with one control plane, or, with
    MODELPLANE_TEST_PLATFORM_STORE=postgres, a fresh database on the server in
    MODELPLANE_TEST_PG_URL (dropped at the session's end) with two control planes.
    """
    from tests.platform import start_platform_on_session

    home = tmp_path_factory.mktemp("platform") / "home"
    if platform_store() == "sqlite":
        yield start_platform_on_session(serve_session, home)
        return
    with fresh_postgres_database() as db_url:
        yield start_platform_on_session(serve_session, home, db_url=db_url)
