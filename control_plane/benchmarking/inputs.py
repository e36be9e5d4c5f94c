"""Request bodies for a benchmark, drawn from a version's signature and reference profile.

Bodies are Open Inference Protocol JSON as ``tritonclient.http`` sends them by default
(inputs with name, shape, datatype and data; every output asked for in the binary
extension), so the server does the work a
real client's request costs. Values come from the reference profile where the version
has one whose features match the inputs (each feature drawn from its stored sample, or
from its histogram), so drift and range checks on the request path see ordinary data;
otherwise floats are standard normal, integers small, booleans fair coins.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from control_plane.errors import InvalidInputError
from serving.protocol.datatypes import from_numpy_dtype

BODIES = 64  # distinct bodies, sent in turn


def request_bodies(signature: dict[str, Any], profile: dict[str, Any] | None, *,
                   rows: int = 1, count: int = BODIES, seed: int = 0) -> list[bytes]:
    """``count`` JSON request bodies of ``rows`` rows each for ``signature`` (the manifest's)."""
    rng = np.random.default_rng(seed)
    specs = signature["inputs"]
    shapes = [_shape(spec, rows) for spec in specs]
    widths = [int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1 for shape in shapes]
    features = _profile_features(profile, sum(widths))
    bodies = []
    for _ in range(count):
        matrix = _draw_features(features, rows, rng) if features is not None else None
        tensors, column = [], 0
        for spec, shape, width in zip(specs, shapes, widths, strict=True):
            if matrix is not None and spec["dtype"] != "string" and len(shape) >= 1:
                values = matrix[:, column:column + width].reshape(shape)
                array = values.astype(np.dtype(spec["dtype"]), copy=False)
            else:
                array = _random(spec["dtype"], shape, rng)
            column += width
            tensors.append(_tensor(spec["name"], array))
        # tritonclient's default when no outputs are named: all of them, binary-encoded.
        document = {"inputs": tensors, "parameters": {"binary_data_output": True}}
        bodies.append(json.dumps(document, separators=(",", ":")).encode())
    return bodies


def _shape(spec: dict[str, Any], rows: int) -> list[int]:
    """Concrete dimensions: the first dynamic one (the batch axis) gets ``rows``, others 1."""
    shape, batch_given = [], False
    for index, dim in enumerate(spec["shape"]):
        if dim is None:
            shape.append(rows if not batch_given and index == 0 else 1)
            batch_given = batch_given or index == 0
        else:
            shape.append(int(dim))
    if len(shape) > 8 or int(np.prod(shape, dtype=np.int64)) > 16 * 1024 * 1024:
        raise InvalidInputError(
            f"input {spec['name']!r} of shape {spec['shape']} is too large to benchmark with "
            "generated data", detail={"field": "signature"})
    return shape


def _profile_features(profile: dict[str, Any] | None, width: int) -> list[dict[str, Any]] | None:
    """The profile's input features when they line up with the inputs' columns."""
    features = (profile or {}).get("features")
    if not isinstance(features, list) or len(features) != width:
        return None
    return features


def _draw_features(features: list[dict[str, Any]], rows: int, rng: np.random.Generator) -> np.ndarray:
    columns = [_draw_one(feature, rows, rng) for feature in features]
    return np.stack(columns, axis=1)


def _draw_one(feature: dict[str, Any], rows: int, rng: np.random.Generator) -> np.ndarray:
    sample = [v for v in feature.get("sample") or () if v is not None]
    if sample:
        return rng.choice(np.asarray(sample, dtype=np.float64), size=rows)
    edges, counts = feature.get("edges") or [], feature.get("counts") or []
    if len(edges) >= 2 and len(counts) == len(edges) - 1 and sum(counts) > 0:
        weights = np.asarray(counts, dtype=np.float64)
        bins = rng.choice(len(counts), size=rows, p=weights / weights.sum())
        low, high = np.asarray(edges[:-1])[bins], np.asarray(edges[1:])[bins]
        return low + (high - low) * rng.random(rows)
    low, high = feature.get("min"), feature.get("max")
    if low is not None and high is not None:
        return low + (high - low) * rng.random(rows)
    return rng.normal(size=rows)


def _random(dtype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if dtype == "string":
        return np.full(shape, "benchmark", dtype=object)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("int", "uint")):
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = from_numpy_dtype(array.dtype)
    if array.dtype == object:
        data: list[Any] = [str(v) for v in array.ravel()]
    elif datatype == "BOOL":
        data = [bool(v) for v in array.ravel()]
    else:
        data = array.ravel().tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}
