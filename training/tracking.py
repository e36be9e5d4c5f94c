"""What a job tells the experiment tracker: run parameters, environment, epoch metrics, progress.

The per-epoch logging itself is :class:`training.callbacks.TrackerCallback`.
"""

from __future__ import annotations

import math
from typing import Any

from training.schemas import JobSpec


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
