"""Training one architecture of the proxy space from scratch (the evidence run, the step benchmark)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fbprof.search.data import Dataset
from fbprof.search.supernet import MEMORY_FORMAT, build_arch_child, build_child, to_device
from fbprof.space import ChannelArch, Space

__all__ = ["TrainResult", "train_child", "train_arch", "train_net", "accuracy", "batches", "lr_at"]


@dataclass
class TrainResult:
    accuracy: float  # on the held-out part
    final_loss: float
    seconds: float
    epochs: int


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled list of index batches; a trailing batch of 1 is dropped (BatchNorm needs 2 in train mode)."""
    perm = torch.randperm(n, generator=generator)
    out = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in out if len(b) >= 2]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu", batch_size: int = 256,
             **forward_kwargs) -> float:
    if len(y) == 0:
        return float("nan")
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        out = model(to_device(x[i:i + batch_size], device), **forward_kwargs)
        correct += int((out.argmax(dim=1).cpu() == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / len(y)


def lr_at(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine annealing to 0 at ``total``."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return base * warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def train_child(proxy: Space, blocks: list[str] | tuple[str, ...], head_channels: int, data: Dataset, epochs: int,
                **kw) -> TrainResult:
    """An architecture of the FBNet proxy space (its blocks and head width) trained from scratch (:func:`train_net`)."""
    return train_net(lambda: build_child(proxy, blocks, head_channels), data, epochs, **kw)


def train_arch(arch: ChannelArch, data: Dataset, epochs: int, **kw) -> TrainResult:
    """An architecture of a channel space (FBNetV2: blocks, widths, stem and head widths) at the proxy resolution
    of its space, trained from scratch (:func:`train_net`)."""
    return train_net(lambda: build_arch_child(arch), data, epochs, **kw)


def train_net(build: Callable[[], nn.Module], data: Dataset, epochs: int, batch_size: int = 32, lr: float = 0.05,
              momentum: float = 0.9, weight_decay: float = 1e-4, seed: int = 0, device: str = "cpu") -> TrainResult:
    """SGD with momentum (nesterov), one epoch of linear warm-up then a cosine learning rate, for ``epochs`` on the
    training part; accuracy on the held-out part. ``build`` makes the network after the seed is set."""
    torch.manual_seed(seed)
    net = build().to(device, memory_format=MEMORY_FORMAT)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    last = float("nan")
    steps = 0
    per_epoch = len(batches(len(data.y_train), batch_size, torch.Generator().manual_seed(0)))
    total = epochs * per_epoch
    for _ in range(epochs):
        for b in batches(len(data.y_train), batch_size, gen):
            for g in opt.param_groups:
                g["lr"] = lr_at(lr, steps, total, per_epoch)
            x, y = to_device(data.x_train[b], device), data.y_train[b].to(device)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
            steps += 1
    seconds = time.perf_counter() - t0
    return TrainResult(accuracy(net, data.x_test, data.y_test, device), last, seconds, epochs)
