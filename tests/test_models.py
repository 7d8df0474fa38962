"""Shapes, dtypes, finiteness and parameter counts of every model."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models, steps


# name -> (constructor kwargs, output shapes for a batch of B, parameter count,
#          embedding width: what the model feeds its last layer, or its latent code)
def LOGITS(b):
    return (b, 10)


def IMAGES(b):
    return (b, 28, 28, 1)


MODELS = {
    "cnn": ({}, LOGITS, 422_474, 128),
    "simple_cnn": ({}, LOGITS, 50_186, 7 * 7 * 64),
    "deep_cnn": ({}, LOGITS, 2_331_338, 512),
    "vit": ({}, LOGITS, 1_199_882, 128),
    "linear_ae": ({}, IMAGES, 201_616, 128),
    "conv_ae": ({}, IMAGES, 61_453, 12),
    "denoising_ae": ({}, IMAGES, 37_569, 7 * 7 * 64),
    "encoder_classifier": ({}, LOGITS, 33_454, 12),
    "classifier_decoding": ({}, lambda b: ((b, 10), (b, 28, 28, 1)), 64_431, 12),
    "speed_cnn": ({}, LOGITS, 147_242, 256),
    "strided_cnn": ({}, LOGITS, 326_410, 128),
    # Small inputs and a narrow classifier keep these fast; full sizes are counted below.
    "vgg16": ({"image_size": 32, "hidden": 64}, LOGITS, None, 64),
    "alexnet": ({"image_size": 63, "hidden": 64}, LOGITS, None, 64),
}


def test_every_registered_model_is_specified_here():
    assert set(MODELS) == set(models.MODELS)


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_variables(request):
    kwargs, shapes, _, _ = MODELS[request.param]
    model = models.get_model(request.param, **kwargs)
    variables = jax.jit(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    )()
    return request.param, model, variables


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("training", [False, True])
def test_output_shapes_dtypes_and_finiteness(model_and_variables, batch, training):
    name, model, variables = model_and_variables
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 28, 28, 1))
    if training:
        out, updates = model.apply(
            variables,
            x,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(2)},
            mutable=["batch_stats"],
        )
        if "batch_stats" in variables:
            chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
    else:
        out = model.apply(variables, x, train=False)
    expected = MODELS[name][1](batch)
    chex.assert_trees_all_equal_shapes(
        out,
        jax.tree.map(
            jnp.zeros, expected, is_leaf=lambda s: isinstance(s, tuple) and isinstance(s[0], int)
        ),
    )
    chex.assert_tree_all_finite(out)
    jax.tree.map(lambda o: chex.assert_type(o, jnp.float32), out)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_counts(name):
    # The shapes alone (jax.eval_shape): nothing to compile or compute.
    model = models.get_model(name, **MODELS[name][0])
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    )
    expected = MODELS[name][2]
    if expected is not None:
        assert steps.count_params(variables["params"]) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_ae", "conv_ae", "denoising_ae"])
def test_reconstructions_are_in_the_unit_range(name):
    model = models.get_model(name)
    x = 10 * jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
    out = model.apply(model.init(jax.random.PRNGKey(1), x, train=False), x, train=False)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.slow
def test_eval_is_deterministic_and_train_is_stochastic():
    model = models.get_model("cnn")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    np.testing.assert_array_equal(
        model.apply(variables, x, train=False), model.apply(variables, x, train=False)
    )

    def train_logits(key):
        return model.apply(
            variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )[0]

    assert not np.allclose(train_logits(jax.random.PRNGKey(0)), train_logits(jax.random.PRNGKey(1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "deep_cnn"])
def test_padding_is_kept_out_of_batch_norm(name):
    """A padded batch with a mask trains exactly like the unpadded one."""
    model = models.get_model(name, conv_dropout=0.0, fc_dropout=0.0)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 28, 28, 1))
    padded = jnp.concatenate([x, jnp.zeros((2, 28, 28, 1))])
    mask = jnp.array([True] * 6 + [False] * 2)
    kw = dict(train=True, mutable=["batch_stats"])
    logits, stats = model.apply(variables, x, **kw)
    logits_padded, stats_padded = model.apply(variables, padded, mask=mask, **kw)
    np.testing.assert_allclose(logits_padded[:6], logits, atol=1e-5)
    chex.assert_trees_all_close(stats_padded, stats, atol=1e-6)


@pytest.mark.slow
def test_vit_returns_its_attention_maps():
    model = models.get_model("vit", depth=2)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    logits, attention = model.apply(variables, x, train=False, return_attention=True)
    chex.assert_shape(logits, (3, 10))
    chex.assert_shape(attention, (3, 2, 8, 50, 50))  # CLS + 49 patches
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(logits, model.apply(variables, x, train=False), rtol=1e-6)


def test_vit_refuses_a_patch_size_that_does_not_tile_the_image():
    model = models.get_model("vit", patch_size=5)
    with pytest.raises(ValueError, match="not divisible by patch_size 5"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)


@pytest.mark.parametrize("arch, size", [("vgg16", 31), ("alexnet", 62)])
def test_transfer_nets_refuse_images_too_small(arch, size):
    model = models.get_model(arch, image_size=size)
    with pytest.raises(ValueError, match="needs image_size >="):
        jax.eval_shape(
            lambda model=model: model.init(
                jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False
            )
        )


def test_encoder_groups_are_shared_between_autoencoder_and_classifiers():
    """The classifiers can start from the autoencoder's "encoder" parameters."""
    shapes = {}
    for name in ("conv_ae", "encoder_classifier", "classifier_decoding"):
        model = models.get_model(name)
        sample = jnp.zeros((1, 28, 28, 1))
        init = functools.partial(model.init, train=False)
        params = jax.eval_shape(init, jax.random.PRNGKey(0), sample)["params"]
        shapes[name] = jax.tree.map(lambda p: p.shape, params["encoder"])
    assert shapes["conv_ae"] == shapes["encoder_classifier"] == shapes["classifier_decoding"]


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.get_model("resnet")


@pytest.mark.slow
@pytest.mark.parametrize("use_mask", [False, True])
def test_our_batch_norm_matches_flax(use_mask):
    """layers.BatchNorm (a (B,) mask, not one broadcast to the input) gives
    flax's BatchNorm: outputs, gradients and running statistics."""
    import flax.linen as nn

    from mnist_jax.models.layers import BatchNorm

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 4)) * 3.0 + 1.0
    mask = jnp.array([True, True, False, True, False, True]) if use_mask else None
    ours, flax_bn = (
        BatchNorm(use_running_average=False),
        nn.BatchNorm(use_running_average=False, momentum=0.9),
    )
    variables = flax_bn.init(jax.random.PRNGKey(1), x)
    chex.assert_trees_all_equal_shapes(ours.init(jax.random.PRNGKey(1), x), variables)
    variables = {
        "params": {"scale": jnp.arange(1.0, 5.0), "bias": jnp.arange(4.0)},
        "batch_stats": variables["batch_stats"],
    }
    flax_mask = None if mask is None else jnp.broadcast_to(mask[:, None, None, None], x.shape)

    def run(module, m):
        def loss(params, x):
            y, updates = module.apply(
                {**variables, "params": params}, x, mask=m, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.sin(y)), (y, updates)

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)

    (_, (y_ours, stats_ours)), grads_ours = run(ours, mask)
    (_, (y_flax, stats_flax)), grads_flax = run(flax_bn, flax_mask)
    chex.assert_trees_all_close(
        (y_ours, stats_ours, grads_ours), (y_flax, stats_flax, grads_flax), rtol=1e-5, atol=1e-5
    )
    eval_ours = BatchNorm(use_running_average=True).apply({**variables, **stats_ours}, x)
    eval_flax = nn.BatchNorm(use_running_average=True).apply({**variables, **stats_flax}, x)
    chex.assert_trees_all_close(eval_ours, eval_flax, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 7, 7, 5)])
def test_our_max_pool_matches_reduce_window(shape):
    import flax.linen as nn

    from mnist_jax.models.layers import max_pool

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    expected = nn.max_pool(x, (2, 2), strides=(2, 2))
    chex.assert_trees_all_equal(max_pool(x, 2), expected)

    # Without ties, the gradient goes where reduce_window's does.
    def grad(pool):
        return jax.grad(
            lambda x: jnp.sum(pool(x) * jnp.arange(expected.size).reshape(expected.shape))
        )(x)

    chex.assert_trees_all_close(
        grad(lambda x: max_pool(x, 2)), grad(lambda x: nn.max_pool(x, (2, 2), (2, 2)))
    )


@pytest.mark.slow
@pytest.mark.parametrize("features", [1, 3])  # One output channel takes the dilated form.
def test_our_convolutions_match_flax_in_values_and_gradients(features):
    import flax.linen as nn

    from mnist_jax.models.layers import Conv, ConvTranspose

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
    pairs = [
        (
            Conv(features, (3, 3), strides=(2, 2), padding=1),
            nn.Conv(features, (3, 3), strides=(2, 2), padding=1),
        ),
        (
            ConvTranspose(features, (3, 3), (2, 2), ((1, 2), (1, 2))),
            nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2))),
        ),
    ]
    for ours, theirs in pairs:
        variables = theirs.init(jax.random.PRNGKey(1), x)
        variables = jax.tree.map(lambda v: v + 0.1, variables)  # A non-zero bias.
        chex.assert_trees_all_equal_shapes(ours.init(jax.random.PRNGKey(1), x), variables)

        def loss(module):
            return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

        chex.assert_trees_all_close(ours.apply(variables, x), theirs.apply(variables, x), atol=1e-5)
        chex.assert_trees_all_close(
            jax.grad(loss(ours), argnums=(0, 1))(variables, x),
            jax.grad(loss(theirs), argnums=(0, 1))(variables, x),
            atol=1e-4,
        )
