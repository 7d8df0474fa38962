"""Batching, shuffling, normalisation and noise: pure and reproducible."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import pipeline, steps, tasks
from mnist_jax.pipeline import NoiseConfig


def test_batches_cover_every_example_exactly_once():
    order = np.random.default_rng(0).permutation(130)
    indices, mask = pipeline.batch_indices(order, 64)
    assert indices.shape == mask.shape == (3, 64)
    assert mask.sum() == 130 and not mask[-1, 2:].any()
    np.testing.assert_array_equal(np.sort(indices[mask]), np.arange(130))


def test_epoch_order_is_a_seeded_permutation_new_each_epoch():
    key = jax.random.PRNGKey(0)
    first = pipeline.epoch_order(key, 0, 1000)
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    np.testing.assert_array_equal(first, pipeline.epoch_order(jax.random.PRNGKey(0), 0, 1000))
    assert not np.array_equal(first, pipeline.epoch_order(key, 1, 1000))


def test_normalize_uses_mnist_statistics():
    x = pipeline.normalize(pipeline.to_unit_range(jnp.array([0, 255], jnp.uint8)))
    np.testing.assert_allclose(x, [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)


def test_gaussian_noise_statistics():
    x = jnp.full((200, 28, 28, 1), 0.5)
    noisy = pipeline.add_gaussian_noise(jax.random.PRNGKey(0), x, 0.1)
    assert abs(float(noisy.mean()) - 0.5) < 0.002
    assert abs(float(noisy.std()) - 0.1) < 0.002
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0


def test_salt_and_pepper_statistics():
    x = jnp.full((200, 28, 28, 1), 0.5)
    noisy = np.asarray(pipeline.add_salt_and_pepper(jax.random.PRNGKey(0), x, 0.2))
    assert abs((noisy != 0.5).mean() - 0.2) < 0.005
    assert abs((noisy == 1.0).mean() - 0.1) < 0.005
    assert set(np.unique(noisy)) == {0.0, 0.5, 1.0}


def test_speckle_statistics():
    """Multiplicative: the noise's spread is sigma times the pixel value."""
    for value in (0.25, 0.5):
        x = jnp.full((200, 28, 28, 1), value)
        noisy = np.asarray(pipeline.add_speckle_noise(jax.random.PRNGKey(0), x, 0.2))
        assert abs((noisy - value).mean()) < 1e-3
        assert abs((noisy - value).std() - 0.2 * value) < 2e-3
    black = jnp.zeros((2, 28, 28, 1))
    np.testing.assert_array_equal(
        pipeline.add_speckle_noise(jax.random.PRNGKey(0), black, 0.5), black
    )


def test_fixed_eval_noise_is_the_same_every_time_and_new_per_split_and_seed():
    images = np.full((50, 28, 28, 1), 128, np.uint8)
    noise = NoiseConfig("gaussian", 0.1)
    test_key = pipeline.fixed_noise_key(0, "test")
    first = pipeline.fixed_noisy_images(images, noise, test_key)
    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(
        first, pipeline.fixed_noisy_images(images, noise, pipeline.fixed_noise_key(0, "test"))
    )
    for other in ("val", "train"):
        assert not np.array_equal(
            first, pipeline.fixed_noisy_images(images, noise, pipeline.fixed_noise_key(0, other))
        )
    assert not np.array_equal(
        first, pipeline.fixed_noisy_images(images, noise, pipeline.fixed_noise_key(1, "test"))
    )
    assert not np.array_equal(first[0], first[1])  # Each image its own noise.
    diff = (first.astype(np.float64) - 128) / 255
    assert (
        abs(diff.mean()) < 2e-3 and abs(diff.std() - 0.1) < 2e-3
    )  # Gaussian, after rounding to uint8.


def test_fixed_noise_refuses_features_and_unknown_splits():
    with pytest.raises(ValueError, match="uint8"):
        pipeline.fixed_noisy_images(
            np.zeros((2, 4), np.float32),
            NoiseConfig("gaussian", 0.1),
            pipeline.fixed_noise_key(0, "test"),
        )
    with pytest.raises(ValueError, match="unknown split 'training'"):
        pipeline.fixed_noise_key(0, "training")


@pytest.mark.parametrize("kind, level", [("gaussian", 0.3), ("salt_pepper", 0.1), ("speckle", 0.5)])
def test_training_noise_differs_across_epochs_and_repeats_for_a_seed(kind, level):
    """The step draws noise from fold_in(key, step): the same example meets
    new noise each epoch, and the same noise again under the same seed."""
    noise = NoiseConfig(kind, level)
    images = jnp.full((8, 28, 28, 1), 100, jnp.uint8)
    steps_per_epoch = 10

    def noisy_at(seed, step):
        _, noise_key = steps.step_keys(
            jax.random.split(jax.random.PRNGKey(seed))[1], jnp.asarray(step)
        )
        return np.asarray(tasks.model_inputs(images, noise_key, tasks.StepConfig(noise=noise))[0])

    epoch0, epoch1 = noisy_at(0, 3), noisy_at(0, 3 + steps_per_epoch)
    assert not np.allclose(epoch0, epoch1)
    np.testing.assert_array_equal(epoch0, noisy_at(0, 3))
    assert not np.allclose(epoch0, noisy_at(1, 3))


def test_no_noise_is_identity():
    x = jnp.linspace(0, 1, 784).reshape(1, 28, 28, 1)
    np.testing.assert_array_equal(pipeline.add_noise(jax.random.PRNGKey(0), x, NoiseConfig()), x)


@pytest.mark.parametrize(
    "kind, level, match",
    [
        ("speckles", 0.1, "unknown noise kind"),
        ("gaussian", -1, "noise_level must be"),
        ("salt_pepper", 2, "noise_level must be"),
    ],
)
def test_bad_noise_config_is_refused(kind, level, match):
    with pytest.raises(ValueError, match=match):
        NoiseConfig(kind, level)
