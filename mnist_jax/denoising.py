"""Noisy copies of MNIST, a denoiser run over whole splits, and image quality.

The parts of report 000's chain (experiments.noisy runs it): validation and
test sets get fixed noise, so that every model of a seed is scored on the
same noisy images; a trained denoising autoencoder turns a noisy split into
a denoised one, stored as uint8 like MNIST itself, so that any classifier
trains and scores on it unchanged; PSNR and SSIM say how close a copy is to
the clean images.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import parallel, pipeline, tasks
from mnist_jax.data import Split, Splits
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.steps import TrainState, infer
from mnist_jax.tasks import StepConfig


def clean_images(split: Split) -> np.ndarray:
    """The clean images of a split: its targets where it holds a noisy copy."""
    return split.images if split.targets is None else split.targets


def noisy_copy(split: Split, noise: NoiseConfig, key: jax.Array) -> Split:
    """`split` with fixed noise (pipeline.fixed_noisy_images): noisy uint8
    images, and the clean ones kept as reconstruction targets."""
    clean = clean_images(split)
    return Split(pipeline.fixed_noisy_images(clean, noise, key), split.labels, clean)


def noisy_splits(splits: Splits, noise: NoiseConfig, seed: int) -> Splits:
    """Validation and test with the seed's fixed noise; train stays clean,
    because training draws new noise every step (TrainConfig.noise)."""
    return Splits(
        train=splits.train,
        val=noisy_copy(splits.val, noise, pipeline.fixed_noise_key(seed, "val")),
        test=noisy_copy(splits.test, noise, pipeline.fixed_noise_key(seed, "test")),
    )


def _denoise_batch(state: TrainState, images: jax.Array, *, spec: StepConfig) -> jax.Array:
    inputs, _ = tasks.model_inputs(images, None, spec)  # (B, 28, 28, 1) in [0, 1]
    return pipeline.to_uint8(tasks.reconstruction(infer(state, inputs, spec.dtype), spec))


@functools.cache
def _make_denoise_step(spec: StepConfig, mesh: jax.sharding.Mesh):
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(_denoise_batch, spec=spec),
        in_shardings=(replicated, parallel.batch_sharded(mesh)),
        out_shardings=replicated,
    )


def denoise_images(
    state: TrainState,
    images: np.ndarray,
    spec: StepConfig,
    batch_size: int = 1000,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """The denoiser's outputs for uint8 `images`, in batches over `mesh`.

    Args:
      state: the trained denoising autoencoder.
      images: (N, 28, 28, 1) uint8, noisy.
      spec: its step settings; a task that reconstructs.
      batch_size: images per batch, rounded up to a multiple of the mesh's
        devices (the last batch is padded).
      mesh: the devices the batches are split over; None: every device.

    Returns:
      (N, 28, 28, 1) uint8, the denoised images.
    """
    if not spec.reconstructs:
        raise ValueError(f"denoising needs a model that reconstructs; task {spec.task!r} does not")
    if images.dtype != np.uint8:
        raise ValueError(f"denoising takes uint8 images, got {images.dtype}")
    mesh = mesh or parallel.data_mesh()
    step = _make_denoise_step(spec, mesh)
    batch_size = parallel.round_up(batch_size, mesh)
    n = images.shape[0]
    indices, _ = pipeline.batch_indices(np.arange(n), batch_size)  # Last batch padded.
    outputs = [step(state, parallel.shard_batch(images[idx], mesh)) for idx in indices]
    return np.concatenate(jax.device_get(outputs))[:n]


def denoise_split(
    state: TrainState,
    split: Split,
    spec: StepConfig,
    batch_size: int = 1000,
    mesh: jax.sharding.Mesh | None = None,
) -> Split:
    """`split` with its (noisy) images replaced by their denoised copies; targets kept.

    Args:
      state: the trained denoising autoencoder.
      split: a split of uint8 images, noisy (its targets, if any, the clean ones).
      spec: the denoiser's step settings; a task that reconstructs.
      batch_size: images per batch (see denoise_images).
      mesh: the devices the batches are split over; None: every device.

    Returns:
      A Split of the denoised images, the same labels, and as targets the
      clean images (`split`'s targets, or its images where it has none).
    """
    return Split(
        denoise_images(state, split.images, spec, batch_size, mesh),
        split.labels,
        clean_images(split),
    )


@jax.jit
def _quality_sums(images: jax.Array, reference: jax.Array) -> dict:
    x, ref = pipeline.to_unit_range(images), pipeline.to_unit_range(reference)  # (B, 28, 28, 1)
    # The difference of the integers, then scaled: exactly 0 for equal images,
    # whatever rounding the two conversions above get.
    diff = (images.astype(jnp.float32) - reference.astype(jnp.float32)) / 255.0
    mse = jnp.mean(diff**2, axis=(1, 2, 3))  # (B,)
    return {
        "mse": jnp.sum(mse),
        "psnr": jnp.sum(tasks.psnr(mse)),
        "ssim": jnp.sum(tasks.ssim(x, ref)),
    }


def image_quality(images: np.ndarray, reference: np.ndarray, batch_size: int = 1000) -> dict:
    """Mean per-image MSE, PSNR (dB) and SSIM of uint8 `images` against
    uint8 `reference` (both (N, 28, 28, 1)), as the autoencoders are scored."""
    if images.shape != reference.shape or images.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError(
            f"image quality compares uint8 images of one shape, got {images.dtype} "
            f"{images.shape} and {reference.dtype} {reference.shape}"
        )
    n = images.shape[0]
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    for begin in range(0, n, batch_size):
        part = jax.device_get(
            _quality_sums(images[begin : begin + batch_size], reference[begin : begin + batch_size])
        )
        sums = {k: v + float(part[k]) for k, v in sums.items()}
    return {k: v / max(n, 1) for k, v in sums.items()}
