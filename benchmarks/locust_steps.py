"""Locust with a stepped load: ``benchmarks/locustfile.py``'s users, in steps.

    MODELPLANE_STEPS="2:30,8:30,16:30,0:40" locust -f benchmarks/locust_steps.py \\
        --host http://127.0.0.1:8000 --headless --csv out --csv-full-history

``MODELPLANE_STEPS`` is ``USERS:SECONDS`` pairs, run in order (0 users: no load for that
long); Locust stops after the last. Every other variable is the locustfile's.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from benchmarks.load_steps import parse_steps, users_at
from benchmarks.locustfile import InferenceUser  # noqa: F401 (the users Locust runs)

SPAWN_RATE = 1000  # users started or stopped per second


class StepShape(LoadTestShape):
    steps = parse_steps(os.environ.get("MODELPLANE_STEPS", "4:30"))

    def tick(self) -> tuple[int, float] | None:
        users = users_at(self.steps, self.get_run_time())
        # Every user of a step starts (or stops) at once: the step is the load, not a ramp.
        return None if users is None else (users, SPAWN_RATE)
