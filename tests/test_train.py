"""The train step: pure, learns, compiles once; evaluation sees every example."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import metrics, models, pipeline, train
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.tasks import StepConfig
from tests.conftest import synthetic_split


@pytest.fixture
def state():
    config = train.TrainConfig()
    return train.create_train_state(models.get_model("cnn"), train.make_optimizer(config), 0,
                                    jnp.zeros((1, 28, 28, 1)))


@pytest.fixture(scope="module")
def batch():
    split = synthetic_split(64)
    return {"image": split.images, "label": split.labels, "mask": np.ones(64, bool)}


def test_train_step_lowers_the_loss_on_a_fixed_batch(state, batch):
    step = train.make_train_step(StepConfig())
    losses = []
    for _ in range(15):
        state, m = step(state, batch)
        losses.append(float(m["loss_sum"] / m["count"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 15


def test_step_compiles_once_across_steps(state, batch):
    step = train.make_train_step(StepConfig(noise=NoiseConfig("gaussian", 0.1)))
    for i in range(4):
        partial = dict(batch, mask=np.arange(64) < 64 - 10 * i)  # a padded last batch too
        state, _ = step(state, partial)
    assert step._cache_size() == 1


def test_step_is_pure(state, batch):
    step = jax.jit(train.train_step, static_argnames="spec")
    first, m1 = step(state, batch, spec=StepConfig(noise=NoiseConfig("gaussian", 0.2)))
    again, m2 = step(state, batch, spec=StepConfig(noise=NoiseConfig("gaussian", 0.2)))
    np.testing.assert_array_equal(m1["loss_sum"], m2["loss_sum"])
    jax.tree.map(np.testing.assert_array_equal, first.params, again.params)


def test_every_step_gets_new_dropout_keys(state):
    keys = {tuple(np.asarray(train.step_keys(state.key, jnp.asarray(s))[0])) for s in range(100)}
    assert len(keys) == 100


def test_padding_does_not_change_the_update(state, batch):
    """Masked-out padding contributes nothing to loss, gradients or statistics.

    Plain SGD with rate 1 makes the parameter change equal the gradient
    (Adam's first step would amplify float noise in near-zero gradients).
    """
    sgd = optax.sgd(1.0)
    no_dropout = state.replace(apply_fn=models.get_model("cnn", conv_dropout=0.0, fc_dropout=0.0).apply,
                               tx=sgd, opt_state=sgd.init(state.params))
    step = jax.jit(train.train_step, static_argnames="spec")
    small = {k: v[:40] for k, v in batch.items()}
    padded = dict(batch, mask=np.arange(64) < 40)
    a, ma = step(no_dropout, small, spec=StepConfig())
    b, mb = step(no_dropout, padded, spec=StepConfig())
    np.testing.assert_allclose(ma["loss_sum"], mb["loss_sum"], rtol=1e-5)
    assert int(mb["count"]) == 40
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a.params, b.params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a.batch_stats, b.batch_stats)


def test_evaluate_scores_every_example(state):
    split = synthetic_split(130)
    result = train.evaluate(state, split, batch_size=64)
    assert result["predictions"].shape == (130,)
    expected = (result["predictions"] == split.labels).mean()
    assert result["accuracy"] == pytest.approx(expected)


def test_optimizer_is_pytorch_adam_with_l2():
    """Adam with weight_decay in PyTorch adds wd * param to the gradient first."""
    config = train.TrainConfig(learning_rate=0.1, weight_decay=0.5)
    tx = train.make_optimizer(config)
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
    # Gradient 0 + 0.5 * 2 = 1; Adam's first step moves by -lr * sign.
    np.testing.assert_allclose(updates["w"], [-0.1], rtol=1e-4)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0),
                                          ("val_fraction", 1.0)])
def test_bad_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(train.TrainConfig(), **{field: value})
