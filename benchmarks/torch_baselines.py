"""The reports' models as plain PyTorch, and a plain PyTorch training loop:
the other side of `python -m experiments.benchmark --vs-torch`.

torch is only needed here (the optional `bench` extra); the library never
imports it. Each model is the one of mnist_jax.models, layer for layer, in
PyTorch's NCHW layout; the loop is what the reports' notebooks do, minus
the DataLoader: the whole training set sits on the device as a normalised
float tensor, and each step indexes a shuffled batch out of it, so torch
is timed at its fastest plain loop.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from mnist_jax.config import TrainConfig
from mnist_jax.pipeline import MNIST_MEAN, MNIST_STD


def _conv_blocks(widths, per_block: int, batch_norm: bool, dropout: float) -> list[nn.Module]:
    layers, channels = [], 1
    for width in widths:
        for _ in range(per_block):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                *([nn.BatchNorm2d(width)] if batch_norm else []),
                nn.ReLU(),
            ]
            channels = width
        layers += [nn.MaxPool2d(2, 2), *([nn.Dropout(dropout)] if dropout else [])]
    return layers


def cnn() -> nn.Module:  # Report 004's 3-conv CNN: mnist_jax.models.cnn.CNN.
    return nn.Sequential(
        *_conv_blocks((32, 64, 128), 1, True, 0.25),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def simple_cnn() -> nn.Module:  # Report 000: mnist_jax.models.simple_cnn.SimpleCNN.
    return nn.Sequential(
        *_conv_blocks((32, 64), 1, False, 0.0),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 10),
    )


def deep_cnn() -> nn.Module:  # Report 004's "Deep CNN": mnist_jax.models.deep_cnn.DeepCNN.
    return nn.Sequential(
        *_conv_blocks((64, 128, 256), 2, True, 0.25),
        nn.Flatten(),
        nn.Linear(256 * 3 * 3, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 10),
    )


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attention_dropout, self.dropout = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)  # (B, H, T, T)
        out = (self.attention_dropout(weights) @ v).transpose(1, 2).reshape(b, t, d)
        return self.dropout(self.proj(out))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads, dropout)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):  # Report 004's ViT: mnist_jax.models.vit.ViT.
    def __init__(
        self,
        patch: int = 4,
        dim: int = 128,
        depth: int = 6,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        tokens = (28 // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim).normal_(std=0.02))
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 49, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.blocks(self.dropout(x))
        return self.head(self.norm(x[:, 0]))


def linear_ae() -> nn.Module:  # Report 001: mnist_jax.models.autoencoders.LinearAutoencoder.
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 784),
        nn.Sigmoid(),
        nn.Unflatten(1, (1, 28, 28)),
    )


def conv_ae() -> nn.Module:  # Report 003's encoder and decoder: ...autoencoders.ConvAutoencoder.
    return nn.Sequential(
        nn.Conv2d(1, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, 12),
        nn.Linear(12, 64 * 3 * 3),
        nn.Unflatten(1, (64, 3, 3)),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 1, 5, stride=2, output_padding=1),
        nn.Sigmoid(),
    )


def denoising_ae() -> nn.Module:  # Report 000's denoiser: ...autoencoders.DenoisingAutoencoder.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1),
        nn.Sigmoid(),
    )


MODELS = {
    "cnn": cnn,
    "simple_cnn": simple_cnn,
    "deep_cnn": deep_cnn,
    "vit": ViT,
    "linear_ae": linear_ae,
    "conv_ae": conv_ae,
    "denoising_ae": denoising_ae,
}


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
