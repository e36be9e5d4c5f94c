"""A background load client for tests: real HTTP requests, every outcome recorded.

Nothing is lost: a transport error, a timeout, a body that is not JSON or not an inference
answer is recorded as a failed :class:`Answer` (with ``error`` saying what happened), and a
worker thread that dies anyway makes :meth:`BackgroundLoad.stop` fail the test.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from serving.names import endpoint_url

_FAILED_VERSION = re.compile(r":(\d+) failed")


@dataclass
class Answer:
    row: np.ndarray
    status: int  # HTTP status; 0 when no HTTP answer came (transport error, timeout)
    version: int | None  # who answered, or whose failure it was
    outputs: np.ndarray | None = None
    at: float = field(default_factory=time.monotonic)
    error: str | None = None  # what went wrong, for every failed answer
    sent: float = 0.0  # time.monotonic() when the request left: routed by the table then

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class BackgroundLoad:
    """``workers`` threads posting single-row requests to ``/v2/models/{endpoint}/infer``."""

    url: str
    endpoint: str
    workers: int = 3
    n_features: int = 4
    seed: int = 0
    timeout_s: float = 30.0
    # Applied to each drawn row; may be swapped while the load runs (e.g. to start a breach).
    shape_rows: Callable[[np.ndarray], np.ndarray] | None = None
    # A text model: each request is one text drawn from these (a BYTES input named
    # ``text_input``) instead of a row of numbers.
    texts: list[str] | None = None
    text_input: str = "review"
    answers: list[Answer] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)  # tracebacks of worker threads that died
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> BackgroundLoad:
        for index in range(self.workers):
            thread = threading.Thread(target=self._guarded, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the workers; AssertionError if one died or would not stop."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not self.crashes, "a load worker died:\n" + "\n".join(self.crashes)
        assert not stuck, f"load workers did not stop: {stuck}"

    def _guarded(self, index: int) -> None:
        try:
            self._run(index)
        except BaseException:  # recorded, and stop() fails the test with it
            self.crashes.append(traceback.format_exc())

    def _run(self, index: int) -> None:
        rng = np.random.default_rng(self.seed * 100 + index)
        with httpx.Client(timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                if self.texts is not None:
                    row = np.asarray([self.texts[int(rng.integers(len(self.texts)))]], dtype=object)
                else:
                    row = rng.normal(size=(1, self.n_features)).astype(np.float32)
                    if self.shape_rows is not None:
                        row = self.shape_rows(row)
                sent = time.monotonic()
                answer = self._one(http, row)
                answer.sent = sent
                self.answers.append(answer)

    def _one(self, http: httpx.Client, row: np.ndarray) -> Answer:
        if self.texts is not None:
            body = {"inputs": [{"name": self.text_input, "shape": [1], "datatype": "BYTES",
                                "data": [str(row[0])]}]}
        else:
            body = {"inputs": [{"name": "input", "shape": list(row.shape), "datatype": "FP32",
                                "data": row.ravel().tolist()}]}
        try:
            response = http.post(endpoint_url(self.url, self.endpoint, "infer"), json=body)
        except httpx.HTTPError as error:  # connection refused or reset, timeouts, protocol errors
            time.sleep(0.05)
            return Answer(row, 0, None, error=f"{type(error).__name__}: {error}")
        try:
            payload = response.json()
        except ValueError:
            return Answer(row, response.status_code, None,
                          error=f"not JSON: {response.text[:200]!r}")
        if response.status_code == 200:
            try:
                output = payload["outputs"][0]
                return Answer(row, 200, int(payload["model_version"]),
                              np.asarray(output["data"]).reshape(output["shape"]))
            except (KeyError, IndexError, TypeError, ValueError) as error:
                return Answer(row, 200, None, error=f"not an inference answer ({error!r}): "
                                                    f"{str(payload)[:200]}")
        message = payload.get("error", "") if isinstance(payload, dict) else ""
        found = _FAILED_VERSION.search(str(message))
        return Answer(row, response.status_code, int(found.group(1)) if found else None,
                      error=str(message)[:500] or f"HTTP {response.status_code}")

    def since(self, start: int) -> list[Answer]:
        return self.answers[start:]

    def versions(self, start: int = 0) -> Counter[int | None]:
        return Counter(a.version for a in self.since(start) if a.ok)

    def sent_after(self, moment: float) -> list[Answer]:
        """The answers to requests sent after ``moment`` (time.monotonic()): not to those in
        flight then, which may still come back from the version routed before it."""
        return [a for a in list(self.answers) if a.sent > moment]

    def versions_sent_after(self, moment: float) -> Counter[int | None]:
        return Counter(a.version for a in self.sent_after(moment) if a.ok)

    def failures(self, start: int = 0) -> list[Answer]:
        return [a for a in self.since(start) if not a.ok]
