"""mnist-jax: the models of five PyTorch MNIST reports as pure JAX/Flax functions."""

__version__ = "0.1.0"
