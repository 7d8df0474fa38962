"""The deep CNN of report 004 ("Faster R-CNN adapted" to classification)."""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import BatchNorm, Conv, Dropout, max_pool


class ConvBNReLU(nn.Module):
    """Conv 3x3 (padding 1) -> BatchNorm (PyTorch's defaults) -> ReLU."""

    features: int

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        x = Conv(self.features, (3, 3), padding=1, kernel_init=torch_kernel_init)(x)
        x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(
            x, mask=None if mask is None else mask[:, None, None, None]
        )
        return nn.relu(x)


@register("deep_cnn")
class DeepCNN(nn.Module):
    """Three blocks of two conv layers (64-64, 128-128, 256-256), each block
    ending in 2x2 max-pooling, then FC 256*3*3 -> 512 -> 10.

    The report trains it with "similar hyper-parameters as the CNN", so the
    CNN's dropout (0.25 after each pooling, 0.5 after the hidden FC layer)
    is kept. 2,331,338 parameters.
    """

    dropout_fields: ClassVar[tuple[str, ...]] = ("conv_dropout", "fc_dropout")

    features: Sequence[int] = (64, 128, 256)
    hidden: int = 512
    num_classes: int = 10
    conv_dropout: float = 0.25
    fc_dropout: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        """x: (B, 28, 28, 1) normalised images; mask: (B,) bool, False on padding."""
        for features in self.features:  # 28 -> 14 -> 7 -> 3
            x = ConvBNReLU(features)(x, train=train, mask=mask)
            x = ConvBNReLU(features)(x, train=train, mask=mask)
            x = max_pool(x, 2)
            x = Dropout(self.conv_dropout, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)  # (B, 3 * 3 * 256)
        x = nn.relu(nn.Dense(self.hidden, kernel_init=torch_kernel_init)(x))
        x = Dropout(self.fc_dropout, deterministic=not train)(x)
        self.sow("intermediates", "embedding", x)  # (B, 512): for mnist_jax.inspection.
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init)(x)  # (B, 10)
