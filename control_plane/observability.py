"""Reading the data plane's Monitor from the control plane (absent without Ray).

Missing evidence is unknown, never empty: when the Monitor is gone, restarting or slow,
:func:`read_version_stats` raises :class:`MonitorUnavailableError` within
:data:`MONITOR_TIMEOUT_S`, and for :data:`MONITOR_RETRY_S` afterwards it raises at once
without asking again, so a dead Monitor never holds a caller (the rollout controller's
lock, the alert evaluator, a REST call) for long. Callers decide what unknown means to
them: alerts keep their state and say their data is stale, a rollout analysis is
inconclusive, ``/api/metrics`` serves what it has.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from control_plane.errors import (
    ControlPlaneUnavailableError,
    MonitorBusyError,
    MonitorUnavailableError,
)
from control_plane.read_gate import ReadGate
from control_plane.storable import json_safe
from serving.monitoring.routing import ROUTINGS

if TYPE_CHECKING:
    from serving.monitoring import VersionSnapshot, VersionTotals
    from serving.monitoring.stats import ServedConfig

MONITOR_TIMEOUT_S = 2.0  # a healthy Monitor answers in milliseconds
SERVE_READ_TIMEOUT_S = 5.0  # a scrape's read of Serve's replicas, as GET /api/cluster's
NOT_RUNNING = "the Monitor is not running; `modelplane up` starts it"
MONITOR_RETRY_S = 5.0  # after a failure, how long callers are told "unknown" without asking

log = logging.getLogger(__name__)
_warned_old_monitor = False
_breaker_lock = threading.Lock()
_unavailable: tuple[float, str] | None = None  # (retry at, why) after a failed read
# The Monitor's last answer to monitor_totals, and when (monotonic): a scrape amid the
# API's reads gets it while it is fresh, never once the Monitor was seen away.
_last_totals: tuple[float, list[VersionTotals]] | None = None
TOTALS_FRESH_S = 30.0


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def _ask(method: str, *args: Any) -> Any:
    """Call the Monitor's ``method``; MonitorUnavailableError quickly when it cannot answer."""
    global _unavailable
    import ray

    from serving.monitoring.monitor import get_monitor

    with _breaker_lock:
        if _unavailable is not None and time.monotonic() < _unavailable[0]:
            raise MonitorUnavailableError(_unavailable[1])
    try:
        monitor = get_monitor()
        if monitor is None:
            raise MonitorUnavailableError(NOT_RUNNING)
        result = ray.get(getattr(monitor, method).remote(*args), timeout=MONITOR_TIMEOUT_S)
    except (TypeError, AttributeError):
        # The arguments do not fit the method, or it has none of the name: a Monitor of
        # another release of modelplane (a detached actor, kept across an upgrade). It
        # answers; callers adapt, and the others' calls are not refused meanwhile.
        raise
    except Exception as error:
        why = (error.message if isinstance(error, MonitorUnavailableError)
               else _unanswered(error))
        with _breaker_lock:
            _unavailable = (time.monotonic() + MONITOR_RETRY_S, why)
        raise MonitorUnavailableError(why) from None
    with _breaker_lock:
        _unavailable = None
    return result


# The API's reads of the Monitor (control_plane.read_gate): two at a time from this control
# plane, an answer shared for a second; they never trip the loops' breaker above.
API_READ_SLOTS = 2
_API_READS = ReadGate(API_READ_SLOTS, 1.0, busy=lambda: MonitorBusyError(
    f"the Monitor is busy with {API_READ_SLOTS} reads for the API already; retry in a "
    "moment (the control loops' reads go ahead of these)"))


def _ask_for_api(method: str, *args: Any) -> Any:
    """Call the Monitor's ``method`` for a caller of the API, through the API's
    :class:`ReadGate` (bounded, shared, refused when busy); MonitorUnavailableError
    quickly when it cannot answer, and the loops' breaker left as it was."""
    from serving.monitoring.monitor import get_monitor

    def submit() -> Future[Any]:
        monitor = get_monitor()
        if monitor is None:
            raise MonitorUnavailableError(NOT_RUNNING)
        return getattr(monitor, method).remote(*args).future()  # type: ignore[no-any-return]

    try:
        return _API_READS.read((method, *args), submit, MONITOR_TIMEOUT_S)
    except (TypeError, AttributeError, MonitorUnavailableError):
        raise  # see _ask: a Monitor of another release; or already said
    except Exception as error:
        raise MonitorUnavailableError(
            _unanswered(error)) from None


def _unanswered(error: Exception) -> str:
    return (f"the Monitor did not answer within {MONITOR_TIMEOUT_S:g}s "
            f"({type(error).__name__}); statistics are unknown until it does")


def monitor_available() -> bool:
    """Whether the last read of the Monitor succeeded (True before any read)."""
    with _breaker_lock:
        return _unavailable is None


def read_version_stats(endpoint: str, window_s: float,
                       sample: tuple[str, ...] | None = None) -> dict[int, VersionSnapshot]:
    """The Monitor's per-version snapshot (NaN where there is no data); {} without Ray.
    Drift and accuracy are of the requests routed as ``sample`` says (see
    ``MonitorState.snapshot``), or of every request.

    Raises MonitorUnavailableError when Ray runs but the Monitor does not answer.
    """
    if not _ray_ready():
        return {}
    if sample is None:
        return dict(_ask("snapshot", endpoint, window_s))
    unknown = set(sample) - set(ROUTINGS)
    if unknown:  # our own mistake: never the Monitor's unavailability
        raise ValueError(f"unknown ways of routing {sorted(unknown)}; known: {list(ROUTINGS)}")
    try:
        return dict(_ask("snapshot", endpoint, window_s, sample))
    except TypeError:
        global _warned_old_monitor
        if not _warned_old_monitor:
            _warned_old_monitor = True
            log.warning("the Monitor predates per-routing samples (it outlived an upgrade): "
                        "rollouts judge drift and accuracy on every request until Ray is "
                        "restarted (`modelplane down`, then `modelplane up`)")
        return dict(_ask("snapshot", endpoint, window_s))


def version_stats(endpoint: str, window_s: float,
                  sample: tuple[str, ...] | None = None) -> dict[int, VersionSnapshot]:
    """As :func:`read_version_stats`, but {} when the Monitor cannot answer: the rollout
    controller's source, for which no statistics make every analysis inconclusive."""
    try:
        return read_version_stats(endpoint, window_s, sample)
    except MonitorUnavailableError:
        return {}


def served_config(endpoint: str) -> ServedConfig | None:
    """The newest configuration of ``endpoint`` its replicas report serving (see
    ``MonitorState.served_config``); None when none has reported or the Monitor cannot
    answer (nothing is known either way)."""
    if not _ray_ready():
        return None
    try:
        return _ask("served", endpoint)  # type: ignore[no-any-return]
    except (MonitorUnavailableError, AttributeError):  # away, or of a release without it
        return None


def endpoint_stats(endpoint: str, window_s: float) -> dict[str, Any]:
    """Per-version statistics as the REST API answers them: JSON-safe (NaN becomes None);
    raises MonitorUnavailableError."""
    if not _ray_ready():
        return {}
    return {str(v): json_safe(stats.to_json())
            for v, stats in _ask_for_api("snapshot", endpoint, window_s).items()}


def endpoint_history(endpoint: str, window_s: float, step_s: float) -> dict[str, Any]:
    """Per version, its traffic and latency in steps of ``step_s`` over the last
    ``window_s`` (see ``MonitorState.history``); raises MonitorUnavailableError."""
    return {str(v): json_safe(points)
            for v, points in _ask_for_api("history", endpoint, window_s, step_s).items()}


def feature_histograms(endpoint: str, version: int, window_s: float) -> dict[str, Any]:
    """A version's reference and live histograms per feature (see ``MonitorState.histograms``);
    raises MonitorUnavailableError."""
    return json_safe(_ask_for_api("histograms", endpoint, version, window_s))


def monitor_totals() -> list[VersionTotals]:
    """Cumulative per-version counters from the Monitor; [] without Ray.

    Raises MonitorUnavailableError when Ray runs but the Monitor does not answer.
    """
    global _last_totals
    if not _ray_ready():
        return []
    try:
        totals = list(_ask_for_api("totals"))
    except MonitorBusyError:
        # A scrape amid many reads: the last totals (cumulative counters, flat for a
        # moment), not a Monitor reported down.
        if _last_totals is None or time.monotonic() - _last_totals[0] > TOTALS_FRESH_S:
            raise
        return _last_totals[1]
    except MonitorUnavailableError:
        _last_totals = None  # a Monitor back from away counts from zero again
        raise
    _last_totals = (time.monotonic(), totals)
    return totals


def running_replicas() -> dict[str, int]:
    """Running replicas per Serve application (summed over its deployments); none where
    Serve's controller does not answer within :data:`SERVE_READ_TIMEOUT_S`."""
    if not _ray_ready():
        return {}
    from control_plane.ownership import serve_details

    try:
        # Bounded: Serve's own status read waits for ever on a wedged controller, and
        # each scrape held one of the API's threads until none was left for any route.
        details = serve_details(timeout_s=SERVE_READ_TIMEOUT_S)
    except ControlPlaneUnavailableError as error:
        log.warning("the replica counts are left out of this scrape: %s", error)
        return {}
    counts: dict[str, int] = {}
    for name, app in (details.get("applications") or {}).items():
        counts[name] = sum(
            1 for deployment in (app.get("deployments") or {}).values()
            for replica in deployment.get("replicas") or ()
            if str(getattr(replica.get("state"), "value", replica.get("state"))) == "RUNNING")
    return counts
