"""The autoencoders of reports 001 and 003, and the classifiers built on
report 003's encoder. Images are (B, 28, 28, 1) in [0, 1]; reconstructions
come out of a sigmoid, in [0, 1] too."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import Conv, ConvTranspose, max_pool


def _dense(features: int, **kw) -> nn.Dense:
    return nn.Dense(features, kernel_init=torch_kernel_init, **kw)


@register("linear_ae")
class LinearAutoencoder(nn.Module):
    """Report 001: 784 -> 128 (ReLU) -> 784 (sigmoid). 201,616 parameters."""

    latent_dim: int = 128

    @nn.compact
    def __call__(self, x, *, train: bool):
        shape = x.shape  # (B, 28, 28, 1)
        z = nn.relu(_dense(self.latent_dim, name="encoder")(x.reshape(shape[0], -1)))  # (B, 128)
        self.sow("intermediates", "embedding", z)  # For mnist_jax.inspection.
        out = nn.sigmoid(_dense(shape[1] * shape[2] * shape[3], name="decoder")(z))  # (B, 784)
        return out.reshape(shape)


def torch_conv_transpose(
    features: int,
    kernel: int,
    stride: int,
    padding: int,
    output_padding: int,
    name: str | None = None,
    kernel_init=torch_kernel_init,
    bias_init=nn.initializers.zeros,
) -> ConvTranspose:
    """A transposed convolution (layers.ConvTranspose) with PyTorch's ConvTranspose2d geometry.

    PyTorch's output size is (n - 1) * stride - 2 * padding + kernel +
    output_padding. lax.conv_transpose pads the stride-dilated input by the
    given amounts, so the same size follows from padding (k - 1 - p) below and
    (k - 1 - p + output_padding) above.

    Args:
      features: output channels.
      kernel: the square kernel's side, k.
      stride: the stride in both dimensions.
      padding: PyTorch's `padding`, p.
      output_padding: PyTorch's `output_padding`, added to the padding above.
      name: the layer's name; None: flax's.
      kernel_init: the kernel's initializer (default: PyTorch's).
      bias_init: the bias's initializer (default: zeros).

    Returns:
      The layers.ConvTranspose.
    """
    low = kernel - 1 - padding
    pads = ((low, low + output_padding),) * 2
    return ConvTranspose(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=pads,
        kernel_init=kernel_init,
        bias_init=bias_init,
        name=name,
    )


class ConvEncoder(nn.Module):
    """Report 003's encoder, layer for layer. 30,476 parameters at latent 12.

    Conv 5x5 (16) -> ReLU -> pool: 28 -> 24 -> 12
    Conv 3x3 pad 1 (32) -> ReLU -> pool: 12 -> 12 -> 6
    Conv 3x3 stride 2 pad 1 (64) -> ReLU: 6 -> 3
    Flatten 3*3*64 -> Linear -> latent (no activation)
    """

    latent_dim: int = 12

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(Conv(16, (5, 5), padding="VALID", kernel_init=torch_kernel_init)(x))
        x = max_pool(x, 2)  # (B, 12, 12, 16)
        x = nn.relu(Conv(32, (3, 3), padding=1, kernel_init=torch_kernel_init)(x))
        x = max_pool(x, 2)  # (B, 6, 6, 32)
        x = nn.relu(Conv(64, (3, 3), strides=(2, 2), padding=1, kernel_init=torch_kernel_init)(x))
        x = x.reshape(x.shape[0], -1)  # (B, 3 * 3 * 64)
        return _dense(self.latent_dim)(x)  # (B, latent)


class ConvDecoder(nn.Module):
    """Report 003's decoder, layer for layer. 30,977 parameters at latent 12.

    Linear latent -> 3*3*64, reshape (B, 3, 3, 64), then ConvTranspose2d
    layers as the report writes them (PyTorch geometry):
      (64->32, k3, s2, p1, op1): 3 -> 6, ReLU
      (32->16, k3, s2, p1, op1): 6 -> 12, ReLU
      (16->1,  k5, s2, p0, op1): 12 -> 28, sigmoid
    so the report's decoder does yield 28x28, with no change.
    """

    @nn.compact
    def __call__(self, z, *, train: bool = False):
        x = _dense(3 * 3 * 64)(z).reshape(z.shape[0], 3, 3, 64)
        x = nn.relu(torch_conv_transpose(32, 3, 2, 1, 1)(x))  # (B, 6, 6, 32)
        x = nn.relu(torch_conv_transpose(16, 3, 2, 1, 1)(x))  # (B, 12, 12, 16)
        return nn.sigmoid(torch_conv_transpose(1, 5, 2, 0, 1)(x))  # (B, 28, 28, 1)


@register("conv_ae")
class ConvAutoencoder(nn.Module):
    """ConvEncoder -> ConvDecoder; parameter groups "encoder" and "decoder"."""

    latent_dim: int = 12

    def setup(self):
        self.encoder = ConvEncoder(self.latent_dim)
        self.decoder = ConvDecoder()

    def encode(self, x):
        return self.encoder(x)

    def __call__(self, x, *, train: bool):
        z = self.encoder(x)  # (B, latent)
        self.sow("intermediates", "embedding", z)  # For mnist_jax.inspection.
        return self.decoder(z)


@register("denoising_ae")
class DenoisingAutoencoder(nn.Module):
    """Report 000's denoiser: strided convolutions down, transposed ones back up.

    The report says only "convolutional and transposed convolutional
    layers". Here the code stays a (B, 7, 7, 64) map rather than a vector:
    a denoiser has to keep where the strokes are, not compress them.
    37,569 parameters at the default features.

    Conv 3x3 stride 2 pad 1 (32) -> ReLU: 28 -> 14
    Conv 3x3 stride 2 pad 1 (64) -> ReLU: 14 -> 7
    ConvTranspose (64->32, k3, s2, p1, op1) -> ReLU: 7 -> 14
    ConvTranspose (32->1,  k3, s2, p1, op1) -> sigmoid: 14 -> 28
    """

    features: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x, *, train: bool):
        # Trained from PyTorch's init on heavy noise (sigma 0.5), this net
        # settles within ~50 steps on a black image: the output bias plunges
        # from sigmoid 0.5 towards MNIST's mostly black pixels, the last ReLUs
        # die and no gradient comes back. Starting the output at sigmoid(-2)
        # = 0.12 (MNIST's mean pixel is 0.13) and using He initialisation
        # avoids that plunge (tests/test_denoising.py trains it).
        init = nn.initializers.he_normal()
        for width in self.features:  # (B, 28, 28, 1) -> (B, 7, 7, 64)
            x = nn.relu(Conv(width, (3, 3), strides=(2, 2), padding=1, kernel_init=init)(x))
        self.sow(
            "intermediates", "embedding", x
        )  # The code (B, 7, 7, 64): for mnist_jax.inspection.
        for width in (*reversed(self.features[:-1]), None):  # -> (B, 28, 28, 1)
            bias = nn.initializers.zeros_init() if width else nn.initializers.constant(-2.0)
            x = torch_conv_transpose(width or 1, 3, 2, 1, 1, kernel_init=init, bias_init=bias)(x)
            x = nn.relu(x) if width else nn.sigmoid(x)
        return x


class MLPHead(nn.Module):
    """LayerNorm of the latent code, hidden ReLU layers with dropout, then logits.

    A pretrained encoder's code has whatever scale the autoencoder gave it
    (12 numbers of order 10 or more), which the head would first have to
    learn away. LayerNorm makes the head independent of that scale.
    """

    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    dropout: float = 0.0
    normalize_input: bool = True

    @nn.compact
    def __call__(self, z, *, train: bool):
        if self.normalize_input:
            z = nn.LayerNorm()(z)
        for width in self.hidden:
            z = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(_dense(width)(z)))
        return _dense(self.num_classes)(z)


@register("encoder_classifier")
class EncoderClassifier(nn.Module):
    """Report 003's Classifier: the (pretrained) ConvEncoder and an MLP.

    Groups "encoder" and "head": train only "head" to keep the pretrained
    encoder frozen, or both to fine-tune it. The report does not give the
    MLP; it is LayerNorm -> 128 (ReLU) -> 10 here (see MLPHead).
    """

    latent_dim: int = 12
    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    dropout: float = 0.0

    def setup(self):
        self.encoder = ConvEncoder(self.latent_dim)
        self.head = MLPHead(self.hidden, self.num_classes, self.dropout)

    def __call__(self, x, *, train: bool):
        z = self.encoder(x)  # (B, latent)
        self.sow("intermediates", "embedding", z)  # For mnist_jax.inspection.
        return self.head(z, train=train)  # (B, 10)


@register("classifier_decoding")
class ClassifierDecoding(EncoderClassifier):
    """Report 003's ClassifierDecoding: one encoder feeding both an MLP and
    the decoder, fine-tuned on cross-entropy plus reconstruction MSE (task
    "classify_decode"). Returns (logits (B, 10), reconstruction (B, 28, 28, 1)).
    Groups "encoder", "head" and "decoder"."""

    def setup(self):
        super().setup()
        self.decoder = ConvDecoder()

    def __call__(self, x, *, train: bool) -> tuple[jax.Array, jax.Array]:
        z = self.encoder(x)  # (B, latent)
        self.sow("intermediates", "embedding", z)  # For mnist_jax.inspection.
        return self.head(z, train=train), self.decoder(z)
