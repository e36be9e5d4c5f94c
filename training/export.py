"""Export a trained network to ONNX and prove ONNX Runtime reproduces it.

The exported graph takes ``input`` (float32, ``[batch, features]``, batch dynamic) and
returns ``probabilities`` and ``label`` (classifiers) or ``prediction`` (regressors).
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


def export_onnx(network: Network) -> bytes:
    """The network's serving form as ONNX bytes, with a dynamic batch axis."""
    model = ServingModel(network).eval()
    names = model.output_names
    example = torch.zeros(2, network.n_features)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which
        # needs onnxscript (not a dependency); for these plain graphs both emit the same ops.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=names,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]},
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


def check_parity(onnx_model: bytes, network: Network, features: np.ndarray,
                 *, tolerance: float = TOLERANCE) -> float:
    """Max absolute difference between torch and ONNX Runtime; raise above ``tolerance``.

    A regressor's values are compared in units of the target's standard deviation (the
    scale the network computes in): float32 cannot hold house prices to 1e-4 of a dollar,
    but it can hold them to 1e-4 of their spread.
    """
    expected = torch_outputs(network, features)
    actual = onnx_outputs(onnx_model, features)
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
