"""mnist-jax: the models of five PyTorch MNIST reports as pure JAX/Flax functions."""

from mnist_jax import caches as _caches
from mnist_jax import xla_defaults as _xla_defaults

_xla_defaults.apply()  # Before JAX starts its backends: see mnist_jax/xla_defaults.py.
_caches.enable_compilation_cache()  # Compiled programs kept between runs: see mnist_jax/caches.py.

__version__ = "0.1.0"
