"""Flax linen models of the reports, looked up by name."""

import functools

from mnist_jax.models.autoencoders import (ClassifierDecoding, ConvAutoencoder, ConvDecoder,
                                           ConvEncoder, DenoisingAutoencoder, EncoderClassifier,
                                           LinearAutoencoder)
from mnist_jax.models.cnn import CNN
from mnist_jax.models.deep_cnn import DeepCNN
from mnist_jax.models.simple_cnn import SimpleCNN
from mnist_jax.models.speed_cnn import SpeedCNN
from mnist_jax.models.transfer import TransferNet
from mnist_jax.models.vit import ViT

MODELS = {
    "cnn": CNN,
    "simple_cnn": SimpleCNN,
    "deep_cnn": DeepCNN,
    "vit": ViT,
    "vgg16": functools.partial(TransferNet, arch="vgg16"),
    "alexnet": functools.partial(TransferNet, arch="alexnet"),
    "linear_ae": LinearAutoencoder,
    "conv_ae": ConvAutoencoder,
    "denoising_ae": DenoisingAutoencoder,
    "encoder_classifier": EncoderClassifier,
    "classifier_decoding": ClassifierDecoding,
    "speed_cnn": SpeedCNN,
}

# Model fields that are dropout rates (models.layers.Dropout): they may be
# traced arrays, so sweep trials that differ only in them train together.
DROPOUT_FIELDS = {
    "cnn": ("conv_dropout", "fc_dropout"),
    "simple_cnn": ("dropout",),
    "deep_cnn": ("conv_dropout", "fc_dropout"),
    "vit": ("dropout",),
}


def get_model(name: str, **kwargs):
    """Builds the model registered under `name` with its hyperparameters."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)
