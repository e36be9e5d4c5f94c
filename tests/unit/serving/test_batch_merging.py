"""Requests merged into one batch stay apart: only requests alike in every input's shape
are merged, and one the model cannot take fails alone. Real ONNX Runtime sessions on
graphs made here."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from serving.batcher import DynamicBatcher
from serving.runners.base import run_merged


def session(graph: onnx.GraphProto):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    loaded = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in loaded.get_outputs()]
    return lambda arrays: dict(zip(names, loaded.run(None, arrays), strict=True))


def add_model():
    """sum = x + y, both [batch, 4]."""
    return session(helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["sum"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 4])]))


def lookup_model():
    """rows = table[ids]: a table of 10 rows of 2, indexed by int64 ids [batch]."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 2],
                               np.arange(20, dtype=np.float32).tolist())
    return session(helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"])], "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, 2])], [table]))


def test_a_request_whose_inputs_disagree_on_rows_never_sees_another_callers_data() -> None:
    """The rows of a request were counted on its first input: two rows of x and none of y,
    merged after a caller's one row of each, had that caller's y broadcast into its
    answer (x + y_victim)."""
    run = add_model()
    victim = {"x": np.full((1, 4), 10, np.float32), "y": np.array([[1, 2, 3, 4]], np.float32)}
    attacker = {"x": np.zeros((2, 4), np.float32), "y": np.zeros((0, 4), np.float32)}
    answered = run_merged(run, [victim, attacker])
    np.testing.assert_array_equal(answered[0]["sum"], [[11, 12, 13, 14]])
    assert isinstance(answered[1], Exception)  # its own inputs, alone: ONNX Runtime refuses


def test_a_request_the_model_cannot_take_fails_alone() -> None:
    run = lookup_model()
    good, poison, other = ({"ids": np.array(ids, np.int64)} for ids in ([1, 2], [99], [0]))
    answered = run_merged(run, [good, poison, other])
    np.testing.assert_array_equal(answered[0]["rows"], [[2, 3], [4, 5]])
    assert isinstance(answered[1], Exception) and "out of" in str(answered[1])
    np.testing.assert_array_equal(answered[2]["rows"], [[0, 1]])


def test_a_graph_answering_other_than_a_row_per_row_is_run_per_request() -> None:
    """A graph that sums over its batch, declared dynamic on axis 0, answers one row for
    any number in: split by the callers' rows, the first caller got a sum of both callers'
    data and the second an empty answer, both with a 200."""
    run = session(helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axis"], ["total"], keepdims=1)],
        "total",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [0])]))
    first = {"x": np.ones((2, 4), np.float32)}
    second = {"x": np.full((3, 4), 10, np.float32)}
    answered = run_merged(run, [first, second])
    np.testing.assert_array_equal(answered[0]["total"], [[2, 2, 2, 2]])
    np.testing.assert_array_equal(answered[1]["total"], [[30, 30, 30, 30]])


def test_requests_alike_are_still_merged_into_one_run() -> None:
    calls: list[int] = []
    add = add_model()

    def run(arrays):
        calls.append(len(arrays["x"]))
        return add(arrays)

    items = [{"x": np.full((rows, 4), rows, np.float32), "y": np.ones((rows, 4), np.float32)}
             for rows in (1, 3, 2)]
    answered = run_merged(run, items)
    assert calls == [6]
    assert [a["sum"][:, 0].tolist() for a in answered] == [[2.0], [4.0] * 3, [3.0] * 2]


def test_the_batcher_fails_only_the_call_that_failed() -> None:
    run = lookup_model()

    async def calls():
        batcher = DynamicBatcher(lambda items: asyncio.to_thread(run_merged, run, items),
                                 max_batch_size=8, max_wait_s=0.05)
        return await asyncio.gather(*(batcher({"ids": np.array(ids, np.int64)})
                                      for ids in ([1], [99], [2])), return_exceptions=True)

    first, poison, last = asyncio.run(calls())
    np.testing.assert_array_equal(first["rows"], [[2, 3]])
    assert isinstance(poison, Exception)
    np.testing.assert_array_equal(last["rows"], [[4, 5]])


def test_an_input_onnx_runtime_refuses_is_the_callers_400_not_the_versions_500(
        tmp_path) -> None:
    """Anyone may send ids past a lookup table's end, or inputs whose rows do not
    broadcast; counted as the version's 5xx, about 1% of an endpoint's traffic of them
    rolled back any candidate under the default max_error_rate."""
    import hashlib

    import pytest

    from serving.errors import InferenceFailedError, InvalidRequestError
    from serving.runners import build_runner
    from serving.schemas import VersionConfig

    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 2],
                               np.arange(20, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]),
         helper.make_node("Add", ["rows", "offset"], ["shifted"])], "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("offset", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("shifted", TensorProto.FLOAT, [None, 2])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    path = tmp_path / hashlib.sha256(data).hexdigest()
    path.write_bytes(data)
    runner = build_runner(VersionConfig(
        version=1, model="m", artifact_url="http://unused", digest=path.name, inputs=[
            {"name": "ids", "dtype": "int64", "shape": [None]},
            {"name": "offset", "dtype": "float32", "shape": [None, 2]}],
        outputs=[{"name": "shifted", "dtype": "float32", "shape": [None, 2]}]), path)
    ok = runner.run({"ids": np.array([1], np.int64), "offset": np.ones((1, 2), np.float32)})
    np.testing.assert_array_equal(ok["shifted"], [[3, 4]])
    for refused in ({"ids": np.array([99], np.int64), "offset": np.ones((1, 2), np.float32)},
                    {"ids": np.array([1, 2, 3], np.int64),
                     "offset": np.ones((2, 2), np.float32)}):
        with pytest.raises(InvalidRequestError, match="cannot run on this input") as error:
            runner.run(refused)
        assert error.value.http_status == 400
        assert error.value.detail["reason"] == "model_refused_input"
        assert not isinstance(error.value, InferenceFailedError)


def test_registration_names_the_output_a_batch_cannot_be_split_by() -> None:
    """The registry's check merges the examples with themselves, as batching will: a model
    answering other than a row per row is refused naming its output."""
    from serving.runners.base import UnsplittableBatch

    def total(arrays):
        return {"total": arrays["x"].sum(axis=0, keepdims=True)}

    rows = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(UnsplittableBatch, match="one row per input row") as refused:
        run_merged(total, [rows, rows], alone_on_failure=False)
    assert refused.value.detail == {"output": "total"}
