"""Numba kernels for the request path: quantile sketches, drift statistics, data quality.

Importing this package is cheap and does not import Numba: each public name is loaded on
first access, and Numba compiles (or loads its cache) then, or in :func:`warmup`.

=====================  ========================================================
name                   what it is
=====================  ========================================================
``Sketch``             mergeable DDSketch quantile sketch for positive values
``SketchWindow``       rotating ring of sketches: quantiles over the last N s
``RingBuffer``         last N raw values; exact ``numpy.percentile`` answers
``ReferenceProfile``   per-feature reference histograms, extrema, samples
``FeatureProfile``     one feature of a reference profile
``LiveWindow``         live histograms, quality counters and recent samples
``FeatureQuality``     missing / out-of-range counts of one feature
``drift_report``       calibrated, corrected drift verdicts for every feature
``DriftReport``        the verdicts, per feature (``FeatureDrift``)
``thresholds``         per-statistic alarm thresholds at a window size
``adjust_pvalues``     Benjamini-Hochberg / Bonferroni adjustment
``psi`` ...            single-feature statistics (see :mod:`kernels.statistics`)
``warmup``             compile every kernel before serving traffic
=====================  ========================================================
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from kernels.errors import InvalidValueError, KernelError, ShapeMismatchError

if TYPE_CHECKING:
    from kernels.calibration import adjust_pvalues, thresholds
    from kernels.drift import DriftReport, FeatureDrift, drift_report
    from kernels.percentiles import RingBuffer
    from kernels.profile import FeatureProfile, ReferenceProfile
    from kernels.quality import FeatureQuality, LiveWindow
    from kernels.sketch import Sketch
    from kernels.statistics import (
        chi_square,
        hellinger,
        js_distance,
        kl_divergence,
        ks_2samp,
        psi,
        wasserstein,
    )
    from kernels.warmup import warmup
    from kernels.windows import SketchWindow

# Public name -> module that defines it; loaded on first attribute access.
_LAZY = {
    "Sketch": "kernels.sketch",
    "SketchWindow": "kernels.windows",
    "RingBuffer": "kernels.percentiles",
    "ReferenceProfile": "kernels.profile",
    "FeatureProfile": "kernels.profile",
    "LiveWindow": "kernels.quality",
    "FeatureQuality": "kernels.quality",
    "drift_report": "kernels.drift",
    "DriftReport": "kernels.drift",
    "FeatureDrift": "kernels.drift",
    "thresholds": "kernels.calibration",
    "adjust_pvalues": "kernels.calibration",
    "psi": "kernels.statistics",
    "kl_divergence": "kernels.statistics",
    "js_distance": "kernels.statistics",
    "hellinger": "kernels.statistics",
    "chi_square": "kernels.statistics",
    "ks_2samp": "kernels.statistics",
    "wasserstein": "kernels.statistics",
    "warmup": "kernels.warmup",
}

__all__ = [
    "DriftReport",
    "FeatureDrift",
    "FeatureProfile",
    "FeatureQuality",
    "InvalidValueError",
    "KernelError",
    "LiveWindow",
    "ReferenceProfile",
    "RingBuffer",
    "ShapeMismatchError",
    "Sketch",
    "SketchWindow",
    "adjust_pvalues",
    "chi_square",
    "drift_report",
    "hellinger",
    "js_distance",
    "kl_divergence",
    "ks_2samp",
    "psi",
    "thresholds",
    "warmup",
    "wasserstein",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
