"""The networks a job trains, and the serving form they are exported in.

A text network (``text_classifier``) reads token ids instead (the job's tokenizer runs in
front of the served graph as a ``builtin:tokenize`` step): an embedding bag and an MLP head.

A :class:`Network` standardises its raw feature row itself (the training split's mean and
standard deviation are buffers), so the served model takes the same raw rows the data had
and no preprocessing has to travel beside the ONNX file. A regressor also learns on a
standardised target and scales its output back. :class:`ServingModel` wraps a trained
network in what the serving stack expects: class probabilities and labels, or values.

A *model bundle* (``torch.save`` of a plain dict) holds what rebuilds a network: the model
section of the spec, the input and output widths, and the state dict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from training.errors import InvalidJobSpecError
from training.schemas import ModelSpec

BUNDLE_FORMAT = 1
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
}


class Network(nn.Module):
    """Standardise → body (MLP or CNN) → logits, or a standardised regression value."""

    def __init__(self, spec: ModelSpec, n_features: int, n_outputs: int, n_ids: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_scale", torch.ones(1))
        # A text network reads token ids; n_features is its max_length, and the embedding
        # rows are padding, unknown and the vocabulary (n_ids, set by build_network).
        self.reads_text = spec.reads_text
        if spec.architecture == "cnn_classifier":
            self.body: nn.Module = _cnn(spec, n_features, n_outputs)
        elif self.reads_text:
            self.body = _TextBag(spec, n_ids, n_outputs)
        else:
            self.body = _mlp(spec, n_features, n_outputs)
        self.n_ids = n_ids

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.long if self.reads_text else torch.float32

    def set_statistics(self, features: np.ndarray, target: np.ndarray | None = None) -> None:
        """Fix the standardisation from the training split (constant columns pass through);
        token ids are not standardised."""
        if self.reads_text:
            return
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale < 1e-8] = 1.0
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        if target is not None:
            std = float(target.std()) or 1.0
            self.target_mean.fill_(float(target.mean()))
            self.target_scale.fill_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reads_text:
            return self.body(x)
        return self.body((x - self.feature_mean) / self.feature_scale)

    def scale_target(self, y: torch.Tensor) -> torch.Tensor:
        """A regression target in the units the network learns in."""
        return (y - self.target_mean) / self.target_scale


class ServingModel(nn.Module):
    """What gets exported: ``(probabilities, label)`` for classifiers, ``prediction`` otherwise.

    The first output is what the serving stack compares between a primary and a shadow
    version (top-1 agreement for classifiers), so probabilities come first.
    """

    def __init__(self, network: Network, *, standardize: bool = True) -> None:
        super().__init__()
        self.network = network
        self.task = network.spec.task
        # False: the graph takes rows already standardised (by a step in front of it).
        self.standardize = standardize

    def forward(self, x: torch.Tensor) -> Any:
        out = self.network(x) if self.standardize else self.network.body(x)
        if self.task == "classification":
            return torch.softmax(out, dim=1), torch.argmax(out, dim=1)
        return (out * self.network.target_scale + self.network.target_mean).reshape(-1)

    @property
    def output_names(self) -> list[str]:
        return ["probabilities", "label"] if self.task == "classification" else ["prediction"]


def build_network(spec: ModelSpec, n_features: int, n_outputs: int, n_ids: int = 0) -> Network:
    """A freshly initialised network for ``n_features`` inputs (``n_outputs`` classes or 1);
    a text network reads ``n_features`` token ids of ``n_ids`` distinct values."""
    if spec.reads_text and n_ids < 3:
        raise InvalidJobSpecError(
            "data: the training texts hold no word seen twice, so there is no vocabulary "
            "to learn from", detail={"field": "data"})
    if spec.image_shape is not None and spec.architecture == "cnn_classifier":
        pixels = math.prod(spec.image_shape)
        if pixels != n_features:
            raise InvalidJobSpecError(
                f"model.image_shape: {list(spec.image_shape)} holds {pixels} values but each "
                f"row has {n_features} features",
                detail={"field": "model.image_shape"},
            )
    return Network(spec, n_features, n_outputs, n_ids)


def unwrap(model: nn.Module) -> Network:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, Network)
    return inner


def to_bundle(network: Network) -> dict[str, Any]:
    """A plain dict that :func:`from_bundle` rebuilds the network from."""
    return {
        "format": BUNDLE_FORMAT,
        "model": network.spec.model_dump(mode="json"),
        "n_features": network.n_features,
        "n_outputs": network.n_outputs,
        "n_ids": network.n_ids,
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
    }


def from_bundle(bundle: dict[str, Any]) -> Network:
    """Rebuild a network saved with :func:`to_bundle` (weights loaded, eval mode)."""
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"unsupported model bundle format {bundle.get('format')!r}")
    network = build_network(ModelSpec.model_validate(bundle["model"]), bundle["n_features"],
                            bundle["n_outputs"], int(bundle.get("n_ids", 0)))
    network.load_state_dict(bundle["state_dict"])
    return network.eval()


def save_bundle(network: Network, path: Any) -> None:
    torch.save(to_bundle(network), path)


def load_bundle(path: Any) -> Network:
    # weights_only: a bundle is tensors and plain values, and nothing else may load.
    return from_bundle(torch.load(path, map_location="cpu", weights_only=True))


def _mlp(spec: ModelSpec, n_in: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in spec.hidden_sizes:
        layers += [nn.Linear(n_in, width), _ACTIVATIONS[spec.activation]()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


def _cnn(spec: ModelSpec, n_features: int, n_out: int) -> nn.Sequential:
    """Conv blocks (conv → activation → 2x2 max-pool while the image is large enough), then dense."""
    assert spec.image_shape is not None
    channels, height, width = spec.image_shape
    layers: list[nn.Module] = [_Reshape((channels, height, width))]
    for out_channels in spec.channels:
        layers += [nn.Conv2d(channels, out_channels, spec.kernel_size, padding=spec.kernel_size // 2),
                   _ACTIVATIONS[spec.activation]()]
        if min(height, width) >= 4:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    layers.append(nn.Flatten())
    # The dense head is the MLP's layers, flattened in so state_dict keys stay "<index>.weight".
    layers += _mlp(spec, channels * height * width, n_out)
    return nn.Sequential(*layers)


class _TextBag(nn.Module):
    """Token ids → the mean of their embeddings (padding left out) → the MLP head.

    Word order is not read: for short texts a bag of words is the strong, cheap baseline,
    and it exports to a handful of plain ONNX ops (Gather, ReduceSum, Div)."""

    def __init__(self, spec: ModelSpec, n_ids: int, n_out: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_ids, spec.embedding_dim, padding_idx=0)
        self.head = _mlp(spec, spec.embedding_dim, n_out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(ids) * mask).sum(dim=1)
        return self.head(summed / mask.sum(dim=1).clamp(min=1.0))
