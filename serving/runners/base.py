"""What every runner shares: batching along axis 0, and checking what a model returned
against the version's declared outputs (a Python model can return anything)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from serving.errors import InferenceFailedError
from serving.schemas import TensorSignature, VersionConfig
from serving.validation import numpy_dtype

Arrays = dict[str, np.ndarray]


def has_batch_axis(specs: Sequence[TensorSignature]) -> bool:
    return all(bool(spec.shape) and spec.shape[0] is None for spec in specs)


def run_merged(run: Callable[[Arrays], Arrays], items: list[Arrays], *,
               alone_on_failure: bool = True) -> list[Arrays | Exception]:
    """Run several requests as one batch along axis 0 and split the outputs back; each
    request's outputs, or the error it failed with, in order.

    Only requests whose inputs are all one length along axis 0, and alike in their other
    axes and dtypes, are merged: the rows of a request were counted on its first input, so
    one sending two rows of ``x`` and none of ``y`` had another caller's ``y`` broadcast
    into its answer, and inner axes of different lengths failed the whole batch. A merged
    run that fails is run again request by request (unless ``alone_on_failure`` is off),
    so a request the model cannot take fails alone, not every caller batched with it."""
    results: list[Arrays | Exception | None] = [None] * len(items)
    for indices in _mergeable(items):
        if len(indices) > 1:
            try:
                merged = _run_together(run, [items[i] for i in indices])
            except Exception:
                if not alone_on_failure:
                    raise
            else:
                for index, outputs in zip(indices, merged, strict=True):
                    results[index] = outputs
                continue
        for index in indices:
            try:
                results[index] = run(items[index])
            except Exception as error:
                results[index] = error
    return results  # type: ignore[return-value]


def _mergeable(items: list[Arrays]) -> list[list[int]]:
    """The requests, by index, that may run as one batch, in the order they came."""
    groups: dict[object, list[int]] = {}
    for index, item in enumerate(items):
        rows = {value.shape[0] if value.ndim else None for value in item.values()}
        key: object = index  # alone: its inputs disagree on their rows, or have none
        if len(rows) == 1 and None not in rows:
            key = tuple((name, value.shape[1:], value.dtype.str)
                        for name, value in sorted(item.items()))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


class UnsplittableBatch(ValueError):
    """A merged batch whose output has not one row per input row: it cannot be split back
    between its callers."""

    def __init__(self, output: str, rows: int, expected: int) -> None:
        super().__init__(
            f"output {output!r} has {rows} rows for {expected} input rows merged into one "
            "batch: a model batched along axis 0 must answer one row per input row; declare "
            "the output's first axis fixed, or serve it without batching")
        self.detail = {"output": output}


def read_only(arrays: Arrays) -> Arrays:
    """Inputs as a model gets them: a dict of its own, of read-only views. The request's
    inputs are the monitoring's and the shadow's too, as sent, and a model sees them one
    way whether they came as JSON or binary, alone or merged into a batch, served or
    checked at registration."""
    viewed = {}
    for name, array in arrays.items():
        view = array.view()  # flags of its own: the caller's array is left as it was
        view.flags.writeable = False
        viewed[name] = view
    return viewed


def _run_together(run: Callable[[Arrays], Arrays], items: list[Arrays]) -> list[Arrays]:
    rows = [next(iter(item.values())).shape[0] for item in items]
    merged = read_only({name: np.concatenate([item[name] for item in items])
                        for name in items[0]})
    outputs = run(merged)
    total = sum(rows)
    for name, value in outputs.items():
        if not value.ndim or value.shape[0] != total:
            # Not one row out per row in (a graph that reduces over the batch, declared
            # dynamic on axis 0): split, one caller would get rows of another's.
            raise UnsplittableBatch(name, value.shape[0] if value.ndim else 0, total)
    bounds = np.cumsum(rows)[:-1]
    split = {name: np.split(value, bounds) for name, value in outputs.items()}
    return [{name: parts[i] for name, parts in split.items()} for i in range(len(items))]


def zeros(spec: TensorSignature, rows: int = 1) -> np.ndarray:
    shape = tuple(rows if dim is None else dim for dim in spec.shape)
    if spec.dtype == "string":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(spec.dtype))


def conform_outputs(config: VersionConfig, produced: object, rows: int | None,
                    specs: Sequence[TensorSignature] | None = None, *, what: str = "the model") -> Arrays:
    """``produced`` as the declared outputs: a dict with every declared name, each an array
    of the declared dtype (strings as bytes objects) and shape, ``rows`` long on a batch
    axis. InferenceFailedError naming the output otherwise: a model that breaks its own
    signature is a server fault, never passed on to the client as if it were an answer."""
    specs = list(specs if specs is not None else config.outputs)
    ref = f"{config.model}:{config.version}"
    if not isinstance(produced, dict):
        raise _broken(config, f"{ref} failed: {what} returned {type(produced).__name__}, not a dict "
                      f"of output name to array ({[s.name for s in specs]})", None)
    outputs: Arrays = {}
    for spec in specs:
        if spec.name not in produced:
            raise _broken(config, f"{ref} failed: {what} returned no output {spec.name!r} (it "
                          f"returned {sorted(map(str, produced))})", spec.name)
        outputs[spec.name] = _conform(config, spec, produced[spec.name], rows, what, ref)
    return outputs


def _conform(config: VersionConfig, spec: TensorSignature, value: object, rows: int | None,
             what: str, ref: str) -> np.ndarray:
    try:
        if spec.dtype == "string" and not isinstance(value, np.ndarray):
            array = np.empty(len(value), dtype=object) if isinstance(value, list | tuple) else None
            if array is not None and all(not isinstance(v, list | tuple) for v in value):
                array[:] = list(value)  # str and bytes side by side, as numpy would not keep them
            else:
                array = np.asarray(value, dtype=object)
        else:
            array = np.asarray(value)
    except Exception as error:  # anything numpy cannot hold
        raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} is not an array: "
                      f"{error}", spec.name) from None
    if spec.dtype == "string":
        if array.dtype.kind == "U":
            array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
        elif array.dtype.kind == "S":
            array = array.astype(object)
        elif array.dtype != object:
            raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} is {array.dtype}, "
                          "declared string", spec.name)
        elif array.size and not all(isinstance(v, bytes | str) for v in array.flat):
            raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} holds values that "
                          "are neither str nor bytes, declared string", spec.name)
        else:
            array = np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else v,
                                 otypes=[object])(array) if array.size else array
    else:
        want = numpy_dtype(spec.dtype)
        if array.dtype != want:
            array = _cast(config, spec, array, want, what, ref)
    if len(array.shape) != len(spec.shape) or any(
            d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=False)):
        raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} has shape "
                      f"{list(array.shape)}, declared {spec.shape}", spec.name)
    if rows is not None and spec.shape and spec.shape[0] is None and array.shape[0] != rows:
        raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} has {array.shape[0]} "
                      f"rows for {rows} input rows", spec.name)
    return array


def _cast(config: VersionConfig, spec: TensorSignature, array: np.ndarray, want: np.dtype,
          what: str, ref: str) -> np.ndarray:
    """``array`` as the declared dtype when every value survives the cast (float64
    arithmetic on float32 inputs, int64 counts declared int32); a kind change (numbers to
    text, floats to integers) or a value the declared type cannot hold is refused."""
    kinds = array.dtype.kind, want.kind
    numeric = kinds[0] in "biuf" and kinds[1] in "biuf"
    if not numeric or (kinds[1] in "iu" and kinds[0] == "f") or (kinds[1] == "b") != (kinds[0] == "b"):
        raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} is {array.dtype}, "
                      f"declared {spec.dtype}", spec.name)
    if kinds[1] in "iu" and array.size:
        limits = np.iinfo(want)
        if array.min() < limits.min or array.max() > limits.max:
            raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} holds values "
                          f"outside {spec.dtype} ({array.min()} to {array.max()})", spec.name)
    cast = array.astype(want)
    if kinds[1] == "f" and array.size and not np.array_equal(
            np.isfinite(cast), np.isfinite(array.astype(np.float64))):
        raise _broken(config, f"{ref} failed: {what}'s output {spec.name!r} overflows "
                      f"{spec.dtype}", spec.name)
    return cast


def _broken(config: VersionConfig, message: str, output: str | None) -> InferenceFailedError:
    return InferenceFailedError(message, detail={"version": config.version, "reason": "broken_signature",
                                                 **({"output": output} if output else {})})


def element_count(arrays: Arrays) -> int:
    """Elements in every array together (1 at least): what a run or an encoding costs."""
    return max(sum(int(array.size) for array in arrays.values()), 1)


def input_rows(arrays: Arrays) -> int | None:
    """The batch length the inputs share on axis 0 (None for scalars)."""
    for value in arrays.values():
        return int(value.shape[0]) if value.ndim else None
    return None


def call_model(config: VersionConfig, what: str, function: Callable[..., object], *args: object) -> object:
    """``function(*args)``; a model's own exception becomes the server fault it is."""
    from serving.errors import ServingError

    try:
        return function(*args)
    except ServingError:
        raise
    except Exception as error:
        raise failed_call(config, what, error) from None


def failed_call(config: VersionConfig, what: str, error: Exception) -> InferenceFailedError:
    """A model's own exception as the server fault it is, with its type and message."""
    return InferenceFailedError(
        f"{config.model}:{config.version} failed: {what} raised {type(error).__name__}: "
        f"{model_message(error)}", detail={"version": config.version, "reason": "model_raised"})


def model_message(error: Exception, limit: int = 300) -> str:
    """The model's own words: a TorchScript error puts the interpreter's traceback first
    and the exception the model raised on its last line, so a message of several lines is
    told by its last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:limit]
