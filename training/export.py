"""Export a trained network to ONNX and prove ONNX Runtime reproduces it.

The exported graph takes ``input`` (float32, ``[batch, features]``, batch dynamic) and
returns ``probabilities`` and ``label`` (classifiers) or ``prediction`` (regressors). With
the standardisation as a step (``registration.preprocessing: step``) the graph takes
``standardized`` rows instead, and the version is an archive of the graph and the fitted
scaler (``builtin:standardize``), proved by the serving stack's own runner.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from training.errors import ExportMismatchError
from training.models import Network, ServingModel

INPUT_NAME = "input"
OPSET = 17
TOLERANCE = 1e-4


STANDARDIZED = "standardized"


def export_onnx(network: Network, *, standardize: bool = True) -> bytes:
    """The network's serving form as ONNX bytes, with a dynamic batch axis; without the
    standardisation (its input then named ``standardized``) when ``standardize`` is off."""
    model = ServingModel(network, standardize=standardize).eval()
    names = model.output_names
    input_name = INPUT_NAME if standardize else STANDARDIZED
    example = torch.zeros(2, network.n_features)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which
        # needs onnxscript (not a dependency); for these plain graphs both emit the same ops.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, input_names=[input_name], output_names=names,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *names]},
            opset_version=OPSET, do_constant_folding=True,
        )
    return buffer.getvalue()


def torch_outputs(network: Network, features: np.ndarray) -> dict[str, np.ndarray]:
    """The serving outputs torch computes for ``features`` (eval mode, CPU)."""
    model = ServingModel(network.cpu().eval())
    with torch.no_grad():
        result = model(torch.as_tensor(features, dtype=torch.float32))
    values = result if isinstance(result, tuple) else (result,)
    return {name: value.numpy() for name, value in zip(model.output_names, values, strict=True)}


def onnx_outputs(onnx_model: bytes, features: np.ndarray) -> dict[str, np.ndarray]:
    """What ONNX Runtime (CPU) computes for ``features``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {INPUT_NAME: np.asarray(features, dtype=np.float32)})
    return dict(zip(names, values, strict=True))


def steps_archive(network: Network, graph: bytes) -> bytes:
    """The version with its scaler as a step: the graph (taking standardised rows) and the
    fitted mean and scale for ``builtin:standardize``, as a reproducible zip."""
    import json
    import tempfile
    from pathlib import Path

    from control_plane.model_package import pack_folder

    with tempfile.TemporaryDirectory(prefix="modelplane-steps-") as folder:
        root = Path(folder)
        (root / "model.onnx").write_bytes(graph)
        (root / "standardize.json").write_text(json.dumps({
            "input": INPUT_NAME, "output": STANDARDIZED,
            "mean": network.feature_mean.tolist(), "scale": network.feature_scale.tolist()}))
        return pack_folder(root)


def serving_form(network: Network, graph: bytes, *, as_step: bool) -> tuple[bytes, dict, dict | None]:
    """What is registered: the artifact, its (outer) signature and its manifest ``code``:
    the graph itself, or the archive of the graph and its scaler step."""
    from control_plane.onnx_check import signature_of

    signature = signature_of(graph).model_dump(mode="json")
    if not as_step:
        return graph, signature, None
    code = {"preprocess": "builtin:standardize", "graph": "model.onnx",
            "graph_inputs": signature["inputs"]}
    outer = {**signature, "inputs": [{**signature["inputs"][0], "name": INPUT_NAME}]}
    return steps_archive(network, graph), outer, code


def runner_outputs(archive: bytes, signature: dict, code: dict,
                   features: np.ndarray) -> dict[str, np.ndarray]:
    """What the serving stack's runner computes for ``features`` with the version's steps."""
    import hashlib
    import tempfile
    from pathlib import Path

    from serving.runners import build_runner
    from serving.schemas import VersionConfig

    digest = hashlib.sha256(archive).hexdigest()
    with tempfile.TemporaryDirectory(prefix="modelplane-parity-") as folder:
        path = Path(folder) / digest
        path.write_bytes(archive)
        config = VersionConfig(version=1, model="parity", artifact_url="file:///unused",
                               digest=digest, kind="onnx", code=code,
                               inputs=signature["inputs"], outputs=signature["outputs"])
        runner = build_runner(config, path, use_gpu=False)
        return runner.run({INPUT_NAME: np.asarray(features, dtype=np.float32)})


def check_parity(onnx_model: bytes, network: Network, features: np.ndarray,
                 *, tolerance: float = TOLERANCE,
                 served: dict[str, np.ndarray] | None = None) -> float:
    """Max absolute difference between torch and ONNX Runtime; raise above ``tolerance``.

    A regressor's values are compared in units of the target's standard deviation (the
    scale the network computes in): float32 cannot hold house prices to 1e-4 of a dollar,
    but it can hold them to 1e-4 of their spread.
    """
    expected = torch_outputs(network, features)
    actual = served if served is not None else onnx_outputs(onnx_model, features)
    scale = float(network.target_scale) if network.spec.task == "regression" else 1.0
    worst = 0.0
    for name, want in expected.items():
        if want.dtype.kind == "f" and want.size:
            worst = max(worst, float(np.max(np.abs(actual[name] - want))) / scale)
    if not worst <= tolerance:  # also catches NaN
        raise ExportMismatchError(
            f"ONNX Runtime and torch disagree on the validation rows by up to {worst:.3g} "
            f"(allowed {tolerance:g}); the export is not registered",
            detail={"max_abs_diff": worst, "tolerance": tolerance},
        )
    return worst
