"""The CNN of `python -m experiments.best`: strided 5x5 convolutions in place of pooling."""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from mnist_jax.models import register
from mnist_jax.models.layers import BatchNorm, Conv, Dropout


class ConvReLUBN(nn.Module):
    """Conv -> ReLU -> BatchNorm (Keras's momentum 0.99, epsilon 1e-3): the
    order of the Keras original, the norm after the activation."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: str = "VALID"

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        size, stride = (self.kernel_size,) * 2, (self.stride,) * 2
        x = nn.relu(Conv(self.features, size, strides=stride, padding=self.padding)(x))
        return BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)(x, mask=mask)


@register("strided_cnn")
class StridedCNN(nn.Module):
    """Two blocks of conv 3x3, conv 3x3, conv 5x5 stride 2 (32, then 64
    filters), each conv followed by ReLU and batch norm and each block by
    dropout, then conv 4x4 (128) -> dropout -> FC 10. 326,410 parameters
    (Keras counts 327,242: the batch norms' running statistics too).

    Chris Deotte's Kaggle MNIST CNN (github.com/cdeotte/MNIST-CNN-99.75,
    "How to choose CNN architecture MNIST"): the strided 5x5 convolution
    learns its own downsampling where a max-pool would fix it, and the
    unpadded 3x3s shrink the map so the last 4x4 convolution sees it whole
    (28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 -> 1).

    Attributes:
      features: filters of the two blocks, then of the last convolution.
      dropout_rate: after each block and before the classifier.
    """

    dropout_fields: ClassVar[tuple[str, ...]] = ("dropout_rate",)

    features: Sequence[int] = (32, 64, 128)
    dropout_rate: float = 0.4
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool, mask: jax.Array | None = None):
        """x: (B, 28, 28, 1) normalised images; mask: (B,) bool, False on padding."""
        *blocks, last = self.features
        for features in blocks:  # (B, 28, 28, 1) -> (B, 12, 12, 32) -> (B, 4, 4, 64)
            x = ConvReLUBN(features, 3)(x, train=train, mask=mask)
            x = ConvReLUBN(features, 3)(x, train=train, mask=mask)
            x = ConvReLUBN(features, 5, stride=2, padding="SAME")(x, train=train, mask=mask)
            x = Dropout(self.dropout_rate, deterministic=not train)(x)
        x = ConvReLUBN(last, x.shape[1])(x, train=train, mask=mask)  # (B, 1, 1, 128)
        x = x.reshape(x.shape[0], -1)  # (B, 128)
        self.sow("intermediates", "embedding", x)  # (B, 128): for mnist_jax.inspection.
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # (B, 10)
