"""A background load client for tests: real HTTP requests, every answer recorded."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

_FAILED_VERSION = re.compile(r":(\d+) failed")


@dataclass
class Answer:
    row: np.ndarray
    status: int
    version: int | None  # who answered, or whose failure it was
    outputs: np.ndarray | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class BackgroundLoad:
    """``workers`` threads posting single-row requests to ``/v2/models/{endpoint}/infer``."""

    url: str
    endpoint: str
    workers: int = 3
    n_features: int = 4
    seed: int = 0
    # Applied to each drawn row; may be swapped while the load runs (e.g. to start a breach).
    shape_rows: Callable[[np.ndarray], np.ndarray] | None = None
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> BackgroundLoad:
        for index in range(self.workers):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        rng = np.random.default_rng(self.seed * 100 + index)
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                row = rng.normal(size=(1, self.n_features)).astype(np.float32)
                if self.shape_rows is not None:
                    row = self.shape_rows(row)
                body = {"inputs": [{"name": "input", "shape": list(row.shape), "datatype": "FP32",
                                    "data": row.ravel().tolist()}]}
                try:
                    response = http.post(f"{self.url}/v2/models/{self.endpoint}/infer", json=body)
                except httpx.TransportError:
                    self.answers.append(Answer(row, 0, None))
                    time.sleep(0.05)
                    continue
                payload = response.json()
                if response.status_code == 200:
                    output = payload["outputs"][0]
                    self.answers.append(Answer(row, 200, int(payload["model_version"]),
                                               np.asarray(output["data"]).reshape(output["shape"])))
                else:
                    found = _FAILED_VERSION.search(payload.get("error", ""))
                    self.answers.append(Answer(row, response.status_code,
                                               int(found.group(1)) if found else None))

    def since(self, start: int) -> list[Answer]:
        return self.answers[start:]

    def versions(self, start: int = 0) -> Counter[int | None]:
        return Counter(a.version for a in self.since(start) if a.status == 200)

    def failures(self, start: int = 0) -> list[Answer]:
        return [a for a in self.since(start) if a.status != 200]
