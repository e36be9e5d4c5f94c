"""The job's driver says it is alive, once a minute, for as long as its run runs.

The control plane's sweep of abandoned runs asks Ray's job API whether a job still runs,
or looks for a `train run` process on its own machine. A process on another machine, or
a job of another Ray cluster, it cannot look at: there the driver's own word decides, and
a run whose driver has been silent for long is ended (``control_plane.abandoned_runs``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

ALIVE_S = 60.0


class AliveSignal:
    """Calls ``say`` now and every ``every_s`` from a daemon thread until stopped; a call
    that fails is logged (once) and tried again at the next beat."""

    def __init__(self, say: Callable[[], None], every_s: float = ALIVE_S) -> None:
        self._say, self._every_s = say, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self) -> AliveSignal:
        self._thread = threading.Thread(target=self._beat, name="modelplane-alive", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._say()
            except Exception as error:  # the control plane away, or too old to listen
                if not self.failures:
                    log.info("could not tell the control plane the job is alive: %s", error)
                self.failures += 1
            self._stop.wait(self._every_s)
