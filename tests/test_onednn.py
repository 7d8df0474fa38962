"""oneDNN's convolutions (mnist_jax.onednn) against XLA's, and the fallback to XLA."""

import logging
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import onednn


@pytest.fixture
def turned_on(monkeypatch):
    """MNIST_JAX_ONEDNN=1, and the library built, loaded and registered."""
    monkeypatch.setenv("MNIST_JAX_ONEDNN", "1")
    assert onednn.library() is not None, (
        "oneDNN's convolutions should build and load here (see the log)"
    )


X86_LINUX = sys.platform == "linux" and platform.machine() == "x86_64"
needs_onednn = pytest.mark.skipif(
    not X86_LINUX, reason="oneDNN's convolutions are built for x86-64 Linux only"
)

# (H, W, C, O, kernel, stride, padding): every convolution the models run
# (batch aside), then odd shapes.
MODEL_SHAPES = [
    (28, 28, 1, 64, 3, 1, 1),
    (28, 28, 64, 64, 3, 1, 1),
    (14, 14, 64, 128, 3, 1, 1),  # deep_cnn
    (14, 14, 128, 128, 3, 1, 1),
    (7, 7, 128, 256, 3, 1, 1),
    (7, 7, 256, 256, 3, 1, 1),
    (28, 28, 1, 32, 3, 1, 1),
    (14, 14, 32, 64, 3, 1, 1),
    (7, 7, 64, 128, 3, 1, 1),  # cnn, simple_cnn
    (28, 28, 1, 16, 5, 1, "VALID"),
    (12, 12, 16, 32, 3, 1, 1),
    (6, 6, 32, 64, 3, 2, 1),  # conv_ae
    (28, 28, 1, 32, 3, 2, 1),
    (14, 14, 32, 64, 3, 2, 1),  # the denoising autoencoder's encoder
    (15, 15, 64, 32, 3, 1, "VALID"),
    (29, 29, 32, 16, 3, 1, "VALID"),  # its decoder's padded transposes
    (28, 28, 1, 16, 5, 2, "VALID"),
    (12, 12, 16, 32, 5, 1, "VALID"),  # speed_cnn
    (28, 28, 1, 32, 3, 1, "SAME"),
    (28, 28, 32, 32, 5, 2, "SAME"),
    (14, 14, 32, 64, 5, 2, "SAME"),  # strided_cnn
    (7, 7, 64, 128, 4, 1, "VALID"),
]
ODD_SHAPES = [
    (9, 13, 3, 5, 4, 2, "SAME"),
    (11, 6, 2, 7, 3, 3, ((2, 0), (1, 3))),
    (5, 5, 8, 1, 5, 1, "VALID"),
    (17, 10, 5, 9, (2, 3), (2, 1), ((0, 1), (1, 1))),
]

# (H, W, C, O, kernel, stride, padding of the stride-dilated input): the
# autoencoders' transposed convolutions, then odd ones (padding past the
# kernel, where no input reaches an output row, and a crop).
TRANSPOSE_SHAPES = [
    (3, 3, 64, 32, 3, 2, ((1, 2), (1, 2))),
    (6, 6, 32, 16, 3, 2, ((1, 2), (1, 2))),  # conv_ae's decoder
    (12, 12, 16, 1, 5, 2, ((4, 5), (4, 5))),
    (7, 7, 64, 32, 3, 2, ((1, 2), (1, 2))),
    (14, 14, 32, 1, 3, 2, ((1, 2), (1, 2))),  # the denoiser's decoder
    (5, 4, 3, 7, (2, 3), (3, 1), ((0, 3), (2, -1))),
    (4, 4, 2, 3, 3, 1, ((2, 2), (2, 2))),
]


def _operands(h, w, c, o, kernel, seed=0, batch=3):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((kh, kw, c, o)) / np.sqrt(kh * kw * c), jnp.float32)
    return x, k


def _padding(padding):
    return ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding


def _assert_close(ours, xla, what):
    """Equal to rounding: float32 sums of up to 2,304 products (a 3x3x256
    window) in another order differ by up to about 1e-5 of the largest value;
    a wrong padding, stride or layout moves values by their own size."""
    scale = float(jnp.max(jnp.abs(xla)))
    np.testing.assert_allclose(
        np.asarray(ours), np.asarray(xla), rtol=0, atol=2e-5 * max(scale, 1.0), err_msg=what
    )


@needs_onednn
@pytest.mark.parametrize("shape", MODEL_SHAPES + ODD_SHAPES, ids=str)
def test_forward_and_gradients_match_xla(shape, turned_on):
    h, w, c, o, kernel, stride, padding = shape
    x, k = _operands(h, w, c, o, kernel)
    strides = (stride, stride) if isinstance(stride, int) else stride
    pads = onednn.explicit_padding(x.shape, k.shape, strides, _padding(padding))
    ours_y, ours_vjp = jax.jit(
        lambda x, k: jax.vjp(lambda x, k: onednn._onednn_conv2d(x, k, strides, pads), x, k)
    )(x, k)
    xla_y, xla_vjp = jax.vjp(lambda x, k: onednn.xla_conv2d(x, k, strides, pads), x, k)
    assert ours_y.shape == xla_y.shape and ours_y.dtype == jnp.float32
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(xla_y.shape), jnp.float32)
    _assert_close(ours_y, xla_y, "forward")
    for name, ours, xla in zip(("input gradient", "kernel gradient"), ours_vjp(dy), xla_vjp(dy)):
        _assert_close(ours, xla, name)


@needs_onednn
@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES, ids=str)
def test_transposed_convolution_matches_xlas_dilated_one(shape, turned_on):
    """conv_transpose2d runs oneDNN's input-gradient kernel forward; flax and
    the XLA path convolve the input with zeros inserted between its pixels."""
    h, w, c, o, kernel, stride, padding = shape
    x, k = _operands(h, w, c, o, kernel)
    strides = (stride, stride) if isinstance(stride, int) else stride
    ours = jax.jit(
        lambda x, k: jax.vjp(lambda x, k: onednn.conv_transpose2d(x, k, strides, padding), x, k)
    )
    assert "OnednnConvData" in ours.lower(x, k).as_text()
    ours_y, ours_vjp = ours(x, k)
    xla_y, xla_vjp = jax.vjp(
        lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), padding, lhs_dilation=strides, dimension_numbers=onednn.NUMBERS
        ),
        x,
        k,
    )
    assert ours_y.shape == xla_y.shape and ours_y.dtype == jnp.float32
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(xla_y.shape), jnp.float32)
    _assert_close(ours_y, xla_y, "forward")
    for name, ours, xla in zip(("input gradient", "kernel gradient"), ours_vjp(dy), xla_vjp(dy)):
        _assert_close(ours, xla, name)


@needs_onednn
def test_used_on_this_cpu_and_deterministic(turned_on):
    """On x86-64 Linux the test install brings oneDNN: with MNIST_JAX_ONEDNN=1
    a jitted convolution calls it, and the same inputs give the same bits twice."""
    assert onednn.enabled(), "oneDNN's convolutions should be built and loaded here (see the log)"
    x, k = _operands(14, 14, 32, 64, 3)
    loss = jax.jit(
        jax.grad(lambda x, k: jnp.sum(onednn.conv2d(x, k, (1, 1), "SAME") ** 2), argnums=(0, 1))
    )
    assert "OnednnConvWeights" in loss.lower(x, k).as_text()
    first, second = loss(x, k), loss(x, k)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_onednn
def test_vmap_matches_xla(turned_on):
    """Sweeps map the step over trials: each trial's own input and kernel."""
    xs, ks = zip(*[_operands(10, 10, 4, 6, 3, seed=s) for s in range(3)])
    xs, ks = jnp.stack(xs), jnp.stack(ks)  # (3, B, 10, 10, 4), (3, 3, 3, 4, 6)

    def grads(conv):
        return jax.vmap(jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1)))(xs, ks)

    pads = ((1, 1), (1, 1))
    ours = jax.jit(lambda: grads(lambda x, k: onednn._onednn_conv2d(x, k, (1, 1), pads)))()
    xla = grads(lambda x, k: onednn.xla_conv2d(x, k, (1, 1), pads))
    for a, b in zip(ours, xla):
        _assert_close(a, b, "vmapped gradient")


@needs_onednn
@pytest.mark.parametrize("name", ["deep_cnn", "conv_ae", "denoising_ae"])
def test_a_model_step_agrees_with_xla(name, turned_on, monkeypatch):
    """A model's loss gradient, with oneDNN's convolutions and with XLA's
    (the autoencoders: their transposed convolutions too)."""
    from mnist_jax import models

    model = models.get_model(name)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 28, 28, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def grad():
        def loss(p):
            return jnp.sum(model.apply({**variables, "params": p}, x, train=False) ** 2)

        return jax.jit(jax.grad(loss))(variables["params"])

    ours = grad()
    monkeypatch.setattr(onednn, "enabled", lambda: False)
    xla = grad()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
        _assert_close(a, b, f"{name} gradient")


@pytest.mark.parametrize("setting", [None, "1", "0"])
def test_on_by_default_where_installed_and_off_by_the_environment(setting):
    code = (
        "import jax, jax.numpy as jnp; from mnist_jax import onednn, parallel; "
        "x = jnp.zeros((1, 8, 8, 2)); k = jnp.zeros((3, 3, 2, 4)); "
        "text = jax.jit(onednn.conv2d).lower(x, k).as_text(); "
        "print(onednn.enabled(), 'custom_call' in text, 'convolution' in text, "
        "parallel.describe(parallel.data_mesh())['convolutions'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "MNIST_JAX_ONEDNN"}
    if setting is not None:
        env["MNIST_JAX_ONEDNN"] = setting
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    # The test install brings oneDNN on x86-64 Linux; elsewhere XLA's convolutions run.
    on = setting != "0" and X86_LINUX
    assert done.stdout.split() == ([str(on), str(on), str(not on), "oneDNN" if on else "XLA"]), (
        done.stderr
    )


def test_a_bad_setting_is_a_usage_error(monkeypatch, capsys):
    from experiments import cnn

    monkeypatch.setenv("MNIST_JAX_ONEDNN", "yes")
    with pytest.raises(ValueError, match="MNIST_JAX_ONEDNN='yes': set it to 1"):
        onednn.library()
    with pytest.raises(SystemExit) as exit_info:  # Told before anything runs.
        cnn.main(["--quick", "--data-dir", "/nonexistent", "--no-progress"])
    assert exit_info.value.code == 2 and "MNIST_JAX_ONEDNN='yes'" in capsys.readouterr().err


@pytest.mark.parametrize("breakage", ["not installed", "another platform", "compiler fails"])
def test_falls_back_to_xla_with_one_log_line(breakage, monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(
        onednn, "_load", onednn._load.__wrapped__
    )  # Not the process's cached answer.
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("MNIST_JAX_ONEDNN", "1")
    if breakage == "not installed":
        monkeypatch.setattr(onednn, "_find", lambda relative: None)
        expected = "not installed" if X86_LINUX else "x86-64 Linux"
    elif breakage == "another platform":
        monkeypatch.setattr(onednn.platform, "machine", lambda: "arm64")
        expected = "x86-64 Linux"
    else:
        if not X86_LINUX:
            pytest.skip("nothing is compiled off x86-64 Linux")
        monkeypatch.setenv("CXX", "false")  # A compiler that always fails.
        expected = "could not be built"
    with caplog.at_level(logging.INFO, logger="mnist_jax.onednn"):
        assert onednn.library() is None
    messages = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "mnist_jax.onednn" and not r.getMessage().startswith("Building")
    ]
    assert len(messages) == 1 and expected in messages[0][1], messages
    assert messages[0][0] == "WARNING"  # Asked for with MNIST_JAX_ONEDNN=1, or failed to build.
    if (
        breakage != "compiler fails"
    ):  # Not asked for: a note where the extra is missing, else a debug line.
        monkeypatch.delenv("MNIST_JAX_ONEDNN")
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="mnist_jax.onednn"):
            assert onednn._load() is None
        expected_level = "INFO" if X86_LINUX and breakage == "not installed" else "DEBUG"
        assert [r.levelname for r in caplog.records if r.name == "mnist_jax.onednn"] == [
            expected_level
        ]
    monkeypatch.setattr(onednn, "enabled", lambda: onednn.library() is not None)
    x, k = _operands(8, 8, 2, 3, 3)
    np.testing.assert_array_equal(
        onednn.conv2d(x, k, (1, 1), "SAME"), onednn.xla_conv2d(x, k, (1, 1), "SAME")
    )


def test_explicit_padding():
    assert onednn.explicit_padding((1, 28, 28, 1), (5, 5, 1, 8), (2, 2), "SAME") == ((1, 2), (1, 2))
    assert onednn.explicit_padding((1, 28, 28, 1), (3, 3, 1, 8), (1, 1), "VALID") == (
        (0, 0),
        (0, 0),
    )
    assert onednn.explicit_padding((1, 9, 9, 1), (3, 3, 1, 8), (1, 1), ((1, 0), (2, 3))) == (
        (1, 0),
        (2, 3),
    )
