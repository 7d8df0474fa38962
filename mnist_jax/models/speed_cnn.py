"""A small CNN for `python -m experiments.speedrun`: 99 % on MNIST in one epoch."""

from typing import Sequence

import flax.linen as nn
import jax

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import BatchNorm, Conv, max_pool


@register("speed_cnn")
class SpeedCNN(nn.Module):
    """Conv 5x5 (24) -> BN -> ReLU -> pool -> Conv 5x5 (32) -> BN -> ReLU -> pool
    -> FC 512 -> 256 -> 10; no padding, no dropout. 153,866 parameters.

    The shape of github.com/tuomaso/train_mnist_fast's net: unpadded 5x5
    convolutions shrink the maps early (28 -> 24 -> 12 -> 8 -> 4), so a
    step costs a fraction of the 3-conv CNN's, and batch norm lets a
    one-cycle learning rate run high from the first steps.

    Attributes:
      features: filters of the two conv layers.
      hidden: width of the hidden FC layer.
    """

    features: Sequence[int] = (24, 32)
    hidden: int = 256
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        """x: (B, 28, 28, 1) normalised images; mask: (B,) bool, False on padding."""
        for features in self.features:  # 28 -> 24 -> 12 -> 8 -> 4
            x = Conv(features, (5, 5), padding="VALID", kernel_init=torch_kernel_init)(x)
            x = BatchNorm(use_running_average=not train)(x, mask=mask)
            x = max_pool(nn.relu(x), 2)
        x = x.reshape(x.shape[0], -1)  # (B, 4 * 4 * 32)
        x = nn.relu(nn.Dense(self.hidden, kernel_init=torch_kernel_init)(x))
        self.sow("intermediates", "embedding", x)  # (B, 256): for mnist_jax.inspection.
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init)(x)  # (B, 10)
