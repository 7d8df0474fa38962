"""A plain PyTorch training loop for the reports' models: the other side of
`python -m experiments.benchmark --vs-torch`.

torch is only needed here and in mnist_jax.torch_models (the optional
`bench` extra); the rest of the library never imports it. The models are
mnist_jax.torch_models' (each the one of mnist_jax.models, layer for layer,
in PyTorch's NCHW layout, the classes `python -m mnist_jax.export` writes
state dicts for); the loop is what the reports' notebooks do, minus
the DataLoader: the whole training set sits on the device as a normalised
float tensor, and each step indexes a shuffled batch out of it, so torch
is timed at its fastest plain loop.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from mnist_jax.config import TrainConfig
from mnist_jax.pipeline import MNIST_MEAN, MNIST_STD
from mnist_jax.torch_models import MODELS

__all__ = ["MODELS", "TorchTrainer", "optimizer"]


def optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """torch's own optimizer for the config (mnist_jax.train.make_optimizer mirrors these)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )


class TorchTrainer:
    """`config`'s model, optimizer and loss, training on `images` (N, 28, 28, 1) uint8."""

    def __init__(self, config: TrainConfig, images: np.ndarray, labels: np.ndarray, device: str):
        torch.manual_seed(config.seed)
        self.device = torch.device(device)
        self.config = config
        self.model = MODELS[config.model]().to(self.device).train()
        self.optimizer = optimizer(config, self.model.parameters())
        # (N, 1, 28, 28) in [0, 1]: torchvision's ToTensor, done once.
        self.clean = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.order = torch.randperm(len(labels), device=self.device)
        self.position = 0

    def _batch(self):
        size = self.config.batch_size
        if self.position + size > len(self.order):
            self.order, self.position = torch.randperm(len(self.order), device=self.device), 0
        idx = self.order[self.position : self.position + size]
        self.position += size
        return idx

    def step(self) -> None:
        idx = self._batch()
        clean = self.clean[idx]
        inputs = clean
        if self.config.noise.kind == "gaussian":  # Noise on the fly, as mnist_jax.pipeline.
            inputs = (clean + self.config.noise.level * torch.randn_like(clean)).clamp(0.0, 1.0)
        if self.config.input_norm == "mnist":
            inputs = (inputs - MNIST_MEAN) / MNIST_STD
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(inputs)
        if self.config.task == "classify":
            loss = nn.functional.cross_entropy(outputs, self.labels[idx])
        else:
            loss = nn.functional.mse_loss(outputs, clean)
        loss.backward()
        self.optimizer.step()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps."""
        self.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.synchronize()
        return time.perf_counter() - start

    def device_peak_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
