"""2-D convolutions through oneDNN on x86 CPUs, called from jitted code.

XLA:CPU computes a convolution's kernel gradient at about half the speed of
oneDNN, the library PyTorch's CPU convolutions use (docs/performance.md).
`conv2d` is `lax.conv_general_dilated` for NHWC inputs and HWIO kernels; on
a CPU with oneDNN at hand it calls oneDNN's forward, input-gradient and
kernel-gradient kernels as XLA FFI custom calls (mnist_jax/onednn_conv.cc),
differentiated with `jax.custom_vjp`. `conv_transpose2d`, the autoencoders'
transposed convolutions, calls the same three kernels in another order.

The library is built on first use with the system's C++ compiler, against
the headers of the `onednn-devel-cpu-gomp` wheel and jaxlib's FFI headers,
and kept in the cache (mnist_jax.caches; a few seconds, once per version
of this file, jaxlib and oneDNN). It runs wherever `pip install -e
".[onednn]"` brought oneDNN (faster train steps for the deep CNN and the
convolutional autoencoders, docs/performance.md), and steps aside, XLA's
convolutions running, where:

- MNIST_JAX_ONEDNN=0 (the default is 1);
- the machine is not x86-64 Linux, oneDNN is not installed, or no compiler
  builds the library (one log line says which: a warning where the build
  fails or MNIST_JAX_ONEDNN=1 asked for it, else a note that the extra is
  missing, and a debug line off x86-64 Linux);
- JAX's default backend is not the CPU, or a process has several devices
  (`jax.sharding` would replicate an opaque custom call);
- the dtype is not float32.

Inside `vmap` (sweeps) each call runs once per mapped index. oneDNN runs
on GNU OpenMP threads, one per core; OMP_WAIT_POLICY defaults to PASSIVE
here so that they sleep between calls instead of spinning on the cores
XLA's next operations need.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import site
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import caches

log = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
LIBDNNL = "libdnnl.so.3"
TARGETS = {"forward": "OnednnConvForward", "data": "OnednnConvData", "weights": "OnednnConvWeights"}
NUMBERS = ("NHWC", "HWIO", "NHWC")


def _prefixes() -> list[pathlib.Path]:
    """Where pip puts a wheel's data files (include/, lib/): the environment, then the user's."""
    return [pathlib.Path(sys.prefix), pathlib.Path(site.getuserbase())]


def _find(relative: str) -> pathlib.Path | None:
    return next((p / relative for p in _prefixes() if (p / relative).exists()), None)


def _build(headers: pathlib.Path, libdnnl: pathlib.Path) -> pathlib.Path:
    """The compiled library in the cache, built if missing (raises OSError on failure)."""
    from jaxlib import version

    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise OSError("no C++ compiler (c++, or $CXX) on the PATH")
    key = hashlib.sha256(
        SOURCE.read_bytes() + version.__version__.encode() + str(libdnnl.resolve()).encode()
    )
    folder = caches.cache_dir() / "onednn"
    target = folder / f"onednn_conv-{key.hexdigest()[:16]}.so"
    with caches.lock(folder, "the oneDNN convolutions"):
        if target.exists():
            return target
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        command = [
            compiler,
            "-O2",
            "-std=c++17",
            "-shared",
            "-fPIC",
            f"-I{jax.ffi.include_dir()}",
            f"-I{headers}",
            str(SOURCE),
            str(libdnnl),
            f"-Wl,-rpath,{libdnnl.parent}",
            "-o",
            str(partial),
        ]
        log.info("Building the oneDNN convolutions: %s", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed:\n{done.stderr[-2000:]}")
        os.replace(partial, target)
    return target


SETTING = "MNIST_JAX_ONEDNN"


def wanted() -> bool:
    """MNIST_JAX_ONEDNN: 1 (the default) calls oneDNN where it is installed, 0 never."""
    value = os.environ.get(SETTING, "1")
    if value not in ("0", "1"):
        raise ValueError(
            f"{SETTING}={value!r}: set it to 1 (oneDNN's convolutions where installed, "
            "the default) or 0 (XLA's)"
        )
    return value == "1"


def library() -> ctypes.CDLL | None:
    """The loaded library with its FFI targets registered, or None (see the module docstring)."""
    return _load() if wanted() else None


@functools.cache
def _load() -> ctypes.CDLL | None:
    """library()'s work, once a process; a failure is logged once."""
    # A warning where MNIST_JAX_ONEDNN=1 asked for it or the build fails; where
    # nobody asked, a note that the extra is missing, and nothing off x86-64 Linux.
    asked = SETTING in os.environ
    reason, level = None, logging.WARNING if asked else logging.INFO
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        reason = (
            "oneDNN's convolutions are built for x86-64 Linux, not "
            f"{sys.platform} {platform.machine()}"
        )
        level = logging.WARNING if asked else logging.DEBUG
    else:
        headers, libdnnl = _find("include/oneapi/dnnl/dnnl.hpp"), _find(f"lib/{LIBDNNL}")
        if headers is None or libdnnl is None:
            reason = (
                'oneDNN is not installed (pip install -e ".[onednn]" for faster CPU convolutions)'
            )
    if reason is None:
        # Idle OpenMP threads sleep instead of spinning: spinning, they take the
        # cores from XLA's next operations (docs/performance.md).
        # libgomp reads this when it loads, with libdnnl, just below.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            lib = ctypes.CDLL(str(_build(headers.parents[2], libdnnl)))
        except OSError as e:
            reason, level = (
                f"the oneDNN convolutions could not be built or loaded: {e}",
                logging.WARNING,
            )
    if reason is not None:
        log.log(level, "%s; XLA's convolutions run instead.", reason)
        return None
    for name in TARGETS.values():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return lib


def enabled() -> bool:
    """Whether conv2d calls oneDNN in this process (see the module docstring)."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return False
    return library() is not None


def explicit_padding(
    x_shape, kernel_shape, strides, padding
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) for "SAME", "VALID" or explicit pairs."""
    if isinstance(padding, str):
        return tuple(
            map(tuple, jax.lax.padtype_to_pads(x_shape[1:3], kernel_shape[:2], strides, padding))
        )
    return tuple(tuple(int(p) for p in pair) for pair in padding)


def xla_conv2d(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NUMBERS)


def _usable(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether oneDNN convolves these operands here (float32, and enabled())."""
    return x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and enabled()


def conv2d(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding="SAME") -> jax.Array:
    """x (B, H, W, C), kernel (kh, kw, C, O) -> (B, H', W', O): oneDNN where enabled, else XLA."""
    strides = tuple(int(s) for s in strides)
    padding = explicit_padding(x.shape, kernel.shape, strides, padding)
    if _usable(x, kernel):
        return _onednn_conv2d(x, kernel, strides, padding)
    return xla_conv2d(x, kernel, strides, padding)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    """flax's transposed convolution (transpose_kernel=False): x (B, H, W, C),
    kernel (kh, kw, C, O), `padding` ((top, bottom), (left, right)) of the
    stride-dilated input -> (B, H', W', O): oneDNN where enabled, else XLA.

    A transposed convolution is the input gradient of a convolution, so
    oneDNN's input-gradient kernel runs forward, on x as it is: the
    convolution's kernel is this one flipped, inputs and outputs swapped,
    and its padding kh - 1 - top and kh - 1 - bottom. Padding below zero
    (an output row no input reaches, such as PyTorch's output_padding) is
    added as zero rows after the call."""
    strides = tuple(int(s) for s in strides)
    if not _usable(x, kernel):
        return xla_conv_transpose2d(x, kernel, strides, padding)
    pads = [(k - 1 - low, k - 1 - high) for k, (low, high) in zip(kernel.shape[:2], padding)]
    crops = [(max(0, -low), max(0, -high)) for low, high in pads]
    pads = tuple((max(0, low), max(0, high)) for low, high in pads)
    # XLA's output shape, less the rows no input reaches.
    batch, height, width, features = jax.eval_shape(
        lambda x, k: _xla_dilated(x, k, strides, padding), x, kernel
    ).shape
    shape = (batch, height - sum(crops[0]), width - sum(crops[1]), features)
    conv_kernel = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (kh, kw, O, C)
    y = _onednn_conv_transpose2d(x, conv_kernel, strides, pads, shape)
    return jnp.pad(y, ((0, 0), *crops, (0, 0))) if any(map(any, crops)) else y


def xla_conv_transpose2d(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    """conv_transpose2d in XLA: a plain convolution over x with the stride's
    zeros inserted by `lax.pad`. flax writes it as a convolution with
    `lhs_dilation`, whose kernel gradient XLA computes many times slower
    than a plain one's (jax-ml/jax#23783, #31662; equinox's ConvTranspose
    made the same change, its PR #1259), except with one output channel,
    where the dilated form is the faster of the two (docs/performance.md)."""
    if kernel.shape[3] == 1:
        return _xla_dilated(x, kernel, strides, padding)
    (top, bottom), (left, right) = padding
    (stride_h, stride_w) = strides
    x = jax.lax.pad(
        x,
        jnp.zeros((), x.dtype),
        ((0, 0, 0), (top, bottom, stride_h - 1), (left, right, stride_w - 1), (0, 0, 0)),
    )
    return xla_conv2d(x, kernel, (1, 1), ((0, 0), (0, 0)))


def _xla_dilated(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), padding, lhs_dilation=strides, dimension_numbers=NUMBERS
    )


def _call(op: str, shape, a, b, strides, padding) -> jax.Array:
    (top, bottom), (left, right) = padding
    call = jax.ffi.ffi_call(
        TARGETS[op], jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential"
    )
    return call(
        a,
        b,
        stride_h=np.int64(strides[0]),
        stride_w=np.int64(strides[1]),
        pad_top=np.int64(top),
        pad_bottom=np.int64(bottom),
        pad_left=np.int64(left),
        pad_right=np.int64(right),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv2d(x, kernel, strides, padding):
    shape = jax.eval_shape(lambda x, k: xla_conv2d(x, k, strides, padding), x, kernel).shape
    return _call("forward", shape, x, kernel, strides, padding)


def _forward(x, kernel, strides, padding):
    return _onednn_conv2d(x, kernel, strides, padding), (x, kernel)


def _backward(strides, padding, residuals, dy):
    x, kernel = residuals
    return (
        _call("data", x.shape, dy, kernel, strides, padding),
        _call("weights", kernel.shape, x, dy, strides, padding),
    )


_onednn_conv2d.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _onednn_conv_transpose2d(x, conv_kernel, strides, padding, shape):
    """The input gradient of the convolution (conv_kernel, strides, padding)
    whose output is x: shape is that convolution's input's (B, H', W', O)."""
    return _call("data", shape, x, conv_kernel, strides, padding)


def _transpose_forward(x, conv_kernel, strides, padding, shape):
    return _onednn_conv_transpose2d(x, conv_kernel, strides, padding, shape), (x, conv_kernel)


def _transpose_backward(strides, padding, shape, residuals, dy):
    x, conv_kernel = residuals  # The convolution run forward on dy, and its kernel gradient.
    return (
        _call("forward", x.shape, dy, conv_kernel, strides, padding),
        _call("weights", conv_kernel.shape, dy, x, strides, padding),
    )


_onednn_conv_transpose2d.defvjp(_transpose_forward, _transpose_backward)
