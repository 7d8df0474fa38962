"""The simple CNN of report 000: two conv layers, ReLU, max-pool, dropout, one FC layer."""

from typing import ClassVar

import flax.linen as nn

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import Conv, Dropout, max_pool


@register("simple_cnn")
class SimpleCNN(nn.Module):
    """Conv(32) -> ReLU -> pool -> Conv(64) -> ReLU -> pool -> dropout -> FC 3136 -> 10.

    The report names the layers but not their sizes; these are the usual
    ones for this design (the PyTorch MNIST tutorials'), 50,186 parameters.

    Attributes:
      features: filters of the two 3x3 (padding 1) conv layers.
      dropout: rate before the FC layer.
    """

    dropout_fields: ClassVar[tuple[str, ...]] = ("dropout",)

    features: tuple[int, int] = (32, 64)
    num_classes: int = 10
    dropout: float = 0.25

    @nn.compact
    def __call__(self, x, *, train: bool):
        """x: (B, 28, 28, 1) normalised images -> logits (B, 10)."""
        for features in self.features:  # 28 -> 14 -> 7
            x = nn.relu(Conv(features, (3, 3), padding=1, kernel_init=torch_kernel_init)(x))
            x = max_pool(x, 2)
        x = Dropout(self.dropout, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)  # (B, 7 * 7 * 64)
        self.sow("intermediates", "embedding", x)  # For mnist_jax.inspection.
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init)(x)
