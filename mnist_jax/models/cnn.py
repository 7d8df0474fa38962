"""The 3-conv CNN of report 004 ("Lab 2", Part 1)."""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import BatchNorm, Conv, Dropout, max_pool


class ConvBlock(nn.Module):
    """Conv 3x3 (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool -> dropout."""

    features: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        x = Conv(self.features, (3, 3), padding=1, kernel_init=torch_kernel_init)(x)
        # PyTorch's BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
        x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(
            x, mask=None if mask is None else mask[:, None, None, None]
        )
        x = nn.relu(x)
        x = max_pool(x, 2)
        return Dropout(self.dropout_rate, deterministic=not train)(x)


@register("cnn")
class CNN(nn.Module):
    """Conv(32) -> Conv(64) -> Conv(128) -> FC 1152 -> 256 -> 128 -> 10.

    422,474 parameters, as the PyTorch original. Returns logits.

    Attributes:
      features: filters of the conv blocks.
      hidden: widths of the hidden fully connected layers.
      conv_dropout: dropout after each pooling.
      fc_dropout: dropout after each hidden FC layer.
    """

    dropout_fields: ClassVar[tuple[str, ...]] = ("conv_dropout", "fc_dropout")

    features: Sequence[int] = (32, 64, 128)
    hidden: Sequence[int] = (256, 128)
    num_classes: int = 10
    conv_dropout: float = 0.25
    fc_dropout: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        """x: (B, 28, 28, 1) normalised images; mask: (B,) bool, False on
        padding, kept out of the batch-norm statistics."""
        for features in self.features:  # 28 -> 14 -> 7 -> 3
            x = ConvBlock(features, self.conv_dropout)(x, train=train, mask=mask)
        x = x.reshape(x.shape[0], -1)  # (B, 3 * 3 * 128)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=torch_kernel_init)(x))
            x = Dropout(self.fc_dropout, deterministic=not train)(x)
        self.sow("intermediates", "embedding", x)  # (B, 128): for mnist_jax.inspection.
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init)(x)  # (B, 10)
