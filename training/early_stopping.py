"""Early stopping on a plateau: the rule, kept apart from the training loop so it is testable.

Every worker runs the same rule on the same all-reduced metric, so they all stop at the
same epoch without having to agree on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """Tracks the best value of one metric; ``should_stop`` after ``patience`` flat epochs.

    A value counts as better only when it beats the best by more than ``min_delta``.
    ``patience=None`` never stops but still tracks the best epoch.
    """

    mode: str = "min"
    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {self.mode!r}")

    def update(self, value: float, epoch: int) -> bool:
        """Record one epoch's value; True when it is the new best."""
        if math.isnan(value):
            # A NaN loss is never an improvement (and training has probably diverged).
            self.epochs_without_improvement += 1
            return False
        if self.best is None or self._better(value, self.best):
            self.best, self.best_epoch = float(value), epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_without_improvement >= self.patience

    def _better(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
