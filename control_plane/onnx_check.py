"""Check that an ONNX artifact loads in ONNX Runtime and matches its manifest's signature."""

from __future__ import annotations

from typing import Any

from control_plane.errors import InvalidArtifactError
from control_plane.schemas import Signature, TensorSpec

# ONNX Runtime's type strings → the manifest's numpy spelling.
_ORT_TYPES = {
    "tensor(bool)": "bool",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(string)": "string",
}


def signature_of(model_bytes: bytes) -> Signature:
    """Load the model in ONNX Runtime (CPU) and read its signature; raise if it does not load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # The signature is all this reads, in the control plane's own process: no graph
    # optimisation, whose constant folding would evaluate the model's constants here (a
    # file of a few hundred bytes can ask for gigabytes: ConstantOfShape).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises several unrelated types for a bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArtifactError(
            f"the artifact is not a model ONNX Runtime can load: {first_line[:300]}",
            detail={"field": "artifact_digest"},
        ) from None
    return Signature(
        inputs=[_spec(arg) for arg in session.get_inputs()],
        outputs=[_spec(arg) for arg in session.get_outputs()],
    )


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise InvalidArtifactError(
            f"tensor {arg.name!r} has type {arg.type}, which modelplane cannot serve "
            "(sequences and maps are not supported); export plain tensors",
            detail={"field": arg.name},
        )
    shape = [dim if isinstance(dim, int) and dim >= 0 else None for dim in arg.shape]
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def check_signature(declared: Signature, actual: Signature) -> None:
    """Raise naming the first place where the manifest disagrees with the model."""
    for kind in ("inputs", "outputs"):
        declared_specs: list[TensorSpec] = getattr(declared, kind)
        actual_specs = {spec.name: spec for spec in getattr(actual, kind)}
        declared_names = [spec.name for spec in declared_specs]
        if sorted(declared_names) != sorted(actual_specs):
            raise InvalidArtifactError(
                f"manifest signature.{kind} names {declared_names} but the model's "
                f"{kind} are {sorted(actual_specs)}",
                detail={"field": f"manifest.signature.{kind}"},
            )
        for index, spec in enumerate(declared_specs):
            real = actual_specs[spec.name]
            field = f"manifest.signature.{kind}[{index}]"
            if spec.dtype != real.dtype:
                raise InvalidArtifactError(
                    f"{field} ({spec.name!r}) declares dtype {spec.dtype} but the model "
                    f"has {real.dtype}",
                    detail={"field": f"{field}.dtype"},
                )
            if len(spec.shape) != len(real.shape) or any(
                want != have for want, have in zip(spec.shape, real.shape, strict=True)
            ):
                raise InvalidArtifactError(
                    f"{field} ({spec.name!r}) declares shape {spec.shape} but the model has "
                    f"{real.shape} (null marks a dynamic dimension)",
                    detail={"field": f"{field}.shape"},
                )
