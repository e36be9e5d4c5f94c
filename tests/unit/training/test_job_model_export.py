"""Networks, their ONNX export and the torch/ONNX Runtime parity check; the manifest built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import ExportMismatchError, InvalidJobSpecError
from training.export import check_parity, export_onnx, onnx_outputs, torch_outputs
from training.models import build_network, load_bundle, save_bundle
from training.schemas import ModelSpec

ROWS = np.random.default_rng(0).normal(loc=3.0, scale=4.0, size=(40, 64)).astype(np.float32)
SPECS = {
    "mlp_classifier": ModelSpec(architecture="mlp_classifier", hidden_sizes=[16, 8], dropout=0.2),
    "cnn_classifier": ModelSpec(architecture="cnn_classifier", image_shape=(1, 8, 8),
                                channels=[4, 8], hidden_sizes=[16], activation="gelu"),
    "mlp_regressor": ModelSpec(architecture="mlp_regressor", hidden_sizes=[16], activation="tanh"),
}


def trained_like(name: str, seed: int = 0):
    torch.manual_seed(seed)
    spec = SPECS[name]
    regression = spec.task == "regression"
    network = build_network(spec, 64, 1 if regression else 10)
    network.set_statistics(ROWS, ROWS[:, 0] * 50 + 150 if regression else None)
    return network.eval()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_onnx_reproduces_torch_with_a_dynamic_batch(name: str) -> None:
    network = trained_like(name)
    model = export_onnx(network)
    assert check_parity(model, network, ROWS) <= 1e-4
    for rows in (ROWS[:1], ROWS[:7]):
        outputs = onnx_outputs(model, rows)
        assert all(value.shape[0] == len(rows) for value in outputs.values())
    expected = torch_outputs(network, ROWS)
    actual = onnx_outputs(model, ROWS)
    assert list(actual) == list(expected)  # probabilities first: shadow comparison reads it
    if network.spec.task == "classification":
        np.testing.assert_allclose(actual["probabilities"].sum(axis=1), 1.0, atol=1e-5)
        assert actual["label"].dtype == np.int64
        np.testing.assert_array_equal(actual["label"], expected["label"])
    else:
        assert actual["prediction"].shape == (40,)


def test_a_regressor_answers_in_the_targets_units() -> None:
    network = trained_like("mlp_regressor")
    with torch.no_grad():
        network.body[-1].weight.zero_()
        network.body[-1].bias.zero_()
    prediction = torch_outputs(network, ROWS)["prediction"]
    np.testing.assert_allclose(prediction, float(network.target_mean), rtol=1e-6)


def test_parity_failure_is_an_error() -> None:
    model = export_onnx(trained_like("mlp_classifier", seed=1))
    with pytest.raises(ExportMismatchError, match="disagree"):
        check_parity(model, trained_like("mlp_classifier", seed=2), ROWS)


def test_an_export_answering_nan_fails_the_parity_check() -> None:
    """max(0.0, nan) is 0.0: a network whose answers are NaN passed, and was registered."""
    network = trained_like("mlp_classifier")
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(ExportMismatchError, match="inf"):
        check_parity(export_onnx(network), network, ROWS)


def test_a_bundle_rebuilds_the_same_network(tmp_path: Path) -> None:
    network = trained_like("cnn_classifier")
    save_bundle(network, tmp_path / "model.pt")
    again = load_bundle(tmp_path / "model.pt")
    np.testing.assert_array_equal(torch_outputs(again, ROWS)["probabilities"],
                                  torch_outputs(network, ROWS)["probabilities"])


def test_an_image_shape_that_does_not_fit_the_row_names_the_field() -> None:
    spec = ModelSpec(architecture="cnn_classifier", image_shape=(1, 8, 7))
    with pytest.raises(InvalidJobSpecError, match=r"model.image_shape: \[1, 8, 7\] holds 56"):
        build_network(spec, 64, 10)


def test_constant_features_do_not_divide_by_zero() -> None:
    rows = ROWS.copy()
    rows[:, 0] = 5.0
    network = build_network(SPECS["mlp_classifier"], 64, 10)
    network.set_statistics(rows)
    assert float(network.feature_scale[0]) == 1.0
    assert np.isfinite(torch_outputs(network, rows)["probabilities"]).all()


def test_the_manifest_carries_signature_profile_and_lineage() -> None:
    from training.data import load_dataset
    from training.registration import CodeVersion, build_manifest, reference_profile
    from training.spec import parse_job_spec

    spec = parse_job_spec({"experiment": {"name": "d"}, "model": {"architecture": "mlp_classifier"},
                           "data": {"dataset": "digits"}})
    dataset = load_dataset(spec.data, spec.task)
    network = trained_like("mlp_classifier")
    model = export_onnx(network)
    first = torch_outputs(network, dataset.features)["probabilities"]
    profile = reference_profile(spec, dataset.features, dataset.feature_names, first)
    from training.export import serving_form

    _, signature, steps = serving_form(network, model, as_step=False)
    manifest = build_manifest(spec=spec, dataset=dataset, signature=signature, steps=steps,
                              profile=profile,
                              metrics={"accuracy": 0.5}, run_id="r" * 32, parent_version=None,
                              code=CodeVersion("c" * 40, "main"))
    assert [(s.name, s.dtype, s.shape) for s in manifest.signature.inputs] == [("input", "float32", [None, 64])]
    assert [(s.name, s.dtype, s.shape) for s in manifest.signature.outputs] == [
        ("probabilities", "float32", [None, 10]), ("label", "int64", [None])]
    assert manifest.task == "classification" and manifest.class_labels == [str(i) for i in range(10)]
    assert manifest.lineage.dataset_uri == "sklearn://digits" and manifest.lineage.run_id == "r" * 32
    assert manifest.lineage.code_commit == "c" * 40 and "torch" in manifest.lineage.packages
    from kernels import ReferenceProfile

    features = ReferenceProfile.from_dict(profile)
    assert features.names == tuple(dataset.feature_names)
    predictions = ReferenceProfile.from_dict(profile["predictions"])
    assert predictions.names == ("predicted_class", "confidence")
    assert max(len(f.sample) for f in features.features) <= 256  # small enough to ship


def test_a_regressor_is_checked_in_units_of_its_targets_spread() -> None:
    torch.manual_seed(0)
    network = build_network(SPECS["mlp_regressor"], 64, 1)
    network.set_statistics(ROWS, ROWS[:, 0] * 1e5 + 3e5)  # house prices: float32 steps of 1/32
    network.eval()
    assert check_parity(export_onnx(network), network, ROWS) <= 1e-4


def test_saved_weights_fit_only_the_same_network() -> None:
    from training.finetune import bundle_mismatch
    from training.models import to_bundle

    bundle = to_bundle(trained_like("cnn_classifier"))
    same = SPECS["cnn_classifier"].model_dump(mode="json")
    assert bundle_mismatch(bundle, {**same, "dropout": 0.5}, 64, 10) is None  # not a shape
    assert "10 outputs" in (bundle_mismatch(bundle, same, 64, 3) or "")
    wider = bundle_mismatch(bundle, {**same, "channels": [8, 8]}, 64, 10) or ""
    assert "'channels': ([4, 8], [8, 8])" in wider


@pytest.mark.parametrize("name", ["mlp_classifier", "mlp_regressor"])
def test_the_scaler_as_a_step_serves_what_torch_computes(name: str) -> None:
    """registration.preprocessing: step — the graph takes standardised rows, the archive
    carries the fitted scaler as builtin:standardize, and the serving runner on raw rows
    reproduces torch; the outer signature is what clients send."""
    from control_plane.schemas import ModelManifest
    from training.export import runner_outputs, serving_form

    network = trained_like(name)
    rows = ROWS * 3 + 7  # raw rows far from standardised
    if name == "mlp_regressor":
        network.set_statistics(rows, rows[:, 0] * 10 + 100)
    else:
        network.set_statistics(rows)
    graph = export_onnx(network, standardize=False)
    artifact, signature, steps = serving_form(network, graph, as_step=True)
    assert steps is not None and steps["preprocess"] == "builtin:standardize"
    assert steps["graph_inputs"][0]["name"] == "standardized"
    assert signature["inputs"][0]["name"] == "input"
    ModelManifest.model_validate({"signature": signature, "code": steps})  # a valid manifest
    served = runner_outputs(artifact, signature, steps, rows)
    assert check_parity(graph, network, rows, served=served) <= 1e-4
    import onnxruntime as ort  # the bare graph on raw rows is not the model: the step matters

    bare = ort.InferenceSession(graph).run(None, {"standardized": rows.astype(np.float32)})[0]
    first = next(iter(torch_outputs(network, rows).values()))
    assert np.max(np.abs(bare - first)) > 1e-2
