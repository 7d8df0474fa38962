"""Shapes, dtypes, finiteness and parameter counts of the models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models, train


@pytest.fixture(scope="module")
def cnn_and_variables():
    model = models.get_model("cnn")
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("training", [False, True])
def test_cnn_output_shape_dtype_and_finiteness(cnn_and_variables, batch, training):
    model, variables = cnn_and_variables
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 28, 28, 1))
    if training:
        logits, updates = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                                      mutable=["batch_stats"])
        chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
    else:
        logits = model.apply(variables, x, train=False)
    chex.assert_shape(logits, (batch, 10))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_cnn_has_the_pytorch_parameter_count(cnn_and_variables):
    # Conv 320 + 18,496 + 73,856; BatchNorm 64 + 128 + 256; FC 295,168 + 32,896 + 1,290.
    assert train.count_params(cnn_and_variables[1]["params"]) == 422_474


def test_eval_is_deterministic_and_train_is_stochastic(cnn_and_variables):
    model, variables = cnn_and_variables
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    np.testing.assert_array_equal(model.apply(variables, x, train=False), model.apply(variables, x, train=False))

    def train_logits(key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]

    assert not np.allclose(train_logits(jax.random.PRNGKey(0)), train_logits(jax.random.PRNGKey(1)))


def test_padding_is_kept_out_of_batch_norm(cnn_and_variables):
    """A padded batch with a mask trains exactly like the unpadded one."""
    model, variables = cnn_and_variables
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 28, 28, 1))
    padded = jnp.concatenate([x, jnp.zeros((2, 28, 28, 1))])
    mask = jnp.array([True] * 6 + [False] * 2)
    kw = dict(train=True, rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"])
    model_nodrop = model.clone(conv_dropout=0.0, fc_dropout=0.0)
    logits, stats = model_nodrop.apply(variables, x, **kw)
    logits_padded, stats_padded = model_nodrop.apply(variables, padded, mask=mask, **kw)
    np.testing.assert_allclose(logits_padded[:6], logits, atol=1e-5)
    chex.assert_trees_all_close(stats_padded, stats, atol=1e-6)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.get_model("resnet")
