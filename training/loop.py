"""The per-worker training loop Ray Train runs on every worker (DDP over gloo or NCCL).

Each worker draws its shard of the training rows through a ``DistributedSampler``, and
every epoch it scores its stride of the validation rows; the sums are all-reduced, so
every worker sees the same metrics, reaches the same early-stopping verdict and stops at
the same epoch without further agreement. Rank 0 writes the checkpoints; every rank
reports every epoch (Ray Train requires all of them to).
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoints import load_state, save_state
from training.early_stopping import EarlyStopping
from training.models import Network, build_network, to_bundle, unwrap
from training.schemas import HyperparametersSpec, JobSpec


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``config`` is built by :mod:`training.job`."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    _quiet_report_logs()
    spec = JobSpec.model_validate(config["spec"])
    data = config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    hyper = spec.hyperparameters
    regression = spec.task == "regression"

    # The same seed everywhere: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(spec.data.seed)
    network = build_network(spec.model, data["x_train"].shape[1], config["n_outputs"],
                            config.get("n_ids", 0))
    network.set_statistics(data["x_train"], data["y_train"] if regression else None)
    if config.get("init_state") is not None:
        # Fine-tuning keeps the parent's standardisation too: its weights were learned on it.
        network.load_state_dict(config["init_state"])

    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts this run's workers
    if checkpoint is None and config.get("resume_from"):
        checkpoint = Checkpoint(config["resume_from"])
    state = load_state(checkpoint) if checkpoint is not None else None
    if state is not None:
        network.load_state_dict(state["network"]["state_dict"])
    # Move to the device (and wrap in DDP) before the optimizer loads its state, so that
    # state lands on the same device as the parameters.
    model = ray.train.torch.prepare_model(network)
    optimizer = _optimizer(hyper, model.parameters())
    scheduler = _scheduler(hyper, optimizer)
    stopper = _stopper(spec)
    start_epoch, best_weights = 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        stopper = EarlyStopping.from_state(state["early_stopping"])
        start_epoch, best_weights = int(state["epoch"]), state.get("best_weights")

    # Arrays from the object store are read-only views; torch wants its own copies.
    train_rows = torch.utils.data.TensorDataset(
        torch.tensor(data["x_train"]), torch.tensor(data["y_train"]))
    sampler = torch.utils.data.DistributedSampler(
        train_rows, num_replicas=world, rank=rank, shuffle=True, seed=spec.data.seed)
    loader = torch.utils.data.DataLoader(train_rows, batch_size=hyper.batch_size, sampler=sampler)
    x_val = torch.tensor(data["x_val"][rank::world]).to(device)
    y_val = torch.tensor(data["y_val"][rank::world]).to(device)
    loss_fn: nn.Module = nn.MSELoss() if regression else nn.CrossEntropyLoss()
    every = spec.checkpoint.every_n_epochs
    restore_best = spec.early_stopping is not None and spec.early_stopping.restore_best

    epoch = start_epoch
    for epoch in range(start_epoch + 1, hyper.epochs + 1):
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        started = time.perf_counter()
        train = _train_epoch(model, loader, optimizer, loss_fn, device, regression)
        train_seconds = time.perf_counter() - started
        metrics = _validate(model, x_val, y_val, loss_fn, regression, device)
        metrics.update(_throughput(train, train_seconds, device))
        metrics["learning_rate"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        if stopper.update(metrics[_watched(spec)], epoch) and restore_best:
            best_weights = _cpu_copy(unwrap(model))
        stop = stopper.should_stop
        metrics.update(epoch=epoch, epoch_time_s=time.perf_counter() - started,
                       stopped_early=float(stop))
        if epoch % every == 0 or epoch == hyper.epochs or stop:
            _report_with_checkpoint(rank, metrics, {
                "epoch": epoch, "network": to_bundle(unwrap(model)),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "early_stopping": stopper.state_dict(), "best_weights": best_weights,
            })
        else:
            ray.train.report(metrics)
        if stop:
            break
    if epoch == start_epoch:
        # Resumed at or past the last epoch: hand back what was loaded, unchanged.
        assert state is not None
        _report_with_checkpoint(rank, {"epoch": epoch, "stopped_early": 0.0}, state)


def _quiet_report_logs() -> None:
    """Ray Train logs each report at INFO, a long line per worker per epoch, under a logger
    named after its source file (so ``LoggingConfig`` misses it); the controller's tracker
    callback prints one line an epoch instead."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: leave its logging alone
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _train_epoch(model: nn.Module, loader: Any, optimizer: Any, loss_fn: nn.Module,
                 device: torch.device, regression: bool) -> dict[str, float]:
    model.train()
    network = unwrap(model)
    total, rows = 0.0, 0
    for features, target in loader:
        features, target = features.to(device), target.to(device)
        optimizer.zero_grad(set_to_none=True)
        output = model(features)
        loss = loss_fn(output.squeeze(1), network.scale_target(target)) if regression \
            else loss_fn(output, target)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(target)
        rows += len(target)
    return {"loss_sum": total, "rows": rows}


def _validate(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, loss_fn: nn.Module,
              regression: bool, device: torch.device) -> dict[str, float]:
    """Validation metrics over every worker's stride of the held-out rows."""
    model.eval()
    network = unwrap(model)
    with torch.no_grad():
        # The inner network, not the DDP wrapper: no gradient sync is wanted here.
        output = network(x_val) if len(x_val) else torch.zeros(0, network.n_outputs, device=device)
        if regression:
            scaled = output.squeeze(1)
            loss = loss_fn(scaled, network.scale_target(y_val)) * len(y_val) if len(y_val) else 0.0
            values = scaled * network.target_scale + network.target_mean
            sums = [float(loss), float((values - y_val).abs().sum()),
                    float(((values - y_val) ** 2).sum()), float(len(y_val))]
        else:
            loss = loss_fn(output, y_val) * len(y_val) if len(y_val) else 0.0
            sums = [float(loss), float((output.argmax(dim=1) == y_val).sum()), 0.0, float(len(y_val))]
    loss_sum, first, second, rows = _all_reduce(sums, device)
    rows = max(rows, 1.0)
    if regression:
        return {"val_loss": loss_sum / rows, "val_mae": first / rows,
                "val_rmse": float(np.sqrt(second / rows))}
    return {"val_loss": loss_sum / rows, "val_accuracy": first / rows}


def _throughput(train: dict[str, float], seconds: float, device: torch.device) -> dict[str, float]:
    loss_sum, rows = _all_reduce([train["loss_sum"], train["rows"]], device)
    # Workers run in lockstep (DDP), so the slowest one sets the epoch's pace.
    (slowest,) = _all_reduce([seconds], device, op="max")
    return {"train_loss": loss_sum / max(rows, 1.0), "samples_per_s": rows / max(slowest, 1e-9)}


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _report_with_checkpoint(rank: int, metrics: dict[str, Any], state: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="modelplane-ckpt-") as directory:
        save_state(directory, state)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def _watched(spec: JobSpec) -> str:
    return spec.early_stopping.metric if spec.early_stopping is not None else "val_loss"


def _stopper(spec: JobSpec) -> EarlyStopping:
    if spec.early_stopping is None:
        return EarlyStopping(mode="min")  # tracks the best val_loss, never stops
    rule = spec.early_stopping
    return EarlyStopping(mode=spec.stopping_mode, patience=rule.patience, min_delta=rule.min_delta)


def _cpu_copy(network: Network) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


def _optimizer(hyper: HyperparametersSpec, parameters: Any) -> torch.optim.Optimizer:
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=hyper.learning_rate, momentum=hyper.momentum,
                               weight_decay=hyper.weight_decay)
    kind = torch.optim.AdamW if hyper.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=hyper.learning_rate, weight_decay=hyper.weight_decay)


def _scheduler(hyper: HyperparametersSpec, optimizer: torch.optim.Optimizer) -> Any:
    schedule = hyper.scheduler
    if schedule.type == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_size,
                                               gamma=schedule.gamma)
    if schedule.type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hyper.epochs)
    if schedule.type == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=schedule.gamma)
    return None
