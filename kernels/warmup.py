"""Compile (or load from Numba's on-disk cache) every kernel before traffic arrives.

Kernels are compiled from explicit signatures when their module is imported, so
importing them is most of the work; the calls below then run each entry point once on
tiny inputs, which also builds the Wasserstein null of a given profile. Call
:func:`warmup` at replica start-up so no request pays compile time.
"""

from __future__ import annotations

import time

import numpy as np

from kernels.profile import ReferenceProfile


def warmup(profile: ReferenceProfile | None = None) -> float:
    """Compile and exercise every kernel; with ``profile``, also precompute its null models.

    Returns the seconds it took: about 30 s on two cores with a cold Numba cache, under a
    second once the on-disk cache is warm.
    """
    started = time.perf_counter()
    from kernels.drift import drift_report
    from kernels.percentiles import RingBuffer
    from kernels.quality import LiveWindow
    from kernels.sketch import Sketch
    from kernels.statistics import chi_square, ks_2samp, psi, wasserstein
    from kernels.windows import SketchWindow

    sketch = Sketch()
    sketch.add(0.001)
    sketch.add_many(np.array([0.002, 0.003]))
    sketch.quantiles([0.5, 0.99])
    (sketch.copy().merge(sketch) - sketch).to_bytes()
    SketchWindow(2, 1.0, clock=lambda: 0.0).quantiles([0.5])
    RingBuffer(4).percentiles([50.0])
    values = np.linspace(0.0, 1.0, 64)
    psi([5, 5], [4, 6])
    chi_square([5, 5], [4, 6])
    ks_2samp(values, values[::2])
    wasserstein(values, values[::2])
    tiny = ReferenceProfile.from_matrix(np.column_stack([values, values.round(1)]), bins=4,
                                        categorical=[1])
    drift_report(tiny, np.column_stack([values, values.round(1)])[:50], test="ks")
    if profile is not None:
        rows = np.zeros((1, profile.n_features))
        window = LiveWindow(profile, sample_capacity=1)
        window.update(rows)
        drift_report(profile, window, test="wasserstein")
    return time.perf_counter() - started
