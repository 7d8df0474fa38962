"""What a model is trained to do: its inputs, its loss, and how it is scored.

Three tasks cover the reports:

- "classify": logits (B, 10) against labels; cross-entropy; accuracy.
- "reconstruct": images (B, 28, 28, 1) in [0, 1] against the clean input;
  mean squared error per pixel (PyTorch's MSELoss); PSNR at evaluation.
  With noise on the inputs this is a denoising autoencoder.
- "classify_decode": (logits, reconstruction); cross-entropy plus
  `recon_weight` times the MSE (report 003's ClassifierDecoding).

Everything here is per example, so the fit loop can mask padding and sum.
"""

from __future__ import annotations

import dataclasses

import dm_pix
import jax
import jax.numpy as jnp
import optax

from mnist_jax import augment, pipeline, precision
from mnist_jax.augment import AugmentConfig
from mnist_jax.fields import setting
from mnist_jax.pipeline import NoiseConfig

TASKS = ("classify", "reconstruct", "classify_decode")
INPUT_NORMS = ("mnist", "unit")

# PSNR of a perfect reconstruction is infinite; clip the MSE so it stays finite.
_MIN_MSE = 1e-10


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the jitted steps need to know (static, hashable): the settings
    of a run that its train and evaluation steps read. `TrainConfig`
    (mnist_jax.config) is a StepConfig with the rest of a run's settings;
    `TrainConfig.step_config()` is this part of it alone, so that two runs
    that differ only elsewhere (a learning rate, the epochs) share a step.
    """

    task: str = setting("classify", f"what the model is trained to do: one of {TASKS}")
    input_norm: str = setting(
        "mnist",
        '"mnist": zero mean, unit variance with MNIST\'s statistics (the classifiers of '
        'reports 000 and 004); "unit": pixels in [0, 1] (the autoencoders, whose sigmoid '
        "outputs live there)",
    )
    noise: NoiseConfig = setting(
        NoiseConfig(), "added to the training inputs (never to the reconstruction target)"
    )
    recon_weight: float = setting(1.0, '"classify_decode": the loss is CE + recon_weight * MSE')
    dtype: str = setting(
        "float32",
        "compute dtype; bfloat16 keeps parameters, optimizer state and loss in float32",
        group="run",
        choices=tuple(precision.DTYPES),
    )
    augment: AugmentConfig = setting(
        AugmentConfig(),
        "the random affine transform and elastic distortion of each training image "
        "(before the noise; the reconstruction target is the transformed clean image)",
    )
    ema_decay: float = setting(
        0.0,
        "validate, select and test a moving average of the weights with this decay, e.g. 0.999 "
        "(it warms up as (1 + step) / (10 + step), reaching the decay after about "
        "9 / (1 - decay) steps); 0: none",
        group="recipe",
    )
    label_smoothing: float = setting(
        0.0,
        "train against labels smoothed by this much, e.g. 0.1 (Szegedy et al. 2016; validation "
        "and test losses stay plain cross-entropy, comparable across runs); 0: none",
        group="recipe",
        metavar="ALPHA",
    )

    def __post_init__(self):
        precision.check_dtype(self.dtype)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {self.input_norm!r}; choose one of {INPUT_NORMS}")
        if self.recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {self.recon_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"ema_decay must be in [0, 1) (0: no moving average), got {self.ema_decay}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                f"label_smoothing must be in [0, 1) (0: none), got {self.label_smoothing}"
            )
        if self.label_smoothing and not self.classifies:
            raise ValueError(
                f"label_smoothing smooths class labels, but task {self.task!r} has none; "
                "leave it at 0"
            )

    @property
    def classifies(self) -> bool:
        return self.task in ("classify", "classify_decode")

    @property
    def reconstructs(self) -> bool:
        return self.task in ("reconstruct", "classify_decode")

    @property
    def varies_inputs(self) -> bool:
        """Whether the training inputs change from step to step (noise, augmentation)."""
        return self.noise.kind != "none" or self.augment.active

    @property
    def selection(self) -> tuple[str, str]:
        """(validation metric, "max" or "min") that picks the best checkpoint."""
        return ("val_accuracy", "max") if self.classifies else ("val_loss", "min")


def model_inputs(
    images: jax.Array, key: jax.Array | None, spec: StepConfig
) -> tuple[jax.Array, jax.Array | None]:
    """(model input, clean [0, 1] target) of a batch.

    images: uint8 MNIST (B, 28, 28, 1), or float precomputed features, which
      pass through unchanged (and have no reconstruction target).
    key: the step's input key, or None for clean inputs (evaluation). With
      augmentation it is split in two (augmentation, noise); without, the
      noise takes it whole, as before augmentation existed.
    """
    if images.dtype != jnp.uint8:
        if key is not None and spec.augment.active:
            raise ValueError(
                "augmentation transforms images, but these inputs are precomputed features "
                f"{images.shape}: run the frozen layers every step (--no-cache-features)"
            )
        return images, None
    clean = pipeline.to_unit_range(images)  # (B, 28, 28, 1)
    if key is not None and spec.augment.active:
        augment_key, key = jax.random.split(key)
        clean = augment.random_transform(augment_key, clean, spec.augment)
    noisy = clean if key is None else pipeline.add_noise(key, clean, spec.noise)
    inputs = pipeline.normalize(noisy) if spec.input_norm == "mnist" else noisy
    return inputs, clean


def _split_outputs(outputs, spec: StepConfig):
    """(logits or None, reconstruction or None) of a model's outputs."""
    if spec.task == "classify":
        return outputs, None
    if spec.task == "reconstruct":
        return None, outputs
    logits, reconstruction = outputs
    return logits, reconstruction


def per_example_terms(
    outputs, target: jax.Array | None, labels: jax.Array, spec: StepConfig, *, train: bool = False
) -> dict:
    """Per-example loss and metrics, each (B,).

    Args:
      outputs: the model's float32 outputs: logits (B, 10), a reconstruction
        (B, 28, 28, 1), or both, as the task has them.
      target: (B, 28, 28, 1) the clean [0, 1] images a reconstruction is
        scored against; None for precomputed features.
      labels: (B,) int32.
      spec: the step settings (the task, recon_weight, label_smoothing).
      train: a training step's terms: the loss's cross-entropy is then
        against smoothed labels (spec.label_smoothing); "cross_entropy" is
        always the plain one.

    Returns:
      "loss" always; "correct" (0/1) and "cross_entropy" when the task
      classifies; "mse" (mean over pixels) when it reconstructs.
    """
    logits, reconstruction = _split_outputs(outputs, spec)
    terms = {}
    loss = 0.0
    if logits is not None:
        terms["cross_entropy"] = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        terms["correct"] = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        loss = terms["cross_entropy"]
        if train and spec.label_smoothing:
            targets = optax.smooth_labels(
                jax.nn.one_hot(labels, logits.shape[-1]), spec.label_smoothing
            )
            loss = optax.softmax_cross_entropy(logits, targets)
    if reconstruction is not None:
        if target is None:
            raise ValueError("reconstruction needs image inputs, not precomputed features")
        terms["mse"] = jnp.mean((reconstruction - target) ** 2, axis=(1, 2, 3))
        weight = 1.0 if spec.task == "reconstruct" else spec.recon_weight
        loss = loss + weight * terms["mse"]
    terms["loss"] = loss
    return terms


def psnr(mse: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB of [0, 1] images from their MSE."""
    return -10.0 * jnp.log10(jnp.maximum(mse, _MIN_MSE))


def ssim(images: jax.Array, reference: jax.Array) -> jax.Array:
    """Structural similarity (B,) of [0, 1] images (B, H, W, C) to a reference:
    Wang et al. 2004 with the usual 11x11 Gaussian window (sigma 1.5), by dm-pix."""
    return dm_pix.ssim(images, reference, max_val=1.0)


def reconstruction(outputs, spec: StepConfig) -> jax.Array | None:
    return _split_outputs(outputs, spec)[1]


def logits_of(outputs, spec: StepConfig) -> jax.Array | None:
    return _split_outputs(outputs, spec)[0]
