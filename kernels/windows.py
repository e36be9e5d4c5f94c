"""Rolling time windows of sketches: a ring of sub-sketches that rotates with a clock.

The monitor keeps one window per (endpoint, version) and asks for "p95 over the last
30 s". A window of ``slots`` sub-sketches, each covering ``slot_seconds``, answers that
by merging the newest sub-sketches; a slot older than the window is reset and reused.
The clock is injected so tests drive rotation without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np

from kernels.errors import InvalidValueError
from kernels.sketch import Sketch


class SketchWindow:
    """The last ``slots * slot_seconds`` seconds of values, in ``slots`` rotating sketches.

    Time is cut into slots aligned on multiples of ``slot_seconds`` of the clock. A query
    for the last ``seconds`` merges the ``ceil(seconds / slot_seconds)`` newest slots, the
    current (partial) one included: the resolution is one slot, one way or the other. (The
    Monitor asks for whole slots, those that began within its window.) A clock that steps
    backwards is treated as standing still, so late values land in the current slot.
    """

    def __init__(self, slots: int = 6, slot_seconds: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic, alpha: float = 0.01,
                 min_value: float = 1e-9, max_value: float = 1e6) -> None:
        if slots < 1 or not slot_seconds > 0:
            raise InvalidValueError(
                f"A window needs slots >= 1 and slot_seconds > 0, got {slots!r} and {slot_seconds!r}.")
        self.slots = int(slots)
        self.slot_seconds = float(slot_seconds)
        self._clock = clock
        template = Sketch(alpha, min_value, max_value)
        # One 2-D array per kind of state, a row per slot; each slot's Sketch is a view of
        # its rows, so a query merges slots in a single compiled call.
        self._bins = np.zeros((self.slots, template._bins.size), dtype=np.int64)
        self._counters = np.zeros((self.slots, template._counters.size), dtype=np.int64)
        self._extrema = np.tile(template._extrema, (self.slots, 1))
        self._ring = [template._view(self._bins[i], self._counters[i], self._extrema[i])
                      for i in range(self.slots)]
        self._template = template
        self._epoch = math.floor(clock() / self.slot_seconds)  # slot number of the newest slot
        self._head = 0  # ring index of the newest slot

    @property
    def span_seconds(self) -> float:
        """Longest history the window can answer for."""
        return self.slots * self.slot_seconds

    def _rotate(self) -> Sketch:
        """Advance to the clock's slot, resetting the slots that fell out; return it."""
        epoch = math.floor(self._clock() / self.slot_seconds)
        steps = epoch - self._epoch
        if steps > 0:
            # After a long idle gap every slot is stale; resetting more than all is waste.
            for _ in range(min(steps, self.slots)):
                self._head = (self._head + 1) % self.slots
                self._ring[self._head].reset()
            self._epoch = epoch
        return self._ring[self._head]

    def add(self, value: float) -> None:
        """Record one value at the clock's current time."""
        self._rotate().add(value)

    def add_many(self, values: Iterable[float] | np.ndarray) -> None:
        """Record a batch of values at the clock's current time."""
        self._rotate().add_many(values)

    def merge(self, sketch: Sketch, back: int = 0) -> None:
        """Fold a sketch (for instance a replica's delta) into the current slot, or into
        the one ``back`` slots before it (nothing where that has left the window)."""
        current = self._rotate()
        if back <= 0:
            current.merge(sketch)
        elif back < self.slots:
            self._ring[(self._head - back) % self.slots].merge(sketch)

    def _rows(self, seconds: float | None) -> np.ndarray:
        """Ring rows covering the last ``seconds``, newest first."""
        self._rotate()
        if seconds is None:
            count = self.slots
        elif seconds <= 0:
            raise InvalidValueError(f"A window query needs seconds > 0, got {seconds!r}.")
        else:
            count = min(self.slots, math.ceil(seconds / self.slot_seconds))
        return (self._head - np.arange(count, dtype=np.int64)) % self.slots

    def sketch(self, seconds: float | None = None) -> Sketch:
        """A new sketch of the last ``seconds`` (whole window when None), merged from slots."""
        merged = self._template.copy()
        merged.reset()
        for row in self._rows(seconds):
            merged.merge(self._ring[row])
        return merged

    def sketch_steps(self, seconds: float, step_seconds: float) -> list[Sketch]:
        """The last ``seconds`` cut into steps of ``step_seconds`` (whole slots, at least
        one), each merged into a new sketch, oldest step first; the newest step holds the
        current, partial slot."""
        rows = self._rows(seconds)
        per = max(1, round(step_seconds / self.slot_seconds))
        steps = []
        for start in range(0, len(rows), per):
            merged = self._template.copy()
            merged.reset()
            for row in rows[start:start + per]:
                merged.merge(self._ring[row])
            steps.append(merged)
        return steps[::-1]

    def quantiles(self, qs: Iterable[float], seconds: float | None = None) -> np.ndarray:
        """Quantiles of the last ``seconds`` (see :meth:`sketch`), merged in one call."""
        return self._template._merged_quantiles(self._bins, self._counters, self._extrema,
                                                self._rows(seconds), qs)

    def reset(self) -> None:
        """Forget everything; the clock keeps its place."""
        for sketch in self._ring:
            sketch.reset()
