"""Layers the models share."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Dropout(nn.Module):
    """nn.Dropout whose rate may also be a traced array.

    A sweep trains trials that differ in dropout rate inside one compiled
    step, so the rate arrives there as a per-trial array; flax's Dropout
    branches on the rate's value in Python and cannot take one. For a float
    rate this is flax's Dropout: the same auto-name ("Dropout_0", ...), so
    the same "dropout" key, mask and scaling; results do not change.

    Attributes:
      rate: probability of dropping a value, in [0, 1).
      deterministic: True: the identity (evaluation).
    """

    rate: float | jax.Array
    deterministic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def max_pool(x: jax.Array, window: int) -> jax.Array:
    """Non-overlapping `window` x `window` max-pooling, VALID (trailing rows
    and columns that do not fill a window are dropped, as nn.MaxPool2d does).

    The same values as `nn.max_pool(x, (w, w), strides=(w, w))`, written as a
    reshape and a max: its gradient is elementwise, where reduce_window's
    (select_and_scatter) runs 7x slower on XLA CPU (22 ms against 3 ms for a
    (64, 28, 28, 32) batch; experiments.benchmark). Where a window holds
    ties, the gradient is shared between them rather than given to the
    first; after a ReLU, ties are zeros, whose gradient is zero anyway.

    x: (B, H, W, C) -> (B, H // window, W // window, C).
    """
    batch, height, width, channels = x.shape
    rows, cols = height // window, width // window
    x = x[:, : rows * window, : cols * window]
    return x.reshape(batch, rows, window, cols, window, channels).max(axis=(2, 4))


class BatchNorm(nn.Module):
    """nn.BatchNorm (over every axis but the last) with a per-example mask.

    The same parameters ("scale", "bias"), statistics ("mean", "var", the
    biased variance), fast-variance formula, float32 statistics and running
    average update as flax's BatchNorm, so checkpoints are interchangeable.
    What differs is the mask: flax broadcasts it to the input's shape and
    counts it there, 5 ms of a 26 ms CNN step on XLA CPU; here it is a (B,)
    weight, and the count is its sum times the pixels per example.

    Attributes:
      use_running_average: True: normalise with the running statistics (eval).
      momentum: running = momentum * running + (1 - momentum) * batch
        (PyTorch's momentum 0.1 is 0.9 here).
      epsilon: added to the variance.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: (B, ..., C); mask: (B,) bool, False on padding, which is left
        out of the batch statistics (it is still normalised)."""
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean, var = _batch_statistics(x.astype(jnp.float32), mask)
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        per_feature = (1,) * (x.ndim - 1) + (features,)  # Broadcasts over (B, ..., C).
        multiplier = (scale * jax.lax.rsqrt(var + self.epsilon)).reshape(per_feature)
        y = (x - mean.reshape(per_feature)) * multiplier + bias.reshape(per_feature)
        return y.astype(jnp.result_type(x, scale, bias))


def _batch_statistics(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over every axis but the last, of the
    examples `mask` keeps: E[x^2] - E[x]^2, clipped at 0 (flax's fast variance)."""
    axes = tuple(range(x.ndim - 1))
    if mask is None:
        mean, mean_of_squares = x.mean(axes), jnp.square(x).mean(axes)
    else:
        weight = mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))  # (B, 1, ..., 1)
        count = jnp.maximum(jnp.sum(weight), 1.0) * (x.size // (x.shape[0] * x.shape[-1]))
        mean = jnp.sum(x * weight, axes) / count
        mean_of_squares = jnp.sum(jnp.square(x) * weight, axes) / count
    return mean, jnp.maximum(0.0, mean_of_squares - jnp.square(mean))
