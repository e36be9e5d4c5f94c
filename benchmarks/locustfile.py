"""Locust load test for a modelplane endpoint (Open Inference Protocol v2 infer).

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 32 -r 32 -t 60s

Environment: ``MODELPLANE_ENDPOINT`` (default ``iris``), ``MODELPLANE_FEATURES`` (input
width, default 4), ``MODELPLANE_BATCH`` (rows per request, default 1),
``MODELPLANE_INPUT_NAME`` (default ``input``), ``MODELPLANE_STICKY`` (send a per-user
``x-modelplane-key`` so A/B assignment is per user), ``MODELPLANE_ROWS`` (a ``.npy`` file
of real feature rows to sample from instead of standard normal draws),
``MODELPLANE_DRIFT`` (add this many standard deviations to one feature, to exercise drift
monitoring) and ``MODELPLANE_DRIFT_FEATURE`` (which one, default 0), ``MODELPLANE_WAIT``
(seconds each user waits between requests, default 0), ``MODELPLANE_FEEDBACK_TOKEN`` (a
token of role labeler or higher: each user then posts its answers' predicted classes back
as labels, 20 at a time, keyed on the server's ``x-modelplane-request-id``, to load the
feedback route and the Monitor's join too), ``MODELPLANE_PARENT_PID`` (stop when that
process is gone: a program that starts Locust in the background and is killed, even with
SIGKILL, leaves no load running behind it).
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import FastHttpUser, constant, events, task

ENDPOINT = os.environ.get("MODELPLANE_ENDPOINT", "iris")
FEATURES = int(os.environ.get("MODELPLANE_FEATURES", "4"))
BATCH = int(os.environ.get("MODELPLANE_BATCH", "1"))
INPUT_NAME = os.environ.get("MODELPLANE_INPUT_NAME", "input")
STICKY = os.environ.get("MODELPLANE_STICKY", "") not in ("", "0", "false")
DRIFT = float(os.environ.get("MODELPLANE_DRIFT", "0"))
DRIFT_FEATURE = int(os.environ.get("MODELPLANE_DRIFT_FEATURE", "0"))
WAIT = float(os.environ.get("MODELPLANE_WAIT", "0"))
ROWS_FILE = os.environ.get("MODELPLANE_ROWS", "")
FEEDBACK_TOKEN = os.environ.get("MODELPLANE_FEEDBACK_TOKEN", "")
FEEDBACK_BATCH = 20


def _load_rows() -> tuple[list[list[float]], list[float]] | None:
    if not ROWS_FILE:
        return None
    import numpy as np

    rows = np.load(ROWS_FILE).astype(float)
    return rows.tolist(), rows.std(axis=0).tolist()


ROWS = _load_rows()
if ROWS is not None:
    FEATURES = len(ROWS[0][0])


PARENT_PID = int(os.environ.get("MODELPLANE_PARENT_PID", "0") or 0)


@events.init.add_listener
def _stop_with_parent(environment: Any, **_: Any) -> None:
    """Quit once ``MODELPLANE_PARENT_PID`` is gone (this process is re-parented then)."""
    if not PARENT_PID:
        return
    import gevent

    def watch() -> None:
        while os.getppid() == PARENT_PID:
            gevent.sleep(0.5)
        if environment.runner is not None:
            environment.runner.quit()

    gevent.spawn(watch)


class InferenceUser(FastHttpUser):
    """Sends v2 infer requests with random rows back to back."""

    wait_time = constant(WAIT)

    def on_start(self) -> None:
        self.key = uuid.uuid4().hex
        self.rng = random.Random(self.key)
        self.labels: list[dict[str, object]] = []

    @task
    def infer(self) -> None:
        if ROWS is None:
            data = [self.rng.gauss(0.0, 1.0) for _ in range(FEATURES * BATCH)]
            scale = 1.0
        else:
            data = [x for _ in range(BATCH) for x in self.rng.choice(ROWS[0])]
            scale = ROWS[1][DRIFT_FEATURE]
        if DRIFT:
            for row in range(BATCH):
                data[row * FEATURES + DRIFT_FEATURE] += DRIFT * scale
        body = {"inputs": [{"name": INPUT_NAME, "datatype": "FP32",
                            "shape": [BATCH, FEATURES], "data": data}]}
        headers = {"x-modelplane-key": self.key} if STICKY else {}
        with self.client.post(f"/v2/models/{ENDPOINT}/infer", json=body, headers=headers,
                              name=f"/v2/models/{ENDPOINT}/infer", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif FEEDBACK_TOKEN:
                self._label(response)

    def _label(self, response: Any) -> None:
        """Keep this answer's predicted classes (a value per row for a regressor) against the
        server's id for it; post them in batches."""
        output = response.json()["outputs"][0]
        rows, data = output["shape"][0], output["data"]
        width = len(data) // rows if rows else 1
        per_row = [data[r * width:(r + 1) * width] for r in range(rows)]
        labels = [max(range(width), key=row.__getitem__) if width > 1 else row[0] for row in per_row]
        self.labels.append({"request_id": response.headers["x-modelplane-request-id"],
                            "label": labels[0] if rows == 1 else labels})
        if len(self.labels) >= FEEDBACK_BATCH:
            batch, self.labels = self.labels, []
            self.client.post(f"/v2/models/{ENDPOINT}/feedback", json={"feedback": batch},
                             headers={"authorization": f"Bearer {FEEDBACK_TOKEN}"},
                             name=f"/v2/models/{ENDPOINT}/feedback")
