"""Monitor snapshots made by hand: a version's numbers as rollouts and alerts read them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serving.monitoring import (
    Accuracy,
    Drift,
    DriftVerdict,
    Latency,
    ShadowComparison,
    Traffic,
    VersionSnapshot,
)
from serving.monitoring.snapshot import (
    FeatureDrift,
    LatencyBins,
    PredictionDrift,
    Quantiles,
    RoutedRequests,
)


def served(requests: int = 100, error_rate: float = 0.0, p95: float = 10.0, *,
           p99: float | None = None, shadow: ShadowComparison | None = None,
           latency_bins: Mapping[int, int] | None = None,
           labels: tuple[int, int] | None = None,
           p95_bounds: tuple[float, float] | None = None,
           p99_bounds: tuple[float, float] | None = None,
           p95_paired_bounds: tuple[float, float] | None = None) -> VersionSnapshot:
    """A version that answered ``requests`` randomly routed requests, ``error_rate`` of them
    with a 5xx, in ``p95`` ms at the 95th percentile (half that at the median, and 1.2
    times it at the 99th unless ``p99`` says otherwise); its latency sketch's bins are
    ``latency_bins`` ({key: requests}), and ``labels`` (correct, labelled) its joined
    feedback as a classifier. The quantiles' confidence bounds are the quantiles themselves
    (ample evidence) unless ``p95_bounds``, ``p99_bounds`` or ``p95_paired_bounds`` say
    otherwise."""
    errors = round(requests * error_rate)
    p99 = p95 * 1.2 if p99 is None else p99
    latency = Quantiles(count=requests, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p99,
                        p95_bounds_ms=p95_bounds or (p95, p95), p99_bounds_ms=p99_bounds or (p99, p99),
                        p95_paired_bounds_ms=p95_paired_bounds or (p95, p95))
    keys = sorted(latency_bins or {})
    bins = LatencyBins(keys=tuple(keys), counts=tuple((latency_bins or {})[k] for k in keys))
    accuracy = Accuracy()
    if labels is not None:
        correct, labelled = labels
        accuracy = Accuracy(task="classification", labelled=labelled,
                            accuracy=correct / labelled if labelled else None)
    return VersionSnapshot(
        traffic=Traffic(requests=requests, server_errors=errors, error_rate=error_rate,
                        throughput_rps=10.0,
                        routing={"random": RoutedRequests(requests=requests, server_errors=errors)}),
        latency=Latency(all_requests=latency, sample=latency, all_bins=bins, sample_bins=bins),
        shadow=shadow or ShadowComparison(), accuracy=accuracy)


def drifting(verdict: str, drifted: Sequence[str] = (), *, requests: int = 0, samples: int = 0,
             prediction: str = "insufficient") -> VersionSnapshot:
    """A version whose input drift verdict is ``verdict``, with the ``drifted`` features
    (adjusted p-value 1e-9), and the predictions' verdict ``prediction``."""
    features = {name: FeatureDrift(statistic=None, p_value=1e-9, raw_p_value=None, drifted=True,
                                   test="ks", n=samples) for name in drifted}
    return VersionSnapshot(
        traffic=Traffic(requests=requests),
        drift=Drift(verdict=DriftVerdict(verdict), samples=samples, features=features,
                    drifted_features=tuple(drifted),
                    prediction=PredictionDrift(verdict=DriftVerdict(prediction))))
