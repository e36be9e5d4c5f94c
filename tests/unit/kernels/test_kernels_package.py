"""The kernels package's public face: pinned names, documented, and a cheap import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import kernels

PUBLIC = {
    "DriftReport", "FeatureDrift", "FeatureProfile", "FeatureQuality", "InvalidValueError",
    "KernelError", "LiveWindow", "ReferenceProfile", "RingBuffer", "ShapeMismatchError",
    "Sketch", "SketchWindow", "adjust_pvalues", "chi_square", "drift_report", "hellinger",
    "js_distance", "kl_divergence", "ks_2samp", "psi", "thresholds", "warmup", "wasserstein",
}


def test_public_names_are_pinned() -> None:
    assert set(kernels.__all__) == PUBLIC
    assert sorted(dir(kernels)) == sorted(PUBLIC)


def test_importing_kernels_does_not_import_numba() -> None:
    code = "import sys, kernels; assert 'numba' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    # ...and touching a public name loads it (and Numba) on demand.
    code = "import sys, kernels; kernels.Sketch; assert 'numba' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in PUBLIC:
        value = getattr(kernels, name)
        assert inspect.getdoc(value), name
        if inspect.isclass(value) and value.__module__.startswith("kernels"):
            for attr, member in vars(value).items():
                if attr.startswith("_") or not (callable(member) or isinstance(member, property | classmethod)):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr}"


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        kernels.NotAThing  # noqa: B018
    except AttributeError as exc:
        assert "NotAThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_warmup_compiles_everything_and_reports_time() -> None:
    import numpy as np

    profile = kernels.ReferenceProfile.from_matrix(np.random.default_rng(0).normal(size=(500, 3)))
    assert kernels.warmup(profile) >= 0.0
