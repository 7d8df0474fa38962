"""The reports' models in plain PyTorch: copy this file into your project.

Each class is the one of mnist_jax.models of the same name, layer for
layer, with the layer names a PyTorch user writes (report 003's Encoder and
Decoder as the report writes them: conv1, conv2, conv3, fc; deconv1, ...).
`python -m mnist_jax.export --checkpoint RUN_DIR OUT.safetensors` writes a
trained run's weights as a state dict of these classes:

    from safetensors.torch import load_file
    model = CNN()
    model.load_state_dict(load_file("cnn.safetensors"), strict=True)
    model.eval()
    logits = model(inputs)  # inputs: (B, 1, 28, 28), scaled as below

Inputs are NCHW float tensors of shape (B, 1, 28, 28), scaled as the run
that trained them scaled its images (the file's metadata "input_norm"):
the classifiers take `normalize(pixels)`, (pixels / 255 - MNIST_MEAN) /
MNIST_STD, as torchvision's `Normalize((0.1307,), (0.3081,))` after
`ToTensor()`; the autoencoders take pixels / 255, in [0, 1], and return
images in [0, 1].

This module needs torch alone; nothing else of mnist_jax imports it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

MNIST_MEAN = 0.1307  # MNIST's training pixels, on [0, 1] (mnist_jax.pipeline).
MNIST_STD = 0.3081


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) images (B, 1, 28, 28) -> the classifiers' input."""
    return (pixels.float() / 255.0 - MNIST_MEAN) / MNIST_STD


class CNN(nn.Module):
    """Report 004's 3-conv CNN: three blocks of conv 3x3 (padding 1),
    batch norm, ReLU, 2x2 max-pool, dropout 0.25; then FC 128*3*3 -> 256
    -> 128 -> 10 with ReLU and dropout 0.5. 422,474 parameters."""

    def __init__(self, features=(32, 64, 128), hidden=(256, 128), num_classes=10,
                 conv_dropout=0.25, fc_dropout=0.5):  # fmt: skip
        super().__init__()
        c1, c2, c3 = features
        self.conv1, self.bn1 = nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(c3 * 3 * 3, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.conv_dropout, self.fc_dropout = nn.Dropout(conv_dropout), nn.Dropout(fc_dropout)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.conv_dropout(F.max_pool2d(F.relu(bn(conv(x))), 2))  # 28 -> 14 -> 7 -> 3
        x = torch.flatten(x, 1)  # (B, 128 * 3 * 3)
        x = self.fc_dropout(F.relu(self.fc1(x)))
        x = self.fc_dropout(F.relu(self.fc2(x)))
        return self.fc3(x)


class SimpleCNN(nn.Module):
    """Report 000's simple CNN: conv 3x3 (32), ReLU, pool, conv 3x3 (64),
    ReLU, pool, dropout 0.25, FC 64*7*7 -> 10. 50,186 parameters."""

    def __init__(self, features=(32, 64), num_classes=10, dropout=0.25):
        super().__init__()
        c1, c2 = features
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c2 * 7 * 7, num_classes)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 7, 7)
        return self.fc(torch.flatten(self.dropout(x), 1))


class DeepCNN(nn.Module):
    """Report 004's deep CNN: three blocks of two (conv 3x3, batch norm,
    ReLU), 64-64, 128-128, 256-256, each block ending in 2x2 max-pool and
    dropout 0.25; FC 256*3*3 -> 512 (ReLU, dropout 0.5) -> 10. 2,331,338
    parameters."""

    def __init__(self, features=(64, 128, 256), hidden=512, num_classes=10,
                 conv_dropout=0.25, fc_dropout=0.5):  # fmt: skip
        super().__init__()
        widths = [1] + [w for w in features for _ in range(2)]  # 1, 64, 64, 128, ...
        for i in range(1, 7):
            setattr(self, f"conv{i}", nn.Conv2d(widths[i - 1], widths[i], 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
        self.fc1 = nn.Linear(features[-1] * 3 * 3, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.conv_dropout, self.fc_dropout = nn.Dropout(conv_dropout), nn.Dropout(fc_dropout)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10)
        for i in range(1, 7):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i % 2 == 0:  # The end of a block: 28 -> 14 -> 7 -> 3.
                x = self.conv_dropout(F.max_pool2d(x, 2))
        x = self.fc_dropout(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, scaled dot products, proj."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_dropout, self.proj_dropout = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)  # (B, H, T, T)
        out = (self.attn_dropout(weights) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj_dropout(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, eps: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Report 004's ViT: 4x4 patches (49) -> dim 128, a CLS token and learned
    positions, 6 pre-norm blocks of 8 heads (MLP ratio 4, dropout 0.1),
    LayerNorm -> Linear on the CLS token. 1,199,882 parameters. LayerNorm's
    epsilon is 1e-6, as Flax's (PyTorch's default is 1e-5)."""

    def __init__(self, patch_size=4, dim=128, depth=6, num_heads=8, mlp_ratio=4.0,
                 dropout=0.1, num_classes=10, eps=1e-6):  # fmt: skip
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch_size, stride=patch_size)
        tokens = (28 // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim).normal_(std=0.02))
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, dropout, eps) for _ in range(depth)]
        )
        self.norm, self.head = nn.LayerNorm(dim, eps=eps), nn.Linear(dim, num_classes)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 49, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.dropout(x)  # (B, 50, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class LinearAutoencoder(nn.Module):
    """Report 001: 784 -> 128 (ReLU) -> 784 (sigmoid), images in [0, 1]."""

    def __init__(self, latent_dim=128):
        super().__init__()
        self.encoder = nn.Linear(784, latent_dim)
        self.decoder = nn.Linear(latent_dim, 784)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 1, 28, 28)
        z = F.relu(self.encoder(torch.flatten(x, 1)))  # (B, 128)
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)


class Encoder(nn.Module):
    """Report 003's Encoder, as the report writes it."""

    def __init__(self, latent_dim=12):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, stride=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(64 * 3 * 3, latent_dim)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, latent)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 16, 12, 12)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 6, 6)
        x = F.relu(self.conv3(x))  # (B, 64, 3, 3)
        return self.fc(torch.flatten(x, 1))


class Decoder(nn.Module):
    """Report 003's Decoder, as the report writes it."""

    def __init__(self, latent_dim=12):
        super().__init__()
        self.fc = nn.Linear(latent_dim, 64 * 3 * 3)
        self.deconv1 = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1)
        self.deconv2 = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.deconv3 = nn.ConvTranspose2d(16, 1, 5, stride=2, output_padding=1)

    def forward(self, z):  # (B, latent) -> (B, 1, 28, 28)
        x = self.fc(z).view(-1, 64, 3, 3)
        x = F.relu(self.deconv1(x))  # (B, 32, 6, 6)
        x = F.relu(self.deconv2(x))  # (B, 16, 12, 12)
        return torch.sigmoid(self.deconv3(x))


class ConvAutoencoder(nn.Module):
    """Report 003's autoencoder: Encoder -> Decoder, images in [0, 1]."""

    def __init__(self, latent_dim=12):
        super().__init__()
        self.encoder, self.decoder = Encoder(latent_dim), Decoder(latent_dim)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class DenoisingAutoencoder(nn.Module):
    """Report 000's denoiser: conv 3x3 stride 2 (32), conv 3x3 stride 2 (64),
    each with ReLU (28 -> 14 -> 7), then two transposed convolutions back
    up (ReLU, then sigmoid), images in [0, 1]."""

    def __init__(self, features=(32, 64)):
        super().__init__()
        c1, c2 = features
        self.conv1 = nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.deconv1 = nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1)
        self.deconv2 = nn.ConvTranspose2d(c1, 1, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 1, 28, 28)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))  # (B, 64, 7, 7)
        return torch.sigmoid(self.deconv2(F.relu(self.deconv1(x))))


# The name of each model in mnist_jax.models -> its class here.
MODELS = {
    "cnn": CNN,
    "simple_cnn": SimpleCNN,
    "deep_cnn": DeepCNN,
    "vit": ViT,
    "linear_ae": LinearAutoencoder,
    "conv_ae": ConvAutoencoder,
    "denoising_ae": DenoisingAutoencoder,
}
