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
