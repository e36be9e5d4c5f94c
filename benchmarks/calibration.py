"""Drift calibration report: false-alarm rate and power of every statistic, per feature kind.

Run from the repository root::

    python -m benchmarks.calibration          # [--trials 400] [--quick]

Writes ``benchmarks/results/calibration.json``, ``calibration.md`` and
``calibration.png`` (a heat map of the false-alarm rates). Each trial draws a fresh
reference of ``--reference-rows`` rows holding one feature of every kind below, and a
live window of each size from the same distributions (false alarms) or from the shifted
ones in :data:`SHIFTS` (power), then runs ``kernels.drift_report`` uncorrected. Trials
are independent, so a calibrated statistic's alarm count is binomial(trials, alpha); a
rate more than :func:`tolerance` from alpha is marked. A statistic that declines for a
feature (``FeatureDrift.declined``) is reported as declined, never as a rate; the
verdict columns are what ``drift_report(test=...)`` decides, fallbacks included.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # see benchmarks/kernels.py

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ALPHA = 0.05
WINDOWS = (50, 200, 1000, 5000, 20_000)
# Rare categories with these probabilities; the reference's unseen bin stays empty.
CATEGORY_P = np.array([0.5, 0.25, 0.15, 0.07, 0.025, 0.004, 0.001])


@dataclass(frozen=True)
class FeatureKind:
    """One kind of feature: how to draw it, and the drifted version power is measured on."""

    name: str
    draw: Callable[[np.random.Generator, int], np.ndarray]
    shifted: Callable[[np.random.Generator, int], np.ndarray]
    shift: str  # the shift, in words
    categorical: bool = False
    # A constant: under the null no live value can differ, so the exact test never alarms
    # (a rate of 0 is its calibration, not a miss).
    exact: bool = False


def _missing(values: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    values[rng.random(values.size) < rate] = np.nan
    return values


KINDS = (
    FeatureKind("continuous", lambda r, n: r.normal(size=n), lambda r, n: r.normal(0.1, 1.0, n),
                "mean +0.1 sd"),
    FeatureKind("heavy tails (t, 2 df)", lambda r, n: r.standard_t(2, n),
                lambda r, n: r.standard_t(2, n) + 0.1, "location +0.1"),
    FeatureKind("integer with ties (Poisson 3)", lambda r, n: r.poisson(3.0, n).astype(float),
                lambda r, n: r.poisson(3.15, n).astype(float), "mean 3 -> 3.15"),
    FeatureKind("binary 0/1 (30% ones)", lambda r, n: (r.random(n) < 0.3).astype(float),
                lambda r, n: (r.random(n) < 0.33).astype(float), "ones 30% -> 33%"),
    FeatureKind("binary 0/1 (5% ones)", lambda r, n: (r.random(n) < 0.05).astype(float),
                lambda r, n: (r.random(n) < 0.065).astype(float), "ones 5% -> 6.5%"),
    FeatureKind("categorical, rare categories", lambda r, n: r.choice(CATEGORY_P.size, n, p=CATEGORY_P).astype(float),
                lambda r, n: r.choice(CATEGORY_P.size, n, p=np.r_[0.47, CATEGORY_P[1:-1], 0.031]).astype(float),
                "3% of mass from the top category to the rarest", categorical=True),
    FeatureKind("constant", lambda r, n: np.full(n, 7.0),
                lambda r, n: np.where(r.random(n) < 0.01, 8.0, 7.0), "1% of values 7 -> 8", exact=True),
    FeatureKind("mostly missing (95%)", lambda r, n: _missing(r.normal(size=n), r, 0.95),
                lambda r, n: _missing(r.normal(0.3, 1.0, n), r, 0.95), "present values +0.3 sd"),
)


def tolerance(trials: int, alpha: float = ALPHA) -> float:
    """Allowed |rate - alpha| for a calibrated statistic: 3.5 binomial standard deviations."""
    return 3.5 * math.sqrt(alpha * (1 - alpha) / trials)


def _matrix(rng: np.random.Generator, rows: int, shifted: bool) -> np.ndarray:
    return np.column_stack([(k.shifted if shifted else k.draw)(rng, rows) for k in KINDS])


def run_trials(trials: int, windows: tuple[int, ...] = WINDOWS, reference_rows: int = 20_000,
               shifted: bool = False, seed: int = 0) -> dict[str, Any]:
    """p-values of every statistic (NaN where declined or not applicable), as an array
    ``[trials, windows, kinds, statistics]``, plus the decline reasons seen per kind."""
    from kernels import ReferenceProfile, drift_report
    from kernels.calibration import STATISTICS

    rng = np.random.default_rng(seed)
    names = [k.name for k in KINDS]
    categorical = [k.name for k in KINDS if k.categorical]
    pvalues = np.full((trials, len(windows), len(KINDS), len(STATISTICS)), np.nan)
    reasons: dict[str, dict[str, str]] = {name: {} for name in names}
    for t in range(trials):
        profile = ReferenceProfile.from_matrix(_matrix(rng, reference_rows, False), names=names,
                                               categorical=categorical)
        for w, n in enumerate(windows):
            report = drift_report(profile, _matrix(rng, n, shifted), correction="none")
            for f, feature in enumerate(report.features):
                pvalues[t, w, f] = [feature.pvalues[s] for s in STATISTICS]
                for statistic, reason in feature.declined.items():
                    reasons[feature.name].setdefault(statistic, reason)
    return {"pvalues": pvalues, "declined": reasons}


def decided(pvalues: np.ndarray, test: str) -> np.ndarray:
    """The p-value ``drift_report(test=test)`` decides on: ``test``'s, else the first
    fallback's that has one (``kernels.drift.FALLBACK_TESTS``). Last axis: statistics."""
    from kernels.calibration import STATISTICS
    from kernels.drift import FALLBACK_TESTS

    out = np.full(pvalues.shape[:-1], np.nan)
    for name in reversed((test, *[s for s in FALLBACK_TESTS if s != test])):
        p = pvalues[..., STATISTICS.index(name)]
        out = np.where(np.isnan(p), out, p)
    return out


def rates(pvalues: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Alarm rate over trials (axis 0); NaN where a statistic never had a p-value."""
    tested = (~np.isnan(pvalues)).sum(axis=0)
    alarms = (pvalues <= alpha).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tested > 0, alarms / np.maximum(tested, 1), np.nan)


def family_rates(pvalues: np.ndarray, test: str, alpha: float = ALPHA) -> np.ndarray:
    """Per window, the share of trials where Benjamini-Hochberg over all features alarms."""
    from kernels.calibration import adjust_pvalues

    p = decided(pvalues, test)  # [trials, windows, kinds]
    alarms = np.zeros(p.shape[1])
    for t in range(p.shape[0]):
        for w in range(p.shape[1]):
            alarms[w] += bool(np.any(adjust_pvalues(p[t, w], "bh") <= alpha))
    return alarms / p.shape[0]


def report(trials: int, power_trials: int, reference_rows: int) -> dict[str, Any]:
    """Run the false-alarm and power trials and summarise them."""
    from kernels.calibration import STATISTICS

    started = time.perf_counter()
    null = run_trials(trials, WINDOWS, reference_rows, seed=1)
    null_seconds = time.perf_counter() - started
    power = run_trials(power_trials, WINDOWS, reference_rows, shifted=True, seed=2)
    columns = [*STATISTICS, *(f"verdict:{s}" for s in STATISTICS)]

    def table(p: np.ndarray) -> dict[str, dict[str, dict[str, float | None]]]:
        per_statistic = rates(p)  # [windows, kinds, statistics]
        verdicts = np.stack([rates(decided(p, s)) for s in STATISTICS], axis=-1)
        both = np.concatenate([per_statistic, verdicts], axis=-1)
        return {kind.name: {str(n): {c: (None if math.isnan(v) else round(float(v), 4))
                                     for c, v in zip(columns, both[w, k], strict=True)}
                            for w, n in enumerate(WINDOWS)}
                for k, kind in enumerate(KINDS)}

    return {
        "alpha": ALPHA, "trials": trials, "power_trials": power_trials,
        "reference_rows": reference_rows, "windows": list(WINDOWS),
        "tolerance": tolerance(trials),
        "false_alarm_rate": table(null["pvalues"]),
        "family_wise_bh": {s: dict(zip(map(str, WINDOWS), family_rates(null["pvalues"], s).round(4).tolist(),
                                       strict=True)) for s in STATISTICS},
        "power": table(power["pvalues"]),
        "shifts": {k.name: k.shift for k in KINDS},
        "declined": null["declined"],
        "seconds": {"false_alarm_trials": null_seconds, "total": time.perf_counter() - started},
    }


def miscalibrated(kind: str, rate: float | None, tol: float) -> bool:
    """Whether a false-alarm rate is outside alpha's binomial error (exact tests: above 0)."""
    if rate is None:
        return False
    if next(k for k in KINDS if k.name == kind).exact:
        return rate > 0.0
    return abs(rate - ALPHA) > tol


def _cell(rate: float | None, bold: bool) -> str:
    if rate is None:
        return "declined"
    return f"**{rate:.3f}**" if bold else f"{rate:.3f}"


def markdown(result: dict[str, Any], environment: str) -> str:
    """The report as markdown: rates per statistic, kind and window, and power."""
    from kernels.calibration import STATISTICS

    tol = result["tolerance"]
    lines = ["# Drift calibration", "", environment, "",
             f"alpha = {result['alpha']}, no correction; {result['trials']} independent trials per cell for "
             f"false alarms, {result['power_trials']} for power; each trial draws a {result['reference_rows']:,}-row "
             "reference and one live window per size. A calibrated statistic alarms on alpha of clean "
             f"windows within {tol:.3f} (3.5 binomial standard deviations); rates outside that are **bold**. "
             "A constant feature gets the exact test (no live value can differ under the null), "
             "so its calibrated rate is 0. "
             "`declined`: the statistic cannot be calibrated for that feature and says so in the report "
             "(reasons below). The verdict columns are what `drift_report(test=...)` decides on, with its "
             "fallbacks where the chosen statistic declines. Heat map: `calibration.png`.", "",
             "## False-alarm rate per statistic", "",
             "| feature kind | window | " + " | ".join(STATISTICS) + " |", "|---" * (2 + len(STATISTICS)) + "|"]
    for kind, by_window in result["false_alarm_rate"].items():
        for n, row in by_window.items():
            lines.append(f"| {kind} | {n} | " + " | ".join(
                _cell(row[s], miscalibrated(kind, row[s], tol)) for s in STATISTICS) + " |")
    lines += ["", "## False-alarm rate of the verdict, by the test asked for", "",
              "| feature kind | window | " + " | ".join(STATISTICS) + " |", "|---" * (2 + len(STATISTICS)) + "|"]
    for kind, by_window in result["false_alarm_rate"].items():
        for n, row in by_window.items():
            lines.append(f"| {kind} | {n} | " + " | ".join(
                _cell(row[f"verdict:{s}"], miscalibrated(kind, row[f"verdict:{s}"], tol)) for s in STATISTICS) + " |")
    lines += ["", "## Family-wise alarm rate, Benjamini-Hochberg over every feature above", "",
              "| test | " + " | ".join(map(str, result["windows"])) + " |", "|---" * (1 + len(result["windows"])) + "|"]
    for s, by_window in result["family_wise_bh"].items():
        lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in by_window.values()) + " |")
    lines += ["", "## Detection power of the verdict at the stated shifts", "",
              "| feature kind | shift | window | " + " | ".join(STATISTICS) + " |", "|---" * (3 + len(STATISTICS)) + "|"]
    for kind, by_window in result["power"].items():
        for n, row in by_window.items():
            lines.append(f"| {kind} | {result['shifts'][kind]} | {n} | "
                         + " | ".join(_cell(row[f"verdict:{s}"], False) for s in STATISTICS) + " |")
    lines += ["", "## Why statistics decline", ""]
    for kind, reasons in result["declined"].items():
        for statistic, reason in sorted(reasons.items()):
            lines.append(f"- {kind}, {statistic}: {reason} (for example)")
    return "\n".join(lines) + "\n"


def heat_map(result: dict[str, Any], path: Path) -> None:
    """False-alarm rate per (kind, window) and statistic; declined cells grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kernels.calibration import STATISTICS

    rows = [(kind, n) for kind, by_window in result["false_alarm_rate"].items() for n in by_window]
    grid = np.array([[np.nan if (v := result["false_alarm_rate"][k][n][s]) is None else v for s in STATISTICS]
                     for k, n in rows])
    figure, axes = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    cmap = matplotlib.colormaps["RdBu_r"].copy()
    cmap.set_bad("0.85")
    image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=2 * ALPHA, aspect="auto")
    for i, j in np.ndindex(grid.shape):
        text = "declined" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
        bold = not np.isnan(grid[i, j]) and miscalibrated(rows[i][0], float(grid[i, j]), result["tolerance"])
        dark = not np.isnan(grid[i, j]) and abs(grid[i, j] - ALPHA) > 0.7 * ALPHA  # white on dark
        axes.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if dark else "black",
                  fontweight="bold" if bold else "normal")
    axes.set_xticks(range(len(STATISTICS)), STATISTICS)
    axes.set_yticks(range(len(rows)), [f"{k}, n={n}" for k, n in rows], fontsize=7)
    axes.set_title(f"False-alarm rate at alpha = {ALPHA} ({result['trials']} trials per cell; bold: outside "
                   f"+-{result['tolerance']:.3f})", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.03)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500, help="false-alarm trials per cell")
    parser.add_argument("--power-trials", type=int, default=200, help="power trials per cell")
    parser.add_argument("--reference-rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="60 trials (a smoke test; noisy)")
    args = parser.parse_args(argv)
    trials, power_trials = (60, 30) if args.quick else (args.trials, args.power_trials)

    import platform

    import numba

    from kernels import warmup

    warmup()
    result = report(trials, power_trials, args.reference_rows)
    environment = (f"Run {time.strftime('%Y-%m-%d %H:%M:%S')}, Python {platform.python_version()}, "
                   f"NumPy {np.__version__}, Numba {numba.__version__}; "
                   f"{result['seconds']['total']:.0f} s.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "calibration.md").write_text(markdown(result, environment))
    heat_map(result, RESULTS / "calibration.png")
    print(markdown(result, environment))
    print(f"wrote {RESULTS / 'calibration.json'}, calibration.md and calibration.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
