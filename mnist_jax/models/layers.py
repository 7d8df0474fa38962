"""Layers the models share."""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from mnist_jax import onednn


class Dropout(nn.Module):
    """Dropout whose rate may be a traced array, drawing 16 random bits per value.

    A sweep trains trials that differ in dropout rate inside one compiled
    step, so the rate arrives there as a per-trial array; flax's Dropout
    branches on the rate's value in Python and cannot take one.

    The mask costs a quarter of flax's random numbers: one Threefry hash
    gives 64 bits, which flax's `jax.random.bernoulli` turns into one or two
    values and this layer into four, each kept when its 16 bits fall under
    round(keep * 65536). On the CPU, Threefry dominated the ViT's dropout
    (docs/performance.md). The kept probability is the rate rounded to
    1/65536 (0.9 becomes 0.899994), and kept values are scaled by the exact
    1 / keep, as flax does; the "dropout" key and the mask's independence
    of device count and sharding (counter-based bits) are as flax's.

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
        mask = keep_mask(self.make_rng("dropout"), keep, x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def keep_mask(key: jax.Array, keep: float | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A bool mask of `shape`, each value True with probability `keep`
    (rounded to 1/65536), from hashed bits.

    The bits are each value's flat index hashed with the key's two words by
    MurmurHash3's 32-bit finalizer (twice): 10 integer operations a value,
    where Threefry-2x32 takes about 20 rounds per two. A mask needs no more
    than well-mixed bits: the key itself comes from Threefry (flax's
    `make_rng`). The index is built from one iota per axis, in the array's
    own shape: the same mask however the array is split across devices.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    bits = _fmix32(_fmix32(index ^ key[0]) ^ key[1]) >> 16  # 16 bits a value.
    threshold = jnp.round(jnp.asarray(keep, jnp.float32) * 65536.0).astype(jnp.uint32)
    return bits < threshold


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finalizer: every input bit flips each output bit with
    probability ~1/2 (uint32 in, uint32 out)."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def max_pool(x: jax.Array, window: int) -> jax.Array:
    """Non-overlapping `window` x `window` max-pooling, VALID (trailing rows
    and columns that do not fill a window are dropped, as nn.MaxPool2d does).

    The same values as `nn.max_pool(x, (w, w), strides=(w, w))`, written as a
    reshape and a max: its gradient is elementwise, where reduce_window's
    (select_and_scatter) runs several times slower on XLA CPU
    (docs/performance.md). Where a window holds
    ties, the gradient is shared between them rather than given to the
    first; after a ReLU, ties are zeros, whose gradient is zero anyway.

    Where the window does not divide the height or width (the 3-conv CNN's
    7x7 maps), this is flax's `nn.max_pool`: cropping first with a slice
    gave wrong gradients on a batch split across devices (XLA's SPMD
    partitioner, jaxlib 0.10: a convolution, batch norm, then the sliced
    reshape; off by up to 30 on gradients of size 1; caught by
    tests/test_parallel.py's one-step test), and those layers are small.

    x: (B, H, W, C) -> (B, H // window, W // window, C).
    """
    batch, height, width, channels = x.shape
    if height % window or width % window:
        return nn.max_pool(x, (window, window), strides=(window, window))
    rows, cols = height // window, width // window
    return x.reshape(batch, rows, window, cols, window, channels).max(axis=(2, 4))


class BatchNorm(nn.Module):
    """nn.BatchNorm (over every axis but the last) with a per-example mask.

    The same parameters ("scale", "bias"), statistics ("mean", "var", the
    biased variance), fast-variance formula, float32 statistics and running
    average update as flax's BatchNorm, so checkpoints are interchangeable.
    What differs is the mask: flax broadcasts it to the input's shape and
    counts it there, a fifth of a CNN step on XLA CPU; here it is a (B,)
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
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)  # (C,)
        rows = x.reshape(-1, features)  # (B * ..., C)
        count = rows.shape[0]
        y = (
            (rows - _rows_of(mean, count)) * _rows_of(multiplier, count) + _rows_of(bias, count)
        ).reshape(x.shape)
        return y.astype(jnp.result_type(x, scale, bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _rows_of(values: jax.Array, count: int) -> jax.Array:
    """(C,) -> (count, C), each row `values`: a broadcast whose gradient, a
    sum over the rows, is a matrix product rather than XLA:CPU's slow
    reduction over a leading axis (see _batch_statistics)."""
    return jnp.broadcast_to(values, (count, values.shape[0]))


def _rows_of_forward(values, count):
    return _rows_of(values, count), None


def _rows_of_backward(count, _, grad):
    return (jnp.dot(jnp.ones((count,), grad.dtype), grad, precision=jax.lax.Precision.HIGHEST),)


_rows_of.defvjp(_rows_of_forward, _rows_of_backward)


def _batch_statistics(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over every axis but the last, of the
    examples `mask` keeps: E[x^2] - E[x]^2, clipped at 0 (flax's fast variance).

    The sums are matrix products, a weight row times the (B * H * W, C)
    values: XLA:CPU reduces over the leading axes of a conv layer's output
    slowly, a matrix product does it in a fraction of the time
    (docs/performance.md)."""
    rows = x.reshape(-1, x.shape[-1])  # (B * H * W, C)
    per_example = rows.shape[0] // x.shape[0]
    if mask is None:
        weight = jnp.full((rows.shape[0],), 1.0, x.dtype)
    else:
        weight = jnp.repeat(mask.astype(x.dtype), per_example)  # (B * H * W,)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    precision = jax.lax.Precision.HIGHEST
    mean = jnp.dot(weight, rows, precision=precision) / count
    mean_of_squares = jnp.dot(weight, jnp.square(rows), precision=precision) / count
    return mean, jnp.maximum(0.0, mean_of_squares - jnp.square(mean))


def _kernel_and_bias(module: nn.Module, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A convolution module's input, "kernel" (kh, kw, in, out) and "bias",
    created as flax's convolutions create them, in one dtype."""
    kernel = module.param(
        "kernel", module.kernel_init, (*module.kernel_size, x.shape[-1], module.features)
    )
    bias = module.param("bias", module.bias_init, (module.features,))
    return promote_dtype(x, kernel, bias)


def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y (..., C) + bias (C,), the bias's gradient a matrix product (_rows_of)."""
    rows = y.reshape(-1, y.shape[-1])
    return (rows + _rows_of(bias, rows.shape[0])).reshape(y.shape)


class ConvTranspose(nn.Module):
    """nn.ConvTranspose (transpose_kernel=False) through
    `onednn.conv_transpose2d`: oneDNN's input-gradient kernel run forward
    where oneDNN is enabled, else a plain convolution over an input whose
    stride gaps are filled with zeros, which XLA differentiates faster than
    flax's dilated form (docs/performance.md). Parameters are flax's
    ("kernel" (kh, kw, in, out), "bias").

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw): the zeros inserted between input rows and columns
        are stride - 1.
      padding: ((top, bottom), (left, right)) of the dilated input; negative
        values crop.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, C) -> (B, H', W', features)."""
        x, kernel, bias = _kernel_and_bias(self, x)
        return _add_bias(onednn.conv_transpose2d(x, kernel, self.strides, self.padding), bias)


class Conv(nn.Module):
    """nn.Conv (2-D, NHWC) whose bias gradient is a matrix product.

    The same parameters ("kernel" (kh, kw, in, out), "bias") and values as
    flax's Conv. Its bias is added with `_rows_of`, whose gradient, the sum
    over batch and pixels, XLA:CPU computes in a fraction of the time of the
    reduction that flax's broadcast add leaves it (docs/performance.md).

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: an int (the same on every side), "VALID", "SAME", or
        ((top, bottom), (left, right)).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: int | str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, C) -> (B, H', W', features)."""
        x, kernel, bias = _kernel_and_bias(self, x)
        padding = ((self.padding,) * 2,) * 2 if isinstance(self.padding, int) else self.padding
        return _add_bias(onednn.conv2d(x, kernel, self.strides, padding), bias)


# Every convolution module the models use (mnist_jax.inspection's feature maps).
CONVOLUTIONS = (nn.Conv, nn.ConvTranspose, Conv, ConvTranspose)
