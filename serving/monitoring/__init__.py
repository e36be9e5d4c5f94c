"""Monitoring: what replicas observe of their traffic and the Monitor that merges it.

In a replica, :mod:`~serving.monitoring.stats` records each request's status and latency
and :mod:`~serving.monitoring.observations` its inputs and predictions (against the
version's reference profile, :mod:`~serving.monitoring.profiles`); about once a second the
replica ships them as a delta to the Monitor (:mod:`~serving.monitoring.monitor`, one named
Ray actor), which keeps rolling windows per (endpoint, version) and answers with the
drift verdicts of :mod:`~serving.monitoring.drift_window`, the quality and accuracy
sections of :mod:`~serving.monitoring.sections`, the anomalies of
:mod:`~serving.monitoring.anomalies` and the ground-truth join of
:mod:`~serving.monitoring.feedback` (fed by the bodies :mod:`~serving.monitoring.feedback_wire`
parses).

The Monitor answers with the typed schema of :mod:`~serving.monitoring.snapshot`, named
here; its counters' names are spelled in :mod:`~serving.monitoring.counters`. Importing
this package is cheap: the modules that load NumPy and the kernels are imported where
they are used.
"""

from serving.monitoring.snapshot import (
    Accuracy,
    Anomalies,
    Drift,
    DriftVerdict,
    Latency,
    Quality,
    Quantiles,
    Replicas,
    ShadowComparison,
    Traffic,
    VersionSnapshot,
    VersionTotals,
)

__all__ = [
    "Accuracy",
    "Anomalies",
    "Drift",
    "DriftVerdict",
    "Latency",
    "Quality",
    "Quantiles",
    "Replicas",
    "ShadowComparison",
    "Traffic",
    "VersionSnapshot",
    "VersionTotals",
]
