"""The weights' moving average: its update, and a run that validates,
selects, tests and predicts with it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import checkpoints, models, optim, parallel, rundir, steps, train, trial_group
from mnist_jax.config import TrainConfig
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.search_space import Choice, SweepConfig, make_trials
from tests.conftest import small_run_config, synthetic_split


def new_state(ema: bool):
    return steps.create_train_state(
        models.get_model("cnn"),
        optim.make_optimizer(TrainConfig()),
        0,
        jnp.zeros((1, 28, 28, 1)),
        ema=ema,
    )


def weights(state) -> dict:
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


@pytest.mark.slow
def test_the_average_starts_at_the_initial_weights_and_follows_every_step():
    state = new_state(ema=True)
    chex.assert_trees_all_equal(jax.device_get(state.ema), weights(state))
    split = synthetic_split(32)
    batch = {"image": split.images, "label": split.labels, "mask": np.ones(32, bool)}
    spec = small_run_config(noise=NoiseConfig(), ema_decay=0.9).step_config()
    step = steps.make_train_step(spec)  # Donates the state: the average must own its buffers.
    for expected_step in (1, 2):
        before = jax.device_get(state.ema)
        state, _ = step(state, batch)
        rate = min(0.9, (1 + expected_step) / (10 + expected_step))  # The warm-up of the decay.
        expected = jax.tree.map(
            lambda old, new, rate=rate: rate * old + (1 - rate) * new, before, weights(state)
        )
        chex.assert_trees_all_close(jax.device_get(state.ema), expected, rtol=1e-6, atol=1e-7)
    pairs = zip(jax.tree.leaves(state.ema["params"]), jax.tree.leaves(state.params))
    assert not all(np.allclose(average, weight) for average, weight in pairs)


def test_without_a_decay_there_is_no_average():
    state = new_state(ema=False)
    assert state.ema == {}
    assert steps.averaged(state) is state
    assert TrainConfig().ema_decay == 0.0


def test_averaged_puts_the_average_in_place_of_the_weights():
    state = new_state(ema=True)
    state = state.replace(ema=jax.tree.map(lambda x: x + 1.0, state.ema))
    swapped = steps.averaged(state)
    chex.assert_trees_all_equal(weights(swapped), jax.device_get(state.ema))
    assert swapped.opt_state is state.opt_state and swapped.step is state.step


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=decay)


@pytest.mark.slow
def test_a_run_with_an_average_validates_selects_tests_and_predicts_with_it(
    tmp_path, synthetic_splits
):
    config = small_run_config(ema_decay=0.9)
    result = train.train_and_evaluate(
        config,
        models.get_model("cnn"),
        synthetic_splits,
        tmp_path,
        RunOptions(experiment="test", progress=False),
    )
    history = result["history"]
    assert all("val_raw_accuracy" in h and "val_raw_loss" in h for h in history)
    assert any(h["val_loss"] != h["val_raw_loss"] for h in history)
    # The best checkpoint holds both; what was scored is its average.
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        best, _ = ckpts.restore_best(result["state"])
    chex.assert_trees_all_equal(weights(result["best_state"]), jax.device_get(best.ema))
    best_epoch = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    assert result["evaluated_checkpoint"]["epoch"] == best_epoch
    scored = steps.evaluate(result["best_state"], synthetic_splits.test, 50, config.step_config())
    assert scored["accuracy"] == pytest.approx(result["test"]["accuracy"])
    # Predictions (mnist_jax.predict) and the pictures load the same weights.
    loaded = rundir.load_run(tmp_path)
    chex.assert_trees_all_equal(weights(loaded.state), weights(result["best_state"]))


@pytest.mark.slow
def test_trials_stepped_together_each_keep_their_own_average():
    """A sweep's trials (vmapped, mnist_jax.trial_group) update each average
    from its own weights."""
    base = small_run_config(model="simple_cnn", noise=NoiseConfig(), ema_decay=0.9)
    trials = make_trials(SweepConfig(base, {"seed": Choice((0, 1))}, method="grid"))
    model, _ = trial_group.group_model(trials)
    states = trial_group.init_trial_states(trials, model, 10, jnp.zeros((1, 28, 28, 1)))
    split = synthetic_split(64)
    batches = {
        "image": split.images.reshape(2, 32, 28, 28, 1),
        "label": split.labels.reshape(2, 32),
        "mask": np.ones((2, 32), bool),
    }
    before = jax.device_get(states.ema)
    step = trial_group.make_trials_step(model, base.step_config(), "vmap", parallel.data_mesh())
    states, _ = step(states, {}, batches)
    rate = min(0.9, 2 / 11)
    for k in range(2):
        member = trial_group.take(states, k)
        expected = jax.tree.map(
            lambda old, new, k=k: rate * old[k] + (1 - rate) * new, before, weights(member)
        )
        chex.assert_trees_all_close(jax.device_get(member.ema), expected, rtol=1e-6, atol=1e-7)
