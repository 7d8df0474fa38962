"""A small CNN for `python -m experiments.speedrun`: 99 % on MNIST in one epoch."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import BatchNorm, Conv, max_pool


@register("speed_cnn")
class SpeedCNN(nn.Module):
    """Conv 5x5 stride 2 (16) -> BN -> ReLU -> Conv 5x5 (32) -> pool -> BN ->
    ReLU -> FC 512 -> 256 -> 10; no padding, no dropout. 147,242 parameters.

    After github.com/tuomaso/train_mnist_fast's net (two unpadded 5x5
    convolutions, batch norm, FC 512 -> 256 -> 10), made cheaper for a CPU:
    the first convolution strides by 2 instead of being pooled (28 -> 12:
    no 24x24 map is computed, its batch norm neither), and the second is
    pooled before its batch norm (12 -> 8 -> 4: the norm on a quarter of the
    values). Batch norm lets a one-cycle learning rate run high from the
    first steps (docs/performance.md: the speedrun).

    Attributes:
      features: filters of the two conv layers.
      hidden: width of the hidden FC layer.
      first_stride: stride of the first convolution.
    """

    features: Sequence[int] = (16, 32)
    hidden: int = 256
    first_stride: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        """x: (B, 28, 28, 1) normalised images; mask: (B,) bool, False on padding."""
        first, second = self.features
        stride = (self.first_stride, self.first_stride)
        x = Conv(first, (5, 5), strides=stride, padding="VALID", kernel_init=torch_kernel_init)(
            x
        )  # (B, 12, 12, 16)
        x = nn.relu(BatchNorm(use_running_average=not train)(x, mask=mask))
        x = Conv(second, (5, 5), padding="VALID", kernel_init=torch_kernel_init)(x)  # (B, 8, 8, 32)
        x = max_pool(x, 2)  # (B, 4, 4, 32)
        x = nn.relu(BatchNorm(use_running_average=not train)(x, mask=mask))
        x = x.reshape(x.shape[0], -1)  # (B, 512)
        x = nn.relu(nn.Dense(self.hidden, kernel_init=torch_kernel_init)(x))
        self.sow("intermediates", "embedding", x)  # (B, 256): for mnist_jax.inspection.
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init)(x)  # (B, 10)
