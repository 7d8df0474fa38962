"""VGG16 and AlexNet as torchvision builds them, for transfer learning (report 004).

Layer names carry torchvision's indices (`features/conv_0` is
`features.0`, `classifier/fc_6` is `classifier.6`), so converting a
torchvision state dict is a rename plus layout changes (see
mnist_jax.pretrained).

Inputs are MNIST images (B, 28, 28, 1) in [0, 1]; the model does what the
report's torchvision transforms did: resize to `image_size`, repeat the gray
channel three times, normalise with ImageNet's statistics.

Split into `features` (frozen in transfer learning, deterministic) and
`classifier` (adaptive average pooling, flatten, the MLP), so the features
can be computed once and the classifier trained on them alone.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Conv:
    features: int
    kernel: int
    stride: int
    padding: int
    torch_index: int


@dataclasses.dataclass(frozen=True)
class MaxPool:
    window: int
    stride: int


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A torchvision classification network, layer by layer."""

    name: str
    layers: tuple  # Conv (each followed by ReLU) and MaxPool, in order.
    pool_size: int  # AdaptiveAvgPool2d output size.
    classifier_indices: tuple[int, int, int]  # torchvision indices of the three Linear layers.
    dropout_before_linear: bool  # AlexNet: Dropout -> Linear; VGG: Linear -> ReLU -> Dropout.
    min_image_size: int


def _vgg16_layers() -> tuple:
    layers, index = [], 0
    for width, convs in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
        for _ in range(convs):
            layers.append(Conv(width, 3, 1, 1, index))
            index += 2  # Conv2d, ReLU
        layers.append(MaxPool(2, 2))
        index += 1
    return tuple(layers)


VGG16 = Architecture(
    "vgg16",
    _vgg16_layers(),
    pool_size=7,
    classifier_indices=(0, 3, 6),
    dropout_before_linear=False,
    min_image_size=32,
)
ALEXNET = Architecture(
    "alexnet",
    (
        Conv(64, 11, 4, 2, 0),
        MaxPool(3, 2),
        Conv(192, 5, 1, 2, 3),
        MaxPool(3, 2),
        Conv(384, 3, 1, 1, 6),
        Conv(256, 3, 1, 1, 8),
        Conv(256, 3, 1, 1, 10),
        MaxPool(3, 2),
    ),
    pool_size=6,
    classifier_indices=(1, 4, 6),
    dropout_before_linear=True,
    min_image_size=63,
)
ARCHITECTURES = {"vgg16": VGG16, "alexnet": ALEXNET}


def imagenet_inputs(x: jax.Array, image_size: int) -> jax.Array:
    """(B, 28, 28, 1) in [0, 1] -> (B, S, S, 3), ImageNet-normalised.

    Bilinear resize (half-pixel centres, as torchvision's Resize), gray
    repeated to RGB, then (x - mean) / std per channel.
    """
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")
    x = jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
    mean = jnp.asarray(IMAGENET_MEAN, x.dtype).reshape(1, 1, 1, 3)
    std = jnp.asarray(IMAGENET_STD, x.dtype).reshape(1, 1, 1, 3)
    return (x - mean) / std


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging weights of torch's AdaptiveAvgPool over one axis:
    bin i averages [floor(i * in / out), ceil((i + 1) * in / out))."""
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d(out_size) for (B, H, W, C) inputs."""
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_size), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_size), x.dtype)
    return jnp.einsum("bhwc,ph,qw->bpqc", x, rows, cols)  # (B, out, out, C)


class Features(nn.Module):
    """The convolutional part: Conv (+ ReLU) and MaxPool layers."""

    architecture: Architecture

    @nn.compact
    def __call__(self, x):
        for layer in self.architecture.layers:
            if isinstance(layer, Conv):
                x = nn.Conv(
                    layer.features,
                    (layer.kernel, layer.kernel),
                    strides=(layer.stride, layer.stride),
                    padding=layer.padding,
                    kernel_init=torch_kernel_init,
                    name=f"conv_{layer.torch_index}",
                )(x)
                x = nn.relu(x)
            else:
                x = nn.max_pool(x, (layer.window,) * 2, strides=(layer.stride,) * 2)
        return x


class ClassifierHead(nn.Module):
    """Adaptive average pooling -> flatten -> Linear-ReLU-Dropout x2 -> Linear.

    Takes the features' output (B, h, w, C) of any spatial size.
    """

    architecture: Architecture
    num_classes: int = 10
    hidden: int = 4096
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool):
        a = self.architecture
        x = adaptive_avg_pool(x, a.pool_size)  # (B, P, P, C)
        x = x.reshape(x.shape[0], -1)  # (B, P * P * C), (h, w, c) order
        widths = (self.hidden, self.hidden, self.num_classes)
        for i, (index, width) in enumerate(zip(a.classifier_indices, widths)):
            last = i == 2
            if last:
                self.sow("intermediates", "embedding", x)  # (B, hidden): for mnist_jax.inspection.
            if a.dropout_before_linear and not last:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = nn.Dense(width, kernel_init=torch_kernel_init, name=f"fc_{index}")(x)
            if not last:
                x = nn.relu(x)
                if not a.dropout_before_linear:
                    x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x  # (B, num_classes)


class TransferNet(nn.Module):
    """torchvision's VGG16 or AlexNet with a `num_classes` final layer.

    Parameter groups: "features" (frozen in the report) and "classifier".
    """

    arch: str = "vgg16"
    image_size: int = 224
    num_classes: int = 10
    hidden: int = 4096
    dropout: float = 0.5

    def setup(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.arch!r}; choose one of {sorted(ARCHITECTURES)}"
            )
        a = ARCHITECTURES[self.arch]
        if self.image_size < a.min_image_size:
            raise ValueError(
                f"{self.arch} needs image_size >= {a.min_image_size} (its pooling "
                f"shrinks smaller images to nothing), got {self.image_size}"
            )
        self.features = Features(a)
        self.classifier = ClassifierHead(a, self.num_classes, self.hidden, self.dropout)

    def extract(self, x):
        """(B, 28, 28, 1) in [0, 1] -> the features' output (B, h, w, C)."""
        return self.features(imagenet_inputs(x, self.image_size))

    def __call__(self, x, *, train: bool):
        return self.classifier(self.extract(x), train=train)


class CachedFeaturesNet(nn.Module):
    """The classifier alone, trained on precomputed features.

    It nests ClassifierHead under the name "classifier", as TransferNet
    does, so its parameters are TransferNet's params["classifier"] and its
    dropout draws the same masks from the same keys: training on cached
    features is the frozen-network run, computed faster.
    """

    arch: str = "vgg16"
    num_classes: int = 10
    hidden: int = 4096
    dropout: float = 0.5

    def setup(self):
        self.classifier = ClassifierHead(
            ARCHITECTURES[self.arch], self.num_classes, self.hidden, self.dropout
        )

    def __call__(self, features, *, train: bool):
        """features: TransferNet.extract's output (B, h, w, C) -> logits."""
        return self.classifier(features, train=train)


def head_for(model: TransferNet) -> CachedFeaturesNet:
    return CachedFeaturesNet(model.arch, model.num_classes, model.hidden, model.dropout)


register("vgg16", functools.partial(TransferNet, arch="vgg16"))
register("alexnet", functools.partial(TransferNet, arch="alexnet"))
