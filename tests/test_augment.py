"""Augmentation on the device: shapes, seeds, the identity, the geometry, and the train step."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import augment, models, optim, pipeline, steps, tasks
from mnist_jax.augment import AugmentConfig
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.tasks import StepConfig
from tests.conftest import small_run_config, synthetic_split

STRONG = AugmentConfig(rotation=15, shift=0.1, zoom=0.15)
ELASTIC = AugmentConfig(elastic=34)
ALL = AugmentConfig(rotation=15, shift=0.1, zoom=0.15, elastic=34)


def digits(n=16, seed=0) -> jax.Array:
    """[0, 1] smooth strokes (n, 28, 28, 1) on black, as MNIST's: three
    Gaussian blobs (sigma 1.5-3 pixels) each, inside the central 20x20."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:28, 0:28]
    centres = rng.uniform(6, 22, (n, 3, 2))
    sigmas = rng.uniform(1.5, 3.0, (n, 3))
    blobs = np.exp(
        -((rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2)
        / (2 * sigmas[..., None, None] ** 2)
    )  # (n, 3, 28, 28)
    return jnp.asarray(np.clip(blobs.sum(1), 0, 1)[..., None], jnp.float32)


def test_random_affine_keeps_shape_dtype_and_range():
    images = digits()
    out = jax.jit(augment.random_affine, static_argnums=2)(jax.random.PRNGKey(0), images, STRONG)
    chex.assert_shape(out, (16, 28, 28, 1))
    chex.assert_type(out, jnp.float32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    assert not np.allclose(out, images)


def test_same_key_same_images_other_key_other_images():
    images = digits()
    a = augment.random_affine(jax.random.PRNGKey(3), images, STRONG)
    b = augment.random_affine(jax.random.PRNGKey(3), images, STRONG)
    c = augment.random_affine(jax.random.PRNGKey(4), images, STRONG)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).mean()) > 1e-3


def test_each_image_gets_its_own_transform():
    images = jnp.repeat(digits(1), 8, axis=0)  # One digit eight times.
    out = np.asarray(augment.random_affine(jax.random.PRNGKey(0), images, STRONG))
    assert len({o.tobytes() for o in out}) == 8


def test_the_identity_is_a_no_op():
    images = digits()
    assert augment.random_affine(jax.random.PRNGKey(0), images, AugmentConfig()) is images
    batch = images.shape[0]
    same = augment.transform(images, jnp.zeros(batch), jnp.ones(batch), jnp.zeros((batch, 2)))
    chex.assert_trees_all_close(same, images, atol=1e-6, rtol=0)


def test_rotation_and_shift_go_where_they_say():
    image = np.zeros((1, 5, 5, 1), np.float32)
    image[0, 0, 2] = 1.0  # The top middle pixel.
    quarter = augment.transform(
        jnp.asarray(image), jnp.array([math.pi / 2]), jnp.ones(1), jnp.zeros((1, 2))
    )
    assert np.unravel_index(np.argmax(quarter), quarter.shape) == (
        0,
        2,
        0,
        0,
    )  # Counter-clockwise: left middle.
    down = augment.transform(jnp.asarray(image), jnp.zeros(1), jnp.ones(1), jnp.array([[1.0, 0.0]]))
    assert np.unravel_index(np.argmax(down), down.shape) == (0, 1, 2, 0)
    zoomed = augment.transform(
        jnp.asarray(image), jnp.zeros(1), jnp.array([0.5]), jnp.zeros((1, 2))
    )
    assert float(zoomed[0, 0, 2, 0]) == 0.0 and float(zoomed[0, 1, 2, 0]) == pytest.approx(
        1.0
    )  # Halfway in.


def test_rotating_back_comes_back_close():
    images = digits()
    batch = images.shape[0]
    angle = jnp.full(batch, math.radians(15))
    ones, zeros = jnp.ones(batch), jnp.zeros((batch, 2))
    rotated = augment.transform(images, angle, ones, zeros)
    back = augment.transform(rotated, -angle, ones, zeros)
    moved, returned = float(jnp.abs(rotated - images).mean()), float(jnp.abs(back - images).mean())
    # Two bilinear resamples blur the digit a little; the rotation itself moves it far more.
    assert returned < 0.25 * moved, (returned, moved)


@pytest.mark.parametrize("config", [STRONG, ELASTIC, ALL], ids=["affine", "elastic", "both"])
def test_augmented_images_stay_with_their_own_examples(config):
    """No mixing or reordering across the batch: output i depends on input i
    alone, so label i still holds."""
    images = digits(8)
    key = jax.random.PRNGKey(1)
    out = augment.random_transform(key, images, config)
    changed = augment.random_transform(key, images.at[5].set(0.0), config)
    np.testing.assert_array_equal(np.delete(changed, 5, axis=0), np.delete(out, 5, axis=0))
    assert float(jnp.abs(changed[5]).max()) == 0.0 and float(out[5].max()) > 0.5


@pytest.mark.parametrize(
    "field, value",
    [
        ("rotation", -1),
        ("rotation", 200),
        ("shift", 1.0),
        ("zoom", -0.1),
        ("elastic", -1.0),
        ("elastic_sigma", 0.0),
    ],
)
def test_bad_ranges_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_elastic_keeps_shape_dtype_and_range_and_follows_the_key():
    images = digits()
    transform = jax.jit(augment.random_transform, static_argnums=2)
    out = transform(jax.random.PRNGKey(0), images, ALL)
    chex.assert_shape(out, (16, 28, 28, 1))
    chex.assert_type(out, jnp.float32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    np.testing.assert_array_equal(out, transform(jax.random.PRNGKey(0), images, ALL))
    assert float(jnp.abs(out - transform(jax.random.PRNGKey(1), images, ALL)).mean()) > 1e-3
    repeated = jnp.repeat(digits(1), 8, axis=0)
    assert (
        len(
            {
                o.tobytes()
                for o in np.asarray(
                    augment.random_elastic(jax.random.PRNGKey(0), repeated, ELASTIC)
                )
            }
        )
        == 8
    )
    assert (
        augment.random_elastic(jax.random.PRNGKey(0), images, STRONG) is images
    )  # No strength: untouched.


def test_elastic_moves_pixels_by_a_smooth_field_as_strong_as_asked():
    """On a ramp (each pixel's value is its row) bilinear resampling is exact,
    so the output minus the ramp is the field's row component itself."""
    ramp = jnp.broadcast_to(jnp.arange(28, dtype=jnp.float32)[None, :, None, None], (32, 28, 28, 1))
    key = jax.random.PRNGKey(2)
    inside = (
        slice(None),
        slice(8, 20),
        slice(8, 20),
        0,
    )  # Far from the edges, where pixels come from outside.
    field = (augment.random_elastic(key, ramp, ELASTIC) - ramp)[inside]
    double = (augment.random_elastic(key, ramp, dataclasses.replace(ELASTIC, elastic=68)) - ramp)[
        inside
    ]
    np.testing.assert_allclose(
        double, 2 * field, atol=1e-4
    )  # Linear in alpha: same field, twice the move.
    moved = float(jnp.abs(field).mean())
    assert 0.5 < moved < 2.0, (
        moved
    )  # Simard's alpha 34, sigma 4: about a pixel and a half of spread.
    neighbours = float(jnp.abs(jnp.diff(field, axis=2)).mean())
    assert neighbours < 0.2 * moved, (neighbours, moved)  # Smooth: neighbours move together.
    rough = (
        augment.random_elastic(key, ramp, dataclasses.replace(ELASTIC, elastic_sigma=1.0)) - ramp
    )
    assert float(jnp.abs(jnp.diff(rough[inside], axis=2)).mean()) > 2 * neighbours


def test_gaussian_matrix_is_a_same_padded_gaussian_blur():
    signal = np.random.default_rng(0).uniform(-1, 1, 28).astype(np.float32)
    radius = 12
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * 4.0**2))
    expected = np.convolve(signal, taps / taps.sum(), mode="same")
    np.testing.assert_allclose(augment.gaussian_matrix(28, 4.0) @ signal, expected, atol=1e-6)


def test_without_elastic_the_affine_transform_takes_the_whole_key():
    """Recipes from before the elastic distortion draw the same images."""
    images, key = digits(), jax.random.PRNGKey(7)
    np.testing.assert_array_equal(
        augment.random_transform(key, images, STRONG), augment.random_affine(key, images, STRONG)
    )


def test_without_augmentation_the_noise_takes_the_whole_key():
    """The reports' runs draw the same noise as before augmentation existed."""
    uint8 = jnp.asarray(synthetic_split(8).images)
    key = jax.random.PRNGKey(5)
    spec = StepConfig(noise=NoiseConfig("gaussian", 0.3))
    inputs, target = tasks.model_inputs(uint8, key, spec)
    clean = pipeline.to_unit_range(uint8)
    np.testing.assert_array_equal(
        inputs, pipeline.normalize(pipeline.add_noise(key, clean, spec.noise))
    )
    np.testing.assert_array_equal(target, clean)


def test_augmented_target_is_the_transformed_clean_image():
    uint8 = jnp.asarray(synthetic_split(8).images)
    spec = StepConfig(task="reconstruct", input_norm="unit", augment=STRONG)
    inputs, target = tasks.model_inputs(uint8, jax.random.PRNGKey(0), spec)
    np.testing.assert_array_equal(inputs, target)  # No noise: the input is the target.
    assert not np.allclose(target, pipeline.to_unit_range(uint8))
    clean_inputs, clean_target = tasks.model_inputs(
        uint8, None, spec
    )  # Evaluation: never augmented.
    np.testing.assert_array_equal(clean_target, pipeline.to_unit_range(uint8))


def test_features_cannot_be_augmented():
    features = jnp.zeros((4, 512), jnp.float32)
    with pytest.raises(ValueError, match="no-cache-features"):
        tasks.model_inputs(features, jax.random.PRNGKey(0), StepConfig(augment=STRONG))


@pytest.mark.slow
def test_augmented_train_step_is_reproducible_and_not_the_plain_one():
    split = synthetic_split(32)
    batch = {"image": split.images, "label": split.labels, "mask": np.ones(32, bool)}
    config = small_run_config(noise=NoiseConfig())

    def one_step(spec):
        state = steps.create_train_state(
            models.get_model("cnn"), optim.make_optimizer(config), 0, jnp.zeros((1, 28, 28, 1))
        )
        _, sums = jax.jit(steps.train_step, static_argnames="spec")(state, batch, spec=spec)
        return float(sums["loss_sum"])

    augmented = dataclasses.replace(config, augment=STRONG).step_config()
    assert one_step(augmented) == one_step(augmented)
    assert one_step(augmented) != one_step(config.step_config())


def strokes_batch(n=8):
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 6:22, 12:15] = 1.0
    x[:, 6:9, 8:20] = 0.7
    return jnp.asarray(x)


@pytest.mark.parametrize("lever", ["stroke", "blur", "gamma"])
def test_each_ink_lever_is_off_at_zero_and_keyed_otherwise(lever):
    images = strokes_batch()
    key = jax.random.PRNGKey(0)
    off = AugmentConfig()
    assert not off.ink and not off.active
    on = AugmentConfig(**{lever: 1.0})
    assert on.ink and on.active
    out = jax.jit(augment.random_transform, static_argnums=2)(key, images, on)
    chex.assert_shape(out, images.shape)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not np.allclose(out, images)
    again = augment.random_transform(key, images, on)
    np.testing.assert_allclose(out, again, atol=1e-6)
    other = augment.random_transform(jax.random.PRNGKey(1), images, on)
    assert not np.allclose(out, other)


def test_adding_ink_levers_leaves_the_affine_draws_as_they_were():
    images = strokes_batch()
    key = jax.random.PRNGKey(3)
    affine = AugmentConfig(rotation=15, shift=0.1, zoom=0.1)
    before = augment.random_transform(key, images, affine)
    np.testing.assert_array_equal(before, augment.random_affine(key, images, affine))


def test_morphology_thickens_and_thins_by_its_amount():
    images = strokes_batch(3)
    out = augment.morphology(images, jnp.array([1.0, 0.0, -1.0]), 1)
    ink = (out > 0.5).sum(axis=(1, 2, 3))
    original = int((images[0] > 0.5).sum())
    assert ink[0] > original and ink[1] == original and ink[2] < original


@pytest.mark.parametrize("bad", [{"stroke": -1}, {"stroke": 4}, {"blur": -0.5}, {"gamma": 5}])
def test_bad_ink_levers_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AugmentConfig(**bad)
