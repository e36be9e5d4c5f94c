"""Report a job to the experiment tracker: the run, its parameters and environment, each epoch.

Per-epoch metrics are logged by a Ray Train callback that runs in the Train controller,
which Ray places on the driver's node: whatever control-plane address the job's driver
can reach, the callback can too, while workers on other nodes might not.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from ray.train import UserCallback

from training.schemas import JobSpec


class TrackerCallback(UserCallback):
    """Logs every epoch's metrics to the run (step = epoch) and prints a progress line."""

    def __init__(self, url: str, token: str | None, run_id: str, epochs: int) -> None:
        self.url, self.token, self.run_id, self.epochs = url, token, run_id, epochs
        self._client: Any = None
        self._failures = 0

    def __getstate__(self) -> dict[str, Any]:
        # The callback is shipped to the controller actor; its HTTP client is made there.
        return {**self.__dict__, "_client": None}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or "epoch" not in metrics[0]:
            return
        first = metrics[0]  # all ranks report the same all-reduced values
        epoch = int(first["epoch"])
        values = epoch_metrics(first)
        if checkpoint is not None:
            values["checkpoint_epoch"] = float(epoch)
        print(progress_line(epoch, self.epochs, values), flush=True)
        try:
            self._tracker().log_metrics(self.run_id, values, step=epoch)
        except Exception as error:  # a tracker hiccup must not kill hours of training
            self._failures += 1
            print(f"warning: could not log epoch {epoch} to the tracker at {self.url}: {error}",
                  file=sys.stderr, flush=True)

    def _tracker(self) -> Any:
        if self._client is None:
            from control_plane.client import Client

            self._client = Client(self.url, self.token)
        return self._client


def epoch_metrics(reported: dict[str, Any]) -> dict[str, float]:
    """The finite numbers a worker reported, without the epoch counter itself."""
    return {key: float(value) for key, value in reported.items()
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value)}


def progress_line(epoch: int, epochs: int, values: dict[str, float]) -> str:
    """``epoch  3/20  train_loss 0.4123  val_loss 0.3810  val_accuracy 0.9361  5,120 samples/s``."""
    width = len(str(epochs))
    shown = [f"{key} {values[key]:.4f}" for key in
             ("train_loss", "val_loss", "val_accuracy", "val_mae", "val_rmse") if key in values]
    line = f"epoch {epoch:>{width}}/{epochs}  " + "  ".join(shown)
    if "samples_per_s" in values:
        line += f"  {values['samples_per_s']:,.0f} samples/s"
    if "checkpoint_epoch" in values:
        line += "  [checkpoint]"
    if values.get("stopped_early"):
        line += "  stopping early: no improvement"
    return line


def flat_params(spec: JobSpec) -> dict[str, Any]:
    """The spec as run parameters: ``{"hyperparameters.learning_rate": 0.001, …}``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    walk("", spec.model_dump(mode="json", exclude={"experiment"}))
    return flat


def run_environment(cluster: dict[str, Any]) -> dict[str, Any]:
    """What ``capture_environment`` records, plus the Ray cluster the job ran on."""
    from control_plane.environment import capture_environment

    environment = capture_environment()
    environment["ray_cluster"] = cluster
    return environment
