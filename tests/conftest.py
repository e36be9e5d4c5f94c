"""Shared fixtures: one real local Ray (and Serve) per test session, isolated settings.

Ray is started at most once per session: on two cores a start costs several seconds, and
a second ``ray.init`` in one process is not supported anyway. Tests ask for ``ray_session``
or ``serve_session``; unit tests never touch Ray.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.ports import free_ports
from modelplane.settings import Settings, reset_settings_cache
from tests.databases import fresh_postgres_database, platform_store, platform_store_description

_TESTS_DIR = Path(__file__).parent


RAY_STREAMS = ("session", "heads")
# A module's place in the collection's order (pytest_collection_modifyitems).
_NO_RAY, _UNIT, _OWN_HEAD, _ON_SESSION = range(4)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ray-stream", choices=RAY_STREAMS, default=None,
        help="run only one of the Ray tier's two streams: 'session' (the tests on the "
             "session's Ray, and modules whose RAY_STREAM says so) or 'heads' (the other "
             "modules that start their own Ray head); scripts/test.sh runs both at once")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad MODELPLANE_TEST_PLATFORM_STORE before any test runs, not in the first test."""
    platform_store()
    if config.getoption("ray_stream"):
        # scripts/test.sh runs a stream in the background, where Ctrl-C never reaches it,
        # and stops it with SIGTERM: as an interrupt, the Ray heads its fixtures started
        # are stopped by their teardown rather than left running.
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the header which store the platform runs on, so two runs' logs tell apart."""
    return platform_store_description()


@pytest.hookimpl(tryfirst=True)  # before -m deselects
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
    # The modules without Ray first: beside the unit tier (scripts/test.sh runs both on
    # every core) the long server tests start at once rather than last, on one core. Then
    # the unit tier; then the modules that start their own Ray head, while the session's
    # Ray (started at its first use) is not yet there idling beside them on two cores; then
    # the modules on the session's Ray. Stable: each module keeps its order.
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        own = (_NO_RAY if item.get_closest_marker("no_ray")
               else _UNIT if item.get_closest_marker("unit")
               else _ON_SESSION if "ray_session" in item.fixturenames else _OWN_HEAD)
        rank[module] = max(rank.get(module, 0), own)
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])
    stream = config.getoption("ray_stream")
    if stream:
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            module_rank = rank[item.nodeid.split("::")[0]]
            (kept if _ray_stream(item, module_rank) in (stream, None) else dropped).append(item)
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _ray_stream(item: pytest.Item, module_rank: int) -> str | None:
    """The Ray tier's stream a test runs in (None: not in the Ray tier), the same for all of
    its module's tests, which may share module fixtures.

    Two pytest processes run the tier at once (scripts/test.sh): one Ray per process, so
    every test on the session's Ray is in one stream, and a module that starts its own
    head (the job tests' package, the cluster, the laptop) is in the other, unless it says
    ``RAY_STREAM = "session"`` to even the two out. Most of these tests wait on servers,
    jobs and timers, so the two streams together keep both cores busy where one leaves a
    core idle.
    """
    if module_rank < _OWN_HEAD:
        return None
    if module_rank == _ON_SESSION:
        return "session"
    chosen = getattr(getattr(item, "module", None), "RAY_STREAM", "heads")
    if chosen not in RAY_STREAMS:  # a misspelt stream would run in neither
        raise pytest.UsageError(f"{item.nodeid}: RAY_STREAM must be one of {RAY_STREAMS}, "
                                f"not {chosen!r}")
    return chosen


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, and that no outbound
    connection will take before the server meant for it binds it."""
    return free_ports(1, "127.0.0.1")[0]


@pytest.fixture
def modelplane_home(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh MODELPLANE_HOME for one test, with every other MODELPLANE_* variable unset
    (but the MODELPLANE_TEST_* ones, which choose the tests' databases), and pipelines
    reading local data from pytest's temporary folder (MODELPLANE_DATA_ROOTS)."""
    for name in list(os.environ):
        if name.startswith("MODELPLANE_") and not name.startswith("MODELPLANE_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELPLANE_HOME", str(home))
    monkeypatch.setenv("MODELPLANE_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))
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
