"""A reference profile fits the registration call whatever the model's width."""

from __future__ import annotations

import json

import numpy as np
from scipy import stats

from control_plane.api.call_gate import MAX_BODY_BYTES
from kernels import ReferenceProfile
from serving.monitoring.profiles import (
    MIN_SAMPLE_PER_FEATURE,
    SAMPLE_BUDGET,
    build_reference_profile,
)


def _rows(width: int, count: int = 3000) -> np.ndarray:
    return np.random.default_rng(width).normal(size=(count, width))


def test_a_narrow_model_keeps_every_sample_it_asked_for() -> None:
    profile = ReferenceProfile.from_dict(build_reference_profile(_rows(64), sample_size=1024))
    assert {len(f.sample) for f in profile.features} == {1024}


def test_a_wide_model_registers_with_its_profile() -> None:
    """At 256 samples a feature (what training keeps), a profile of 1,000 features was
    5.8 MB and the registration call refused it (4 MiB); the budget keeps it inside."""
    width = 1000
    rows = _rows(width)
    document = build_reference_profile(rows, rows[:, :3], task="classification", sample_size=256)
    assert len(json.dumps({"manifest": {"reference_profile": document}})) < 0.8 * MAX_BODY_BYTES
    profile = ReferenceProfile.from_dict(document)
    kept = {len(f.sample) for f in profile.features}
    assert kept == {SAMPLE_BUDGET // width} and min(kept) >= MIN_SAMPLE_PER_FEATURE
    # The fewer samples still stand for the data: the sample's CDF is within 1/(2 kept)
    # of the whole column's (plus the column's own finite-sample noise, far smaller).
    column = np.sort(rows[:, 7])
    sample = np.asarray(profile.features[7].sample)
    assert stats.ks_2samp(sample, column).statistic <= 1 / (2 * len(sample)) + 1e-9


def test_the_floor_holds_for_the_widest_models() -> None:
    profile = ReferenceProfile.from_dict(build_reference_profile(_rows(8000, 200), sample_size=256))
    assert {len(f.sample) for f in profile.features} == {MIN_SAMPLE_PER_FEATURE}
