"""Tasks, optimizers, schedules and frozen parameters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import models, optim, pipeline, steps, tasks, train
from mnist_jax.config import OPTIMIZERS, TrainConfig
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.tasks import StepConfig
from tests.conftest import synthetic_split


def test_reconstruction_targets_are_clean_when_inputs_are_noisy():
    images = jnp.full((2, 28, 28, 1), 128, jnp.uint8)
    spec = StepConfig(task="reconstruct", input_norm="unit", noise=NoiseConfig("gaussian", 0.3))
    inputs, target = tasks.model_inputs(images, jax.random.PRNGKey(0), spec)
    np.testing.assert_allclose(target, 128 / 255)
    assert float(jnp.abs(inputs - target).mean()) > 0.1
    terms = tasks.per_example_terms(inputs, target, jnp.zeros(2, jnp.int32), spec)
    np.testing.assert_allclose(
        terms["loss"], jnp.mean((inputs - target) ** 2, axis=(1, 2, 3)), rtol=1e-6
    )


def test_classify_decode_adds_the_weighted_mse():
    spec = StepConfig(task="classify_decode", input_norm="unit", recon_weight=0.5)
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    target = jnp.zeros((2, 28, 28, 1))
    recon = jnp.full((2, 28, 28, 1), 0.2)
    terms = tasks.per_example_terms((logits, recon), target, jnp.array([0, 0]), spec)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 0]))
    np.testing.assert_allclose(terms["loss"], ce + 0.5 * 0.04, rtol=1e-5)
    np.testing.assert_array_equal(terms["correct"], [1.0, 0.0])


def test_label_smoothing_spreads_the_training_targets_only():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 10)) * 3
    labels = jnp.array([0, 3, 9, 3])
    plain = tasks.per_example_terms(logits, None, labels, StepConfig(), train=True)
    smoothed = StepConfig(label_smoothing=0.1)
    log_p = np.asarray(jax.nn.log_softmax(logits))
    expected = -(
        0.9 * log_p[np.arange(4), labels] + 0.1 * log_p.mean(axis=1)
    )  # (1 - a) CE + a uniform CE
    train_terms = tasks.per_example_terms(logits, None, labels, smoothed, train=True)
    np.testing.assert_allclose(train_terms["loss"], expected, rtol=1e-5)
    # The plain cross-entropy is still reported, and is the loss outside training.
    np.testing.assert_array_equal(train_terms["cross_entropy"], plain["cross_entropy"])
    eval_terms = tasks.per_example_terms(logits, None, labels, smoothed)
    np.testing.assert_array_equal(eval_terms["loss"], plain["loss"])
    # Without smoothing the training loss is exactly the cross-entropy, as
    # before the option existed.
    np.testing.assert_array_equal(
        plain["loss"], optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    )


@pytest.mark.parametrize(
    "fields",
    [
        dict(label_smoothing=-0.1),
        dict(label_smoothing=1.0),
        dict(task="reconstruct", input_norm="unit", label_smoothing=0.1),
    ],
)
def test_bad_label_smoothing_is_refused(fields):
    with pytest.raises(ValueError, match="label_smoothing"):
        dataclasses.replace(TrainConfig(), **fields)


@pytest.mark.slow
def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    clean = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
    np.testing.assert_allclose(tasks.ssim(clean, clean), 1.0, rtol=1e-5)
    scores = [
        float(
            tasks.ssim(
                pipeline.add_gaussian_noise(jax.random.PRNGKey(1), clean, sigma), clean
            ).mean()
        )
        for sigma in (0.05, 0.2, 0.5)
    ]
    assert 1 > scores[0] > scores[1] > scores[2], scores
    assert tasks.ssim(clean, clean).shape == (3,)


def test_psnr():
    np.testing.assert_allclose(
        tasks.psnr(jnp.array([1.0, 0.01, 0.0])), [0.0, 20.0, 100.0], rtol=1e-6
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("task", "segment", "unknown task"),
        ("input_norm", "imagenet", "unknown input_norm"),
        ("optimizer", "lion", "unknown optimizer"),
        ("schedule", "step", "unknown schedule"),
        ("momentum", 1.0, "momentum"),
    ],
)
def test_bad_config_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_sgd_is_pytorchs_momentum_sgd():
    """buf = m * buf + (g + wd * p); p -= lr * buf, as torch.optim.SGD."""
    tx = optim.make_optimizer(
        TrainConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.5)
    )
    params = {"w": jnp.array([2.0])}
    state = tx.init(params)
    grad = {"w": jnp.array([1.0])}
    buf = 0.0
    for _ in range(3):
        updates, state = tx.update(grad, state, params)
        buf = 0.9 * buf + (1.0 + 0.5 * float(params["w"][0]))
        np.testing.assert_allclose(updates["w"], [-0.1 * buf], rtol=1e-5)
        params = optax.apply_updates(params, updates)


def test_adamw_decouples_weight_decay():
    tx = optim.make_optimizer(TrainConfig(optimizer="adamw", learning_rate=0.1, weight_decay=0.5))
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1 * 0.5 * 2.0], rtol=1e-5)  # Adam's part is 0.


def test_cosine_schedule_decays_to_zero_over_the_run():
    config = TrainConfig(schedule="cosine", learning_rate=1.0, epochs=2)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=5)
    assert (
        float(schedule(0)) == 1.0
        and float(schedule(5)) == pytest.approx(0.5)
        and float(schedule(10)) == 0.0
    )
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.learning_rate_schedule(config)


@pytest.mark.slow
def test_frozen_groups_do_not_move():
    config = TrainConfig(model="encoder_classifier", input_norm="unit", trainable=("head",))
    model = models.get_model("encoder_classifier")
    state = steps.create_train_state(
        model, optim.make_optimizer(config), 0, jnp.zeros((1, 28, 28, 1))
    )
    split = synthetic_split(32)
    batch = {"image": split.images, "label": split.labels, "mask": np.ones(32, bool)}
    new, _ = jax.jit(steps.train_step, static_argnames="spec")(
        state, batch, spec=config.step_config()
    )
    jax.tree.map(np.testing.assert_array_equal, new.params["encoder"], state.params["encoder"])
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), new.params["head"], state.params["head"]
    )
    assert all(jax.tree.leaves(moved))


def test_unknown_trainable_group_is_named():
    tx = optim.make_optimizer(TrainConfig(trainable=("decoder",)))
    with pytest.raises(ValueError, match="'decoder'.*not parameter groups"):
        tx.init({"encoder": jnp.zeros(1), "head": jnp.zeros(1)})


def test_every_optimizer_reports_its_learning_rate():
    for optimizer in OPTIMIZERS:
        config = TrainConfig(optimizer=optimizer, learning_rate=0.25, trainable=("a",))
        tx = optim.make_optimizer(config)
        assert optim.current_learning_rate(tx.init({"a": jnp.zeros(1), "b": jnp.zeros(1)})) == 0.25


@pytest.mark.slow
def test_an_autoencoder_learns_on_synthetic_digits(tmp_path, synthetic_splits):
    config = TrainConfig(
        model="conv_ae",
        task="reconstruct",
        input_norm="unit",
        epochs=3,
        batch_size=32,
        weight_decay=0.0,
        log_every_steps=5,
    )
    result = train.train_and_evaluate(
        config,
        models.get_model("conv_ae"),
        synthetic_splits,
        tmp_path,
        RunOptions(experiment="ae", progress=False),
    )
    history = result["history"]
    assert history[-1]["val_loss"] < history[0]["train_loss"]
    assert result["evaluated_checkpoint"]["kind"] == "best_val_loss"
    assert set(result["test"]) == {"loss", "mse", "psnr", "ssim"}
    assert 0 < result["test"]["ssim"] < 1 and "val_ssim" in history[-1]
    assert (tmp_path / "reconstructions.png").is_file() and not (
        tmp_path / "confusion_matrix.png"
    ).exists()
