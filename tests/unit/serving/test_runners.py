"""Every model kind behind the one runner interface, checked against the same NumPy
reference; outputs that break the signature are refused naming the output; archives are
unpacked safely and never share modules."""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from control_plane.model_package import kind_of, pack_folder
from serving.errors import InferenceFailedError
from serving.runners import build_runner
from serving.runners.archive import ArchiveError, unpack
from serving.schemas import VersionConfig
from tests.model_kinds import (
    LABELS,
    python_manifest,
    python_model,
    reference,
    steps_manifest,
    steps_model,
    torch_export_model,
    torchscript_manifest,
    torchscript_model,
)

ROWS = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)


def stored(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    """``data`` as a replica's cache holds it: a file named by its digest."""
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / "cache" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, digest


def config(manifest: dict, digest: str, version: int = 1) -> VersionConfig:
    signature = manifest["signature"]
    return VersionConfig(version=version, model="m", artifact_url="http://unused", digest=digest,
                         kind=manifest.get("kind", "onnx"), code=manifest.get("code"),
                         inputs=signature["inputs"], outputs=signature["outputs"])


def python_runner(tmp_path: Path, seed: int = 1, **model: object):
    path, digest = stored(tmp_path, pack_folder(python_model(tmp_path / f"src{seed}", seed, **model)))
    return build_runner(config(python_manifest(), digest), path)


def test_a_python_model_answers_like_the_reference_alone_and_batched(tmp_path: Path) -> None:
    runner = python_runner(tmp_path)
    assert runner.can_batch and not runner.is_async
    out = runner.run({"input": ROWS})
    np.testing.assert_allclose(out["probabilities"], reference(ROWS, 1), rtol=1e-5)
    assert out["probabilities"].dtype == np.float32
    parts = runner.run_batch([{"input": ROWS[:2]}, {"input": ROWS[2:]}])
    np.testing.assert_allclose(np.concatenate([p["probabilities"] for p in parts]),
                               reference(ROWS, 1), rtol=1e-5)


def test_an_async_predict_is_awaited(tmp_path: Path) -> None:
    runner = python_runner(tmp_path, asynchronous=True)
    assert runner.is_async
    out = asyncio.run(runner.run_async({"input": ROWS}))
    np.testing.assert_allclose(out["probabilities"], reference(ROWS, 1), rtol=1e-5)


def test_not_batchable_unless_the_model_says_so(tmp_path: Path) -> None:
    assert not python_runner(tmp_path, batchable=False).can_batch


@pytest.mark.parametrize(("predict", "message"), [
    ("return {'scores': x}", "returned no output 'probabilities'"),
    ("return {'probabilities': x[:, :2]}", "has shape [6, 2], declared [None, 3]"),
    ("return {'probabilities': x[:1, :3]}", "has 1 rows for 6 input rows"),
    ("return {'probabilities': np.full((len(x), 3), 'a')}", "declared float32"),
    ("return [x]", "returned list, not a dict"),
    ("raise KeyError('feature_7')", "m:1 failed: predict raised KeyError: 'feature_7'"),
])
def test_an_output_that_breaks_the_signature_is_a_named_server_fault(
        tmp_path: Path, predict: str, message: str) -> None:
    runner = python_runner(tmp_path, predict=predict.replace("\n", "; "))
    with pytest.raises(InferenceFailedError) as caught:
        runner.run({"input": ROWS})
    assert message in str(caught.value), str(caught.value)
    assert caught.value.http_status == 500


def test_float64_arithmetic_comes_back_as_the_declared_float32(tmp_path: Path) -> None:
    runner = python_runner(tmp_path, predict="x = x.astype(np.float64)")
    out = runner.run({"input": ROWS})
    assert out["probabilities"].dtype == np.float32


def test_two_archives_with_the_same_module_names_do_not_share_modules(tmp_path: Path) -> None:
    one, two = python_runner(tmp_path, seed=1), python_runner(tmp_path, seed=2)
    np.testing.assert_allclose(one.run({"input": ROWS})["probabilities"], reference(ROWS, 1), rtol=1e-5)
    np.testing.assert_allclose(two.run({"input": ROWS})["probabilities"], reference(ROWS, 2), rtol=1e-5)
    assert type(one.model).__module__ != type(two.model).__module__


def test_steps_around_a_graph_take_raw_rows_and_return_labels(tmp_path: Path) -> None:
    path, digest = stored(tmp_path, pack_folder(steps_model(tmp_path / "steps", 3)))
    runner = build_runner(config(steps_manifest(), digest), path)
    runner.warmup()
    raw = 10.0 + 2.0 * ROWS
    out = runner.run({"input": raw})
    expected = reference(ROWS, 3)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert list(out["label"]) == [LABELS[i].encode() for i in expected.argmax(axis=1)]
    assert runner.can_batch
    merged = runner.run_batch([{"input": raw[:1]}, {"input": raw[1:]}])
    assert [bytes(v) for p in merged for v in p["label"]] == list(out["label"])


def test_a_custom_postprocess_gets_the_inputs_as_sent_when_it_asks(tmp_path: Path) -> None:
    folder = steps_model(tmp_path / "custom", 3)
    (folder / "rules.py").write_text(
        "import numpy as np\n\n"
        "def flag(outputs, inputs):\n"
        "    return {'probabilities': outputs['probabilities'],\n"
        "            'label': np.where(inputs['input'][:, 0] > 10, b'high', b'low').astype(object)}\n")
    manifest = steps_manifest()
    manifest["code"]["postprocess"] = "rules:flag"
    path, digest = stored(tmp_path, pack_folder(folder))
    out = build_runner(config(manifest, digest), path).run({"input": 10.0 + 2.0 * ROWS})
    assert list(out["label"]) == [b"high" if v > 0 else b"low" for v in ROWS[:, 0]]


@pytest.mark.parametrize("kind", ["torchscript", "torch_export"])
def test_a_torch_model_answers_like_the_reference(tmp_path: Path, kind: str) -> None:
    data = torchscript_model(4) if kind == "torchscript" else torch_export_model(4)
    path, digest = stored(tmp_path, data)
    runner = build_runner(config(torchscript_manifest(kind=kind), digest), path)
    runner.warmup()
    np.testing.assert_allclose(runner.run({"input": ROWS})["probabilities"], reference(ROWS, 4),
                               rtol=1e-5, atol=1e-6)
    assert runner.can_batch and kind_of(path) == kind


def test_a_torchscript_models_own_exception_is_what_the_client_reads(tmp_path: Path) -> None:
    """TorchScript wraps it in the interpreter's traceback; the answer says what the model
    said, not the first lines of serialized code."""
    path, digest = stored(tmp_path, torchscript_model(4, limit=1.0))
    runner = build_runner(config(torchscript_manifest(), digest), path)
    with pytest.raises(InferenceFailedError) as caught:
        runner.run({"input": np.full((1, 4), 2.0, dtype=np.float32)})
    assert caught.value.message.endswith("feature 0 out of the range it was built for"), \
        caught.value.message
    assert "RuntimeError" in caught.value.message and "ops.prim" not in caught.value.message


def test_a_builtin_step_without_its_parameters_names_the_file(tmp_path: Path) -> None:
    folder = steps_model(tmp_path / "noparams", 3)
    (folder / "label_map.json").unlink()
    path, digest = stored(tmp_path, pack_folder(folder))
    with pytest.raises(ArchiveError, match="label_map.json"):
        build_runner(config(steps_manifest(), digest), path)


@pytest.mark.parametrize("name", ["../escape.py", "/etc/evil.py", "a/../../b.py"])
def test_an_archive_member_outside_its_folder_is_refused(tmp_path: Path, name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, "print('escaped')")
    path, digest = stored(tmp_path, buffer.getvalue())
    with pytest.raises(ArchiveError, match="outside its folder"):
        unpack(path, digest)
    assert not (tmp_path / "escape.py").exists()


def test_packing_is_reproducible_and_leaves_caches_out(tmp_path: Path) -> None:
    folder = python_model(tmp_path / "m", 1)
    first = pack_folder(folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"cache")
    (folder / "model.pyc").write_bytes(b"cache")
    assert pack_folder(folder) == first
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert names == sorted(names) == ["arithmetic.py", "model.py", "weights.npz"]
    assert kind_of(folder) == "archive"


def test_an_onnx_file_is_told_from_its_bytes(tmp_path: Path) -> None:
    from tests.onnx_models import linear_classifier

    path = tmp_path / "model.bin"
    path.write_bytes(linear_classifier())
    assert kind_of(path) == "onnx"


def test_a_symbolic_link_in_an_archive_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("weights.npz")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    path, digest = stored(tmp_path, buffer.getvalue())
    with pytest.raises(ArchiveError, match="symbolic link"):
        unpack(path, digest)


@pytest.mark.parametrize(("dtype", "value", "message"), [
    ("int8", np.array([300, -129], dtype=np.int64), "outside int8"),
    ("float32", np.array([1e300], dtype=np.float64), "overflows float32"),
    ("int32", np.array([1.5]), "is float64, declared int32"),
    ("float32", np.array([True]), "is bool, declared float32"),
])
def test_a_cast_that_would_change_values_is_refused(dtype: str, value: np.ndarray, message: str) -> None:
    from serving.runners.base import conform_outputs

    spec = [{"name": "y", "dtype": dtype, "shape": [None]}]
    cfg = VersionConfig(version=1, model="m", artifact_url="http://unused", digest="0" * 64,
                        inputs=[{"name": "x", "dtype": "float32", "shape": [None]}], outputs=spec)
    with pytest.raises(InferenceFailedError, match=message):
        conform_outputs(cfg, {"y": value}, len(value))


def test_casts_that_keep_the_values_and_mixed_strings_pass() -> None:
    from serving.runners.base import conform_outputs

    cfg = VersionConfig(version=1, model="m", artifact_url="http://unused", digest="0" * 64,
                        inputs=[{"name": "x", "dtype": "float32", "shape": [None]}],
                        outputs=[{"name": "n", "dtype": "int32", "shape": [None]},
                                 {"name": "f", "dtype": "float32", "shape": [None]},
                                 {"name": "s", "dtype": "string", "shape": [None]}])
    out = conform_outputs(cfg, {"n": np.array([7, -3]), "f": np.array([1, 2]),
                                "s": ["caf\u00e9", "na\u00efve".encode()]}, 2)
    assert out["n"].dtype == np.int32 and out["n"].tolist() == [7, -3]
    assert out["f"].dtype == np.float32
    assert list(out["s"]) == ["caf\u00e9".encode(), "na\u00efve".encode()]


def test_a_text_classifier_takes_strings_and_answers_labels(tmp_path: Path) -> None:
    from tests.model_kinds import (
        TEXT_LABELS,
        review_texts,
        text_manifest,
        text_model,
        text_reference,
    )

    texts = review_texts(20, 3, extra=("ramen",))
    path, digest = stored(tmp_path, pack_folder(text_model(tmp_path / "text", 1)))
    manifest = text_manifest(review_texts(50, 0), 1)
    runner = build_runner(config(manifest, digest), path)
    out = runner.run({"review": np.array([t.encode() for t in texts], dtype=object)})
    expected = text_reference(texts, 1)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert list(out["label"]) == [TEXT_LABELS[i].encode() for i in expected.argmax(axis=1)]


def test_a_graph_fed_by_a_preprocess_step_that_refuses_its_input_is_the_versions_failure(
        tmp_path: Path) -> None:
    """A tokenizer that knows a word its graph has no embedding for: the request is valid,
    the version is broken. A 500 counted against the version, never the caller's 400."""
    from tests.model_kinds import review_texts, text_manifest, text_model

    path, digest = stored(tmp_path, pack_folder(text_model(tmp_path / "text", 1,
                                                           extra_words=("ramen",))))
    runner = build_runner(config(text_manifest(review_texts(50, 0), 1), digest), path)
    with pytest.raises(InferenceFailedError, match="out of data bounds"):
        runner.run({"review": np.array([b"the ramen was great"], dtype=object)})


def test_a_folder_unpacked_only_in_part_is_unpacked_again(tmp_path: Path) -> None:
    """A power loss just after the rename left the folder with truncated files: it was
    used as it stood, and every later replica on the node imported the broken code."""
    path, digest = stored(tmp_path, pack_folder(python_model(tmp_path / "m", 1)))
    folder = unpack(path, digest)
    whole = (folder / "model.py").read_text()
    (folder / "model.py").write_text(whole[: len(whole) // 2])  # what the crash left ...
    (folder / ".modelplane-unpacked").unlink()  # ... before the mark was on disk
    assert unpack(path, digest) == folder
    assert (folder / "model.py").read_text() == whole
    assert unpack(path, digest) == folder  # marked: used as it is
    # Whole but unmarked (unpacked before marks were written, replicas importing from it):
    # checked against the archive and marked in place, not moved from under them.
    (folder / ".modelplane-unpacked").unlink()
    inode = folder.stat().st_ino
    assert unpack(path, digest) == folder and folder.stat().st_ino == inode
    assert (folder / ".modelplane-unpacked").read_text() == digest
    assert not list(path.parent.glob(".*.broken")) and not list(path.parent.glob(".*.unpacking"))


def test_a_model_writing_into_its_inputs_fails_alike_alone_batched_and_at_its_check(
        tmp_path: Path) -> None:
    """Served, a model gets read-only inputs; merged into a batch it got fresh writable
    ones, so a request failed or not by the load it met."""
    from serving.runners.base import read_only, run_merged

    runner = python_runner(tmp_path, predict="x[0, 0] = 0.0")
    with pytest.raises(InferenceFailedError, match="read-only"):
        runner.run(read_only({"input": ROWS}))
    with pytest.raises(InferenceFailedError, match="read-only"):  # merged: the same
        run_merged(runner.run, [read_only({"input": ROWS}), read_only({"input": ROWS})],
                   alone_on_failure=False)


def test_a_torch_module_changing_its_input_in_place_leaves_the_request_as_sent(
        tmp_path: Path) -> None:
    """On the CPU a tensor from an array is that array: an in-place op wrote into what the
    monitoring and the shadow read (for a binary input, into the request's body)."""
    import torch

    from serving.runners.base import read_only

    class Scaling(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x.mul_(100.0)
            return torch.softmax(x[:, :3], dim=1)

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Scaling()), buffer)
    path, digest = stored(tmp_path, buffer.getvalue())
    runner = build_runner(config(torchscript_manifest(), digest), path)
    sent = ROWS.copy()
    runner.run(read_only({"input": sent}))
    np.testing.assert_array_equal(sent, ROWS)
