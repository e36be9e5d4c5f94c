"""The registration check on every kind: a version is registered only once it loaded in a
scratch process and answered as its manifest says; a failure names the field and carries
the model's own traceback. Python code needs a deployer's token."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from control_plane.auth import Principal
from control_plane.errors import InvalidArtifactError, PermissionDeniedError
from control_plane.model_check import check_version
from control_plane.model_package import pack_folder
from control_plane.registry import Registry
from control_plane.schemas import ModelManifest, Role, VersionCreate
from tests.model_kinds import (
    python_manifest,
    python_model,
    steps_manifest,
    steps_model,
    torch_export_model,
    torchscript_manifest,
    torchscript_model,
)
from tests.unit.control_plane.conftest import ALICE

TRAINER = Principal("job-7", Role.TRAINER)


def check(manifest: dict, artifact: bytes, **options: float) -> None:
    check_version(ModelManifest.model_validate(manifest), hashlib.sha256(artifact).hexdigest(),
                  artifact, **options)


def refusal(manifest: dict, artifact: bytes, **options: float) -> InvalidArtifactError:
    with pytest.raises(InvalidArtifactError) as caught:
        check(manifest, artifact, **options)
    return caught.value


def test_every_kind_that_answers_as_declared_passes(tmp_path: Path) -> None:
    check(python_manifest(), pack_folder(python_model(tmp_path / "py", 1)))
    check(python_manifest(), pack_folder(python_model(tmp_path / "async", 1, asynchronous=True)))
    check(steps_manifest(), pack_folder(steps_model(tmp_path / "steps", 1)))
    check(torchscript_manifest(), torchscript_model(1))
    check(torchscript_manifest(kind="torch_export"), torch_export_model(1))


def test_an_import_that_fails_is_refused_with_its_traceback(tmp_path: Path) -> None:
    folder = python_model(tmp_path / "m", 1)
    (folder / "model.py").write_text("import a_package_nobody_installed\n" + (folder / "model.py").read_text())
    error = refusal(python_manifest(), pack_folder(folder))
    assert error.detail["field"] == "manifest.code.entrypoint" and error.detail["stage"] == "load"
    assert "No module named 'a_package_nobody_installed'" in str(error)
    assert "model.py" in error.detail["traceback"]


def test_an_entrypoint_that_is_not_there_names_the_module(tmp_path: Path) -> None:
    error = refusal(python_manifest("predictor:Model"),
                    pack_folder(python_model(tmp_path / "m", 1)))
    assert "the archive has no module 'predictor'" in str(error)
    assert "model.py" in str(error)  # what the archive does hold


def test_an_output_that_breaks_the_signature_names_the_output(tmp_path: Path) -> None:
    folder = python_model(tmp_path / "m", 1, predict="return {'probabilities': x}")
    error = refusal(python_manifest(), pack_folder(folder))
    assert error.detail["field"] == "signature.outputs.probabilities"
    assert "declared [None, 3]" in str(error)


def test_a_model_that_never_loads_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    folder = python_model(tmp_path / "m", 1, load="import time; time.sleep(60)")
    error = refusal(python_manifest(), pack_folder(folder), timeout_s=5)
    assert error.detail["stage"] == "timeout" and "did not finish in 5s" in str(error)


def test_the_check_runs_without_the_platforms_secrets(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPLANE_TOKEN", "mp_secret")
    monkeypatch.setenv("MODELPLANE_DB_URL", "postgresql://admin:pw@db/modelplane")
    folder = python_model(tmp_path / "m", 1, load=(
        "import os; assert not [k for k in os.environ if k.startswith('MODELPLANE_')], "
        "sorted(os.environ)"))
    check(python_manifest(), pack_folder(folder))


def test_steps_whose_graph_disagrees_with_the_declared_graph_signature_are_refused(
        tmp_path: Path) -> None:
    manifest = steps_manifest()
    manifest["code"]["graph_inputs"][0]["name"] = "features"
    error = refusal(manifest, pack_folder(steps_model(tmp_path / "s", 1)))
    assert "features" in str(error) and "scaled" in str(error)


@pytest.mark.parametrize(("manifest", "artifact", "message"), [
    (python_manifest(), b"not a zip", "is a zip archive of its folder"),
    (torchscript_manifest(), b"\x08\x01not torch", "not a torchscript file"),
])
def test_an_artifact_of_the_wrong_form_is_refused(manifest: dict, artifact: bytes,
                                                  message: str) -> None:
    assert message in str(refusal(manifest, artifact))


def test_a_model_that_fails_on_a_replicas_warm_up_is_refused(tmp_path: Path) -> None:
    folder = python_model(tmp_path / "m", 1, predict="assert np.abs(x).sum() > 0, 'all zeros'")
    error = refusal(python_manifest(), pack_folder(folder))
    assert error.detail["stage"] == "warmup" and "all zeros" in str(error)


@pytest.mark.parametrize("requirement", ["evil.whl", "pkg.tar.gz", "x.zip==1"])
def test_a_requirement_naming_a_file_is_refused(requirement: str) -> None:
    manifest = python_manifest()
    manifest["code"]["requirements"] = [requirement]
    with pytest.raises(ValueError, match="names a file"):
        ModelManifest.model_validate(manifest)


def test_a_graph_path_out_of_the_archive_is_refused() -> None:
    manifest = steps_manifest()
    manifest["code"]["graph"] = "a/../../model.onnx"
    with pytest.raises(ValueError, match="inside the archive"):
        ModelManifest.model_validate(manifest)


def test_torch_programs_need_a_deployer_and_code_can_be_kept_to_admins_or_off(
        registry: Registry) -> None:
    from control_plane.auth import Principal as Actor
    from control_plane.store import Database  # noqa: F401 (the registry's own)

    program = registry.artifacts.put([torchscript_model(1)])
    spec = VersionCreate(artifact_digest=program.digest, manifest=torchscript_manifest())
    with pytest.raises(PermissionDeniedError, match="needs deployer"):
        registry.register_version("ts", spec, TRAINER)
    strict = Registry(registry.db, registry.artifacts, model_code="admin")
    with pytest.raises(PermissionDeniedError, match="needs admin"):
        strict.register_version("ts", spec, ALICE)
    assert strict.register_version("ts", spec, Actor("root", Role.ADMIN)).version == 1
    closed = Registry(registry.db, registry.artifacts, model_code="off")
    with pytest.raises(PermissionDeniedError, match="MODELPLANE_MODEL_CODE=off"):
        closed.register_version("ts", spec, Actor("root", Role.ADMIN))


def test_code_from_the_archive_needs_a_deployer_builtin_steps_do_not(
        registry: Registry, tmp_path: Path) -> None:
    code = registry.artifacts.put([pack_folder(python_model(tmp_path / "m", 1))])
    spec = VersionCreate(artifact_digest=code.digest, manifest=python_manifest())
    with pytest.raises(PermissionDeniedError, match="needs deployer"):
        registry.register_version("py", spec, TRAINER)
    assert registry.register_version("py", spec, ALICE).version == 1
    steps = registry.artifacts.put([pack_folder(steps_model(tmp_path / "s", 1))])
    version = registry.register_version(
        "scaled", VersionCreate(artifact_digest=steps.digest, manifest=steps_manifest()), TRAINER)
    assert version.manifest.code is not None and version.manifest.code.preprocess == "builtin:standardize"


def test_requirements_are_installed_for_the_check_alone(tmp_path: Path) -> None:
    """`tabulate` is not among the platform's packages: the model imports it only because
    its requirements were installed for it (and the platform still lacks it after)."""
    import importlib.util

    assert importlib.util.find_spec("tabulate") is None
    folder = python_model(tmp_path / "m", 1, load="import tabulate; assert tabulate.tabulate([[1]])")
    with_requirement = python_manifest()
    with_requirement["code"]["requirements"] = ["tabulate>=0.8"]
    check(with_requirement, pack_folder(folder))
    error = refusal(python_manifest(), pack_folder(folder))  # the same code without it
    assert "No module named 'tabulate'" in str(error)
    assert importlib.util.find_spec("tabulate") is None


def test_requirements_that_cannot_be_installed_are_refused_with_pips_words(tmp_path: Path) -> None:
    manifest = python_manifest()
    manifest["code"]["requirements"] = ["modelplane-no-such-package-anywhere==9.9.9"]
    error = refusal(manifest, pack_folder(python_model(tmp_path / "m", 1)))
    assert error.detail["field"] == "manifest.code.requirements"
    assert "modelplane-no-such-package-anywhere" in str(error)
    assert "No matching distribution" in error.detail["pip"] or "not find" in error.detail["pip"]


@pytest.mark.parametrize("requirement", ["git+https://example.com/x.git", "-e .",
                                         "--index-url=http://evil.example", "x @ file:///tmp/x"])
def test_a_requirement_that_is_not_a_plain_name_and_version_is_refused(requirement: str) -> None:
    manifest = python_manifest()
    manifest["code"]["requirements"] = [requirement]
    with pytest.raises(ValueError, match="code.requirements"):
        ModelManifest.model_validate(manifest)


def test_reading_an_onnx_signature_evaluates_none_of_the_models_constants(tmp_path: Path) -> None:
    """A file of 200 bytes whose ConstantOfShape asks for 800 MB: the control plane reads
    its signature without folding that constant (ONNX Runtime's optimiser would, in the
    control plane's own process). Measured in a fresh process, by its peak memory."""
    import subprocess
    import sys

    from onnx import TensorProto, helper

    floats = 200_000_000
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [floats])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
         helper.make_node("Add", ["x", "total"], ["y"])],
        "constant-bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[shape])
    path = tmp_path / "bomb.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                     .SerializeToString())
    assert path.stat().st_size < 1000
    # The peak of this process's own memory (VmHWM; ru_maxrss also counts the parent's,
    # which a child started by vfork shares until it runs python).
    probe = (
        "import sys\n"
        "from control_plane.onnx_check import signature_of\n"
        "signature = signature_of(open(sys.argv[1], 'rb').read())\n"
        "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
        "print(signature.inputs[0].name, peak[0])\n")
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr
    name, peak_kib = done.stdout.split()
    assert name == "x"
    assert int(peak_kib) * 1024 < floats * 4 / 2, f"peak {int(peak_kib) // 1024} MiB"


def test_a_model_writing_into_its_inputs_is_refused_at_registration(tmp_path: Path) -> None:
    """Checked on writable examples, it registered, then failed every request served."""
    folder = python_model(tmp_path / "m", 1, predict="x[0, 0] = 0.0")
    error = refusal(python_manifest(), pack_folder(folder))
    assert "read-only" in str(error)
