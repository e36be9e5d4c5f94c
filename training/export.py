"""Export a trained network to ONNX and prove ONNX Runtime reproduces it.

The exported graph takes ``input`` (float32, ``[batch, features]``, batch dynamic) and
returns ``probabilities`` and ``label`` (classifiers) or ``prediction`` (regressors). With
the standardisation as a step (``registration.preprocessing: step``) the graph takes
``standardized`` rows instead, and the version is an archive of the graph and the fitted
scaler (``builtin:standardize``), proved by the serving stack's own runner. A text
network's graph takes ``tokens`` (int64 ids) and is registered behind its fitted tokenizer
and class names (``builtin:tokenize``, ``builtin:label_map``), proved the same way.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch

from training.errors import ExportMismatchError
from training.models import Network, ServingModel
from training.text import TextEncoding

INPUT_NAME = "input"
OPSET = 17
TOLERANCE = 1e-4


STANDARDIZED = "standardized"
TOKENS = "tokens"


def export_onnx(network: Network, *, standardize: bool = True) -> bytes:
    """The network's serving form as ONNX bytes, with a dynamic batch axis; without the
    standardisation (its input then named ``standardized``) when ``standardize`` is off.
    A text network's graph takes int64 token ids (``tokens``)."""
    model = ServingModel(network, standardize=standardize).eval()
    names = model.output_names
    input_name = TOKENS if network.reads_text else INPUT_NAME if standardize else STANDARDIZED
    example = torch.zeros(2, network.n_features, dtype=network.input_dtype)
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
        result = model(torch.as_tensor(features, dtype=network.input_dtype))
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


def _pack(files: dict[str, bytes | str]) -> bytes:
    """A reproducible zip of ``files`` (name → content), as versions are registered."""
    import tempfile
    from pathlib import Path

    from control_plane.model_package import pack_folder

    with tempfile.TemporaryDirectory(prefix="modelplane-archive-") as folder:
        root = Path(folder)
        for name, content in files.items():
            path = root / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return pack_folder(root)


def steps_archive(network: Network, graph: bytes) -> bytes:
    """The version with its scaler as a step: the graph (taking standardised rows) and the
    fitted mean and scale for ``builtin:standardize``, as a reproducible zip."""
    import json

    return _pack({"model.onnx": graph, "standardize.json": json.dumps({
        "input": INPUT_NAME, "output": STANDARDIZED,
        "mean": network.feature_mean.tolist(), "scale": network.feature_scale.tolist()})})


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


def text_serving_form(graph: bytes, encoding: TextEncoding,
                      class_labels: list[str]) -> tuple[bytes, dict, dict]:
    """A text version: its fitted tokenizer (``builtin:tokenize``), the graph on token ids,
    and the class names (``builtin:label_map``), as one archive; the outer signature takes
    one text per row and answers probabilities and the label's name."""
    import json

    from control_plane.onnx_check import signature_of

    graph_signature = signature_of(graph).model_dump(mode="json")
    probabilities = next(o for o in graph_signature["outputs"] if o["name"] == "probabilities")
    signature = {"inputs": [{"name": encoding.input_name, "dtype": "string", "shape": [None]}],
                 "outputs": [probabilities, {"name": "label", "dtype": "string", "shape": [None]}]}
    code = {"preprocess": "builtin:tokenize", "graph": "model.onnx",
            "graph_inputs": graph_signature["inputs"], "graph_outputs": graph_signature["outputs"],
            "postprocess": "builtin:label_map"}
    archive = _pack({"model.onnx": graph, "tokenize.json": json.dumps(encoding.step_params),
                     "label_map.json": json.dumps({"scores": "probabilities", "output": "label",
                                                   "labels": class_labels})})
    return archive, signature, code


def runner_outputs(archive: bytes, signature: dict, code: dict,
                   features: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the serving stack's runner computes for ``features`` (rows for the ``input``,
    or every input by name) with the version's steps."""
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
        inputs = features if isinstance(features, dict) else {
            INPUT_NAME: np.asarray(features, dtype=np.float32)}
        return runner.run(inputs)


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
            difference = float(np.max(np.abs(actual[name] - want))) / scale
            # max(0.0, nan) is 0.0: a NaN on either side must fail, not vanish.
            worst = max(worst, difference if math.isfinite(difference) else math.inf)
    if not worst <= tolerance:
        raise ExportMismatchError(
            f"ONNX Runtime and torch disagree on the validation rows by up to {worst:.3g} "
            f"(allowed {tolerance:g}); the export is not registered",
            detail={"max_abs_diff": worst, "tolerance": tolerance},
        )
    return worst
