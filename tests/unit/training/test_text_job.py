"""text_classifier jobs: the generated reviews, the fitted tokenizer, the embedding-bag
network, and the version it is registered as (tokenizer → graph → class names), served by
the serving stack's own runner exactly as torch computes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import InvalidJobSpecError
from training.data import load_dataset, split_dataset
from training.export import (
    check_parity,
    export_onnx,
    runner_outputs,
    text_serving_form,
    torch_outputs,
)
from training.models import build_network, from_bundle, to_bundle
from training.schemas import DataSpec, ModelSpec
from training.spec import parse_job_spec
from training.text import TextEncoding, fit_vocabulary, generate_reviews

TEXT_SPEC = ModelSpec(architecture="text_classifier", hidden_sizes=[16], embedding_dim=16,
                      max_length=24, vocabulary_size=200)


def test_reviews_are_the_same_for_a_seed_and_learnable_from_words() -> None:
    texts, labels = generate_reviews(rows=400, seed=3)
    again, same = generate_reviews(rows=400, seed=3)
    assert texts == again and np.array_equal(labels, same)
    assert generate_reviews(rows=400, seed=4)[0] != texts
    assert 0.4 < labels.mean() < 0.6 and len(set(texts)) > 390
    dataset = load_dataset(DataSpec(dataset="reviews"), "classification", text=True)
    assert dataset.features.shape == (2000, 1) and dataset.features.dtype == object
    assert dataset.feature_names == ["review"] and dataset.class_labels == ["negative", "positive"]
    assert dataset.uri == "generated://reviews" and len(dataset.digest) == 64


def test_the_vocabulary_is_the_frequent_words_and_ids_are_the_served_steps() -> None:
    texts = np.array(["Great kettle, great price", "great kettle", "awful lid", "lid broke"],
                     dtype=object)
    vocabulary = fit_vocabulary(texts, size=10)
    assert vocabulary == ["great", "kettle", "lid"]  # seen twice or more; most frequent first
    assert fit_vocabulary(texts, size=1) == ["great"]
    encoding = TextEncoding(vocabulary, max_length=4)
    ids = encoding.encode(texts)
    # 0 pads, 1 is a word outside the vocabulary, the i-th word is i + 2.
    assert ids.tolist() == [[2, 3, 1, 2], [2, 3, 0, 0], [1, 4, 0, 0], [4, 1, 0, 0]]
    assert ids.dtype == np.int64 and encoding.id_count == 5


def _trained(rows: int = 600, epochs: int = 30) -> tuple:
    dataset = load_dataset(DataSpec(dataset="reviews"), "classification", text=True)
    split = split_dataset(dataset, validation_split=0.25, seed=0)
    encoding = TextEncoding(fit_vocabulary(split.x_train[:rows, 0], 200), 24, input_name="review")
    x_train, x_val = encoding.encode(split.x_train[:rows, 0]), encoding.encode(split.x_val[:, 0])
    torch.manual_seed(0)
    network = build_network(TEXT_SPEC, 24, 2, encoding.id_count)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.02)
    ids, target = torch.as_tensor(x_train), torch.as_tensor(split.y_train[:rows])
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(ids), target)
        loss.backward()
        optimizer.step()
    return network.eval(), encoding, split, x_val


def test_an_embedding_bag_learns_the_reviews_and_its_version_serves_texts_as_torch_does() -> None:
    network, encoding, split, x_val = _trained()
    probabilities = torch_outputs(network, x_val)["probabilities"]
    accuracy = float((probabilities.argmax(axis=1) == split.y_val).mean())
    assert accuracy > 0.8, accuracy  # 4% of the labels are flipped on purpose

    graph = export_onnx(network)
    artifact, signature, code = text_serving_form(graph, encoding, ["negative", "positive"])
    assert signature["inputs"] == [{"name": "review", "dtype": "string", "shape": [None]}]
    assert [o["name"] for o in signature["outputs"]] == ["probabilities", "label"]
    assert code["preprocess"] == "builtin:tokenize" and code["postprocess"] == "builtin:label_map"
    assert code["graph_inputs"][0]["name"] == "tokens" and code["graph_inputs"][0]["dtype"] == "int64"
    from control_plane.schemas import ModelManifest

    ModelManifest.model_validate({"signature": signature, "code": code})  # a valid manifest
    served = runner_outputs(artifact, signature, code, {"review": split.x_val[:, 0]})
    assert check_parity(graph, network, x_val, served=served) <= 1e-4
    names = np.asarray(["negative", "positive"], dtype=object)[probabilities.argmax(axis=1)]
    assert [v.decode() for v in served["label"]] == names.tolist()  # BYTES, as on the wire
    # A word the job never saw is unknown, not an error; an empty text is all padding.
    odd = runner_outputs(artifact, signature, code,
                         {"review": np.array(["zyzzyva quux", ""], dtype=object)})
    assert np.allclose(odd["probabilities"].sum(axis=1), 1.0)


def test_a_text_network_rebuilds_from_its_bundle() -> None:
    network, _, _, x_val = _trained(rows=200, epochs=2)
    again = from_bundle(to_bundle(network))
    assert again.n_ids == network.n_ids and again.reads_text
    np.testing.assert_array_equal(torch_outputs(again, x_val)["probabilities"],
                                  torch_outputs(network, x_val)["probabilities"])


@pytest.mark.parametrize("document, field, message", [
    ({"model": {"architecture": "mlp_classifier"}, "data": {"dataset": "reviews"}},
     "model.architecture", "reviews is a text dataset; use text_classifier"),
    ({"model": {"architecture": "text_classifier"}, "data": {"dataset": "digits"}},
     "model.architecture", "text_classifier reads texts, and digits is not a text dataset"),
    ({"model": {"architecture": "text_classifier", "init_from": "m:1"},
      "data": {"dataset": "reviews"}}, "model.init_from", "not available for text_classifier"),
    ({"model": {"architecture": "text_classifier", "max_length": 0},
      "data": {"dataset": "reviews"}}, "model.max_length", "greater than or equal to 1"),
])
def test_text_specs_that_cannot_work_name_the_field(document: dict, field: str, message: str) -> None:
    with pytest.raises(InvalidJobSpecError, match=message) as caught:
        parse_job_spec({"experiment": {"name": "t"}, **document})
    assert caught.value.detail["field"] == field


def test_a_file_with_more_than_one_text_column_names_data_features(tmp_path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("title,body,stars\nok,fine kettle,good\nbad,broke fast,bad\nmeh,it works,good\n")
    with pytest.raises(InvalidJobSpecError, match="text_classifier reads one text column") as caught:
        load_dataset(DataSpec(path=str(path), target="stars"), "classification", text=True)
    assert caught.value.detail["field"] == "data.features"
    one = load_dataset(DataSpec(path=str(path), target="stars", features=["body"]),
                       "classification", text=True)
    assert one.features[:, 0].tolist() == ["fine kettle", "broke fast", "it works"]
    assert one.class_labels == ["bad", "good"]


def test_the_pipelines_evaluate_stage_scores_a_text_version_on_its_texts() -> None:
    """Held-out rows of a table with the text column, scored through the archive's steps
    exactly as the job measured them with torch."""
    import pandas as pd

    from control_plane.pipelines.evaluation import evaluate, features_and_target
    from training.registration import text_reference_profile
    from training.schemas import JobSpec

    network, encoding, split, x_val = _trained()
    artifact, signature, code = text_serving_form(export_onnx(network), encoding,
                                                  ["negative", "positive"])
    spec = JobSpec.model_validate({"experiment": {"name": "t"}, "model": TEXT_SPEC.model_dump(),
                                   "data": {"dataset": "reviews"}})
    first = torch_outputs(network, x_val)["probabilities"]
    profile = text_reference_profile(spec, encoding, split.x_val[:, 0], first)
    assert profile["text"]["review"]["vocabulary"] == sorted(encoding.vocabulary)
    manifest = {"signature": signature, "code": code, "task": "classification",
                "feature_names": ["review"], "class_labels": ["negative", "positive"]}
    table = pd.DataFrame({"review": split.x_val[:, 0], "target": split.y_val})
    X, y = features_and_target(table, manifest)
    assert X.dtype == object and X.shape == (len(table),)
    report = evaluate(artifact, None, X, y, manifest, {"min_accuracy": 0.5})
    expected = float((first.argmax(axis=1) == split.y_val).mean())
    assert report.candidate["accuracy"] == pytest.approx(expected)


def test_the_evaluate_stage_holds_out_a_text_jobs_own_rows_as_texts() -> None:
    """Without evaluate.data_uri the stage reads the job's data itself: a text job's one
    column was read as numbers, and its evaluate stage always failed."""
    from types import SimpleNamespace

    from control_plane.pipelines.gates import EvaluateStage
    from control_plane.pipelines.spec import parse_pipeline_spec

    job = {"experiment": {"name": "t"}, "model": TEXT_SPEC.model_dump(),
           "data": {"dataset": "reviews", "validation_split": 0.25, "seed": 0}}
    spec = parse_pipeline_spec({"name": "reviews", "training": {"job": job}, "evaluate": {},
                                "data": {"uri": "sklearn://breast_cancer"},
                                "deploy": {"endpoint": "reviews"}})
    features, truth, _ = EvaluateStage._held_out(SimpleNamespace(spec=spec), {
        "signature": {"inputs": [{"name": "review", "dtype": "string", "shape": [None]}],
                      "outputs": [{"name": "probabilities", "dtype": "float32",
                                   "shape": [None, 2]}]},
        "task": "classification"})
    split = split_dataset(load_dataset(DataSpec(dataset="reviews"), "classification", text=True),
                          validation_split=0.25, seed=0)
    assert features.dtype == object and features.tolist() == split.x_val[:, 0].tolist()
    assert set(truth.tolist()) == {"negative", "positive"}
