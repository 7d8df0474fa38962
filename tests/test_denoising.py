"""Noisy copies, the denoiser over whole splits, and image quality (synthetic data)."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import data, denoising, optim, pipeline, rundir, steps, train
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.models import get_model
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
from tests.conftest import ROOT, small_run_config, synthetic_split

NOISE = NoiseConfig("gaussian", 0.5)


def test_noisy_splits_fix_val_and_test_noise_and_keep_the_clean_targets(synthetic_splits):
    noisy = denoising.noisy_splits(synthetic_splits, NOISE, seed=0)
    assert noisy.train is synthetic_splits.train  # Training noise is drawn per step instead.
    for clean, copy in ((synthetic_splits.val, noisy.val), (synthetic_splits.test, noisy.test)):
        chex.assert_type(copy.images, np.uint8)
        assert copy.images.shape == clean.images.shape and not np.array_equal(
            copy.images, clean.images
        )
        np.testing.assert_array_equal(copy.targets, clean.images)
        np.testing.assert_array_equal(copy.labels, clean.labels)
    again = denoising.noisy_splits(synthetic_splits, NOISE, seed=0)
    np.testing.assert_array_equal(again.test.images, noisy.test.images)
    # Noising a noisy copy starts again from its clean targets.
    np.testing.assert_array_equal(
        denoising.noisy_copy(noisy.test, NOISE, pipeline.fixed_noise_key(0, "test")).images,
        noisy.test.images,
    )
    subset = noisy.test.take(np.arange(5))
    np.testing.assert_array_equal(subset.targets, synthetic_splits.test.images[:5])


FIXED_NOISE_DIGEST = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {root!r})
from mnist_jax import pipeline
from tests.conftest import synthetic_split
images = synthetic_split(64, 2).images
noisy = pipeline.fixed_noisy_images(
    images, pipeline.NoiseConfig("gaussian", 0.5), pipeline.fixed_noise_key(0, "test")
)
print(hashlib.sha256(noisy.tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_fixed_test_noise_is_identical_in_another_process():
    """A separate run of Python (fresh JAX) makes byte-identical noisy test images."""
    import hashlib

    images = synthetic_split(64, 2).images
    here = pipeline.fixed_noisy_images(images, NOISE, pipeline.fixed_noise_key(0, "test"))
    other = subprocess.run(
        [sys.executable, "-c", FIXED_NOISE_DIGEST.format(root=str(ROOT))],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert other.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()


def test_split_targets_must_match_the_images():
    split = synthetic_split(4)
    with pytest.raises(ValueError, match="targets must be uint8 images"):
        data.Split(split.images, split.labels, split.images[:3])
    with pytest.raises(ValueError, match="targets must be uint8 images"):
        data.Split(split.images, split.labels, split.images.astype(np.float32))


def test_image_quality():
    clean = synthetic_split(20).images
    same = denoising.image_quality(clean, clean)
    assert (
        same["mse"] == 0.0
        and same["psnr"] == pytest.approx(100.0)
        and same["ssim"] == pytest.approx(1.0)
    )
    shifted = np.clip(clean.astype(np.int32) + 51, 0, 255).astype(np.uint8)  # +0.2 where it fits
    worse = denoising.image_quality(shifted, clean, batch_size=7)  # Batches of 7, 7 and 6.
    expected_mse = np.mean(((shifted.astype(np.float64) - clean) / 255) ** 2)
    assert worse["mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert worse["psnr"] < same["psnr"] and worse["ssim"] < 0.99
    with pytest.raises(ValueError, match="uint8 images of one shape"):
        denoising.image_quality(clean[:3], clean)


@pytest.fixture(scope="module")
def denoiser_state():
    spec = TrainConfig(model="denoising_ae", task="reconstruct", input_norm="unit")
    return spec, steps.create_train_state(
        get_model("denoising_ae"), optim.make_optimizer(spec), 0, jnp.zeros((1, 28, 28, 1))
    )


@pytest.mark.slow
def test_denoise_split_in_padded_batches_equals_one_batch(denoiser_state):
    config, state = denoiser_state
    split = denoising.noisy_copy(synthetic_split(23), NOISE, jax.random.PRNGKey(0))
    out = denoising.denoise_split(
        state, split, config.step_config(), batch_size=10
    )  # 10, 10, 3 (padded)
    chex.assert_shape(out.images, (23, 28, 28, 1))
    chex.assert_type(out.images, np.uint8)
    np.testing.assert_array_equal(out.targets, split.targets)
    whole = denoising.denoise_images(state, split.images, config.step_config(), batch_size=64)
    np.testing.assert_array_equal(out.images, whole)


def test_denoising_needs_a_reconstructing_model_and_images(denoiser_state):
    config, state = denoiser_state
    images = synthetic_split(4).images
    with pytest.raises(ValueError, match="reconstructs"):
        denoising.denoise_images(state, images, TrainConfig().step_config())
    with pytest.raises(ValueError, match="uint8"):
        denoising.denoise_images(state, images.astype(np.float32), config.step_config())


@pytest.mark.slow
def test_denoiser_is_scored_against_clean_targets_and_learns(synthetic_splits, tmp_path):
    """Validation and test losses compare the outputs with the clean targets,
    not the noisy inputs; a short run already beats the noisy input's PSNR."""
    noisy = denoising.noisy_splits(synthetic_splits, NOISE, seed=0)
    config = small_run_config(
        model="denoising_ae",
        task="reconstruct",
        input_norm="unit",
        epochs=6,
        weight_decay=0.0,
        noise=NOISE,
        learning_rate=3e-3,
    )
    result = train.train_and_evaluate(
        config,
        get_model("denoising_ae"),
        noisy,
        tmp_path,
        RunOptions(experiment="denoise", progress=False),
    )
    best = result["best_state"]
    denoised = denoising.denoise_split(best, noisy.test, config.step_config())
    against_clean = denoising.image_quality(denoised.images, synthetic_splits.test.images)
    against_noisy = denoising.image_quality(denoised.images, noisy.test.images)
    assert result["test"]["mse"] == pytest.approx(
        against_clean["mse"], abs=1e-4
    )  # uint8 rounding apart
    assert against_clean["mse"] < against_noisy["mse"]
    noisy_quality = denoising.image_quality(noisy.test.images, synthetic_splits.test.images)
    assert against_clean["psnr"] > noisy_quality["psnr"] + 3, (against_clean, noisy_quality)


@pytest.mark.slow
def test_restore_best_state_refuses_another_config(synthetic_splits, tmp_path):
    config = small_run_config(epochs=1)
    result = train.train_and_evaluate(
        config,
        get_model("cnn"),
        synthetic_splits,
        tmp_path,
        RunOptions(experiment="restore", progress=False),
    )
    restored = rundir.restore_best_state(config, get_model("cnn"), tmp_path)
    chex.assert_trees_all_equal(restored.params, result["best_state"].params)
    with pytest.raises(ResumeError, match="learning_rate: saved 0.001, now 0.01"):
        rundir.restore_best_state(
            small_run_config(epochs=1, learning_rate=1e-2), get_model("cnn"), tmp_path
        )
    with pytest.raises(ResumeError, match="holds no checkpoints"):
        rundir.restore_best_state(config, get_model("cnn"), tmp_path / "nothing")
