"""Train state, pure jitted steps, and the fit loop with checkpoints and logging.

The step is a pure function `state, batch -> state, metrics`, jitted once
per run. Randomness is stateless: the state holds one root key, and step `s`
uses `fold_in(key, s)` for its dropout and noise, so a run resumed from any
checkpoint replays exactly the steps it would have taken.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from mnist_jax import checkpoints, metrics as metrics_lib, pipeline, summaries, viz
from mnist_jax.data import Split, Splits
from mnist_jax.pipeline import NoiseConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's numbers.

    Defaults are report 004's CNN settings.
    """

    model: str = "cnn"
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    learning_rate: float = 1e-3
    # L2 added to the gradient before Adam, as torch.optim.Adam(weight_decay=...).
    weight_decay: float = 1e-5
    seed: int = 0
    val_fraction: float = 0.1
    noise: NoiseConfig = NoiseConfig()
    # Stratified subsets for quick runs and tests; None = the whole split.
    train_size: int | None = None
    test_size: int | None = None
    log_every_steps: int = 100
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self):
        positive = ("epochs", "batch_size", "eval_batch_size", "log_every_steps",
                    "checkpoint_every_steps", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrainState(train_state.TrainState):
    """params, opt_state, step (from Flax) + batch-norm statistics + root key."""

    batch_stats: Any
    key: jax.Array  # uint32[2]; step s draws from fold_in(key, s).


def adam_l2(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.Adam with weight_decay: L2 added to the gradient, then Adam."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    # Hyperparameters live in the optimizer state as arrays: logged from
    # there, and changing them needs no recompilation.
    return optax.inject_hyperparams(adam_l2)(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, train, shuffle) keys of a run: everything random derives from `seed`."""
    root = jax.random.PRNGKey(seed)
    init_key, train_key = jax.random.split(root)
    return init_key, train_key, jax.random.fold_in(root, 1)


def step_keys(key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(dropout, noise) keys of step `step`: fresh every step, no key state to carry."""
    dropout_key, noise_key = jax.random.split(jax.random.fold_in(key, step))
    return dropout_key, noise_key


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, seed: int, sample: jax.Array
) -> TrainState:
    """Initialises parameters from `seed`; sample: (B, 28, 28, 1) float input."""
    init_key, train_key, _ = run_keys(seed)
    variables = model.init(init_key, sample, train=False)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        key=train_key,
    )
    # Flax starts `step` as the Python int 0; as an array from the start, the
    # first and later steps share one compiled program.
    return state.replace(step=jnp.zeros((), jnp.int32))


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def train_step(state: TrainState, batch: dict, *, noise: NoiseConfig) -> tuple[TrainState, dict]:
    """One optimizer step on a (padded, masked) batch.

    batch: image (B, 28, 28, 1) uint8, label (B,) int32, mask (B,) bool.
    Returns the new state and sums over the real examples.
    """
    dropout_key, noise_key = step_keys(state.key, state.step)
    images = pipeline.prepare_images(batch["image"], noise_key, noise)  # (B, 28, 28, 1)
    labels, mask = batch["label"], batch["mask"]

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images, train=True, mask=mask,
            rngs={"dropout": dropout_key}, mutable=["batch_stats"],
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return masked_mean(losses, mask), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    count = jnp.sum(mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & mask)
    return state, {"loss_sum": loss * count, "correct": correct, "count": count}


def make_train_step(noise: NoiseConfig) -> Callable:
    """The jitted step; the old state's buffers are donated to the new one."""
    return jax.jit(functools.partial(train_step, noise=noise), donate_argnums=0)


@jax.jit
def eval_step(state: TrainState, batch: dict) -> dict:
    """Loss sum, correct count and predictions of a clean batch."""
    images = pipeline.normalize(pipeline.to_unit_range(batch["image"]))
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    mask = batch["mask"]
    predictions = jnp.argmax(logits, -1)
    return {
        "loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
        "correct": jnp.sum((predictions == batch["label"]) & mask),
        "predictions": predictions,
    }


def evaluate(state: TrainState, split: Split, batch_size: int) -> dict:
    """Loss, accuracy and predictions over a whole split (no example dropped)."""
    outputs = [
        eval_step(state, batch)
        for batch in pipeline.iterate_batches(split.images, split.labels, batch_size)
    ]
    outputs = jax.device_get(outputs)
    n = len(split)
    predictions = np.concatenate([o["predictions"] for o in outputs])[:n]
    return {
        "loss": float(sum(o["loss_sum"] for o in outputs) / n),
        "accuracy": float(sum(o["correct"] for o in outputs) / n),
        "predictions": predictions,
    }


def classification_metrics(state: TrainState, split: Split, batch_size: int) -> dict:
    """Loss, accuracy, macro F1, per-class report and confusion matrix of a split."""
    result = evaluate(state, split, batch_size)
    cm = metrics_lib.confusion_matrix(split.labels, result["predictions"])
    report = metrics_lib.classification_report(cm)
    return {
        "loss": result["loss"],
        "accuracy": report["accuracy"],
        "f1_macro": report["f1_macro"],
        "per_class": report["per_class"],
        "confusion_matrix": cm.tolist(),
    }


def describe_devices() -> dict:
    devices = jax.devices()
    return {
        "count": len(devices),
        "platform": devices[0].platform,
        "kinds": sorted({d.device_kind for d in devices}),
    }


class ResumeError(Exception):
    """A run cannot be resumed as asked."""


# Config fields a resumed run may change without changing its numbers.
RESUMABLE_CHANGES = ("epochs", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                     "eval_batch_size")


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    current = json.loads(json.dumps(config.to_dict()))
    changed = sorted(
        k for k in set(saved) | set(current)
        if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise ResumeError(
            f"cannot resume: the config differs from the checkpoint's ({detail}). "
            "Resume with the same settings, or start a new run in another --workdir."
        )


@dataclasses.dataclass
class _EpochSums:
    """Running sums of the training metrics of the current epoch (host side)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, step_metrics: list[dict]) -> tuple[float, float]:
        """Adds fetched step metrics; returns this window's (loss, count)."""
        window_loss = sum(float(m["loss_sum"]) for m in step_metrics)
        window_count = sum(float(m["count"]) for m in step_metrics)
        self.loss_sum += window_loss
        self.correct += sum(float(m["correct"]) for m in step_metrics)
        self.count += window_count
        return window_loss, window_count


def write_json(path: pathlib.Path, payload: dict) -> None:
    """Writes JSON atomically: a reader never sees half a file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, path)


def fit(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    ckpts: checkpoints.RunCheckpoints,
    writer: summaries.MetricWriter,
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Trains `model`, saving the latest and best checkpoints into `ckpts`.

    Args:
      resume: continue from the newest checkpoint, exactly where it stopped
        (mid-epoch too).
      on_step: called with the global step after each step (tests use it to
        interrupt a run).

    Returns:
      {"state", "history", "best", "train_seconds", "first_step_seconds"}.
    """
    train = splits.train
    steps_per_epoch = pipeline.num_batches(len(train), config.batch_size)

    sample = jnp.zeros((1, *train.images.shape[1:]), jnp.float32)
    state = create_train_state(model, make_optimizer(config), config.seed, sample)
    _, _, shuffle_key = run_keys(config.seed)
    meta = {"history": [], "best": None, "epoch_sums": {}, "train_seconds": 0.0}

    if resume:
        if ckpts.latest_step() is None:
            raise ResumeError(f"--resume: no checkpoint in {ckpts.latest.directory} to resume from.")
        state, saved = ckpts.restore_latest(state)
        _check_resumable(saved["config"], config)
        meta.update({k: saved[k] for k in meta})
        log.info("Resumed at step %d", int(state.step))
    step_fn = make_train_step(config.noise)
    start = int(state.step)
    sums = _EpochSums(**meta["epoch_sums"])
    pending: list[dict] = []
    first_step_seconds = None
    clock = time.perf_counter()
    elapsed_before = meta["train_seconds"]

    def snapshot() -> dict:
        return {**meta, "config": config.to_dict(), "epoch_sums": dataclasses.asdict(sums),
                "train_seconds": elapsed_before + time.perf_counter() - clock}

    for epoch in range(start // steps_per_epoch, config.epochs):
        offset = start - epoch * steps_per_epoch if epoch == start // steps_per_epoch else 0
        order = pipeline.epoch_order(shuffle_key, epoch, len(train))
        batches = pipeline.iterate_batches(
            train.images, train.labels, config.batch_size, order=order, start=offset
        )
        bar = tqdm(total=steps_per_epoch, initial=offset, disable=not progress,
                   desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False)
        for step_in_epoch, batch in enumerate(batches, start=offset):
            state, step_metrics = step_fn(state, batch)
            pending.append(step_metrics)
            step = epoch * steps_per_epoch + step_in_epoch + 1
            if first_step_seconds is None:
                jax.block_until_ready(step_metrics)
                first_step_seconds = time.perf_counter() - clock
            end_of_epoch = step_in_epoch + 1 == steps_per_epoch
            if step % config.log_every_steps == 0 or end_of_epoch:
                loss, count = sums.add(jax.device_get(pending))
                pending = []
                writer.scalars(step, {"train/loss_step": loss / max(count, 1)})
                bar.set_postfix(loss=f"{sums.loss_sum / max(sums.count, 1):.4f}")
            if step % config.checkpoint_every_steps == 0 and not end_of_epoch:
                sums.add(jax.device_get(pending))
                pending = []
                ckpts.save_latest(step, state, snapshot())
            bar.update(1)
            if on_step is not None:
                on_step(step)
        bar.close()

        val = evaluate(state, splits.val, config.eval_batch_size)
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": sums.loss_sum / max(sums.count, 1),
            "train_accuracy": sums.correct / max(sums.count, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "learning_rate": float(state.opt_state.hyperparams["learning_rate"]),
        }
        meta["history"].append(record)
        sums = _EpochSums()
        writer.scalars(step, {
            "train/loss": record["train_loss"], "train/accuracy": record["train_accuracy"],
            "val/loss": record["val_loss"], "val/accuracy": record["val_accuracy"],
            "learning_rate": record["learning_rate"],
        })
        print(
            f"epoch {epoch + 1:>3}/{config.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}  val loss {record['val_loss']:.4f} "
            f"acc {record['val_accuracy']:.4f}",
            flush=True,
        )
        if meta["best"] is None or record["val_accuracy"] > meta["best"]["val_accuracy"]:
            meta["best"] = {"epoch": epoch + 1, "step": step, "val_accuracy": record["val_accuracy"]}
            ckpts.save_best(step, state, snapshot())
        ckpts.save_latest(step, state, snapshot())
    ckpts.wait()
    train_seconds = elapsed_before + time.perf_counter() - clock
    return {
        "state": state,
        "history": meta["history"],
        "best": meta["best"],
        "train_seconds": train_seconds,
        "first_step_seconds": first_step_seconds,
    }


def flat_hparams(config: TrainConfig) -> dict:
    """The config as flat scalars for TensorBoard's HParams dashboard."""
    flat = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif value is not None:
            flat[key] = value
    return flat


def train_and_evaluate(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    workdir: str | pathlib.Path,
    *,
    experiment: str,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Trains, scores the best checkpoint (by validation accuracy) on the test
    set, and writes `metrics.json`, the confusion matrix and TensorBoard hparams.

    Without `resume`, a `workdir` that already holds checkpoints is refused,
    so nothing saved is overwritten.

    Returns the contents of metrics.json plus the final "state".
    """
    workdir = pathlib.Path(workdir).expanduser()
    if not resume and checkpoints.has_checkpoints(workdir):
        raise ResumeError(
            f"{workdir} already holds a run's checkpoints. Pass --resume to continue it, "
            "or choose another --workdir; nothing was changed."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    with checkpoints.RunCheckpoints(workdir, max_to_keep=config.keep_checkpoints) as ckpts, \
            summaries.MetricWriter(workdir / "tensorboard") as writer:
        result = fit(config, model, splits, ckpts, writer, resume=resume, on_step=on_step,
                     progress=progress)
        state = result["state"]
        best_state, _ = ckpts.restore_best(state)
        test = classification_metrics(best_state, splits.test, config.eval_batch_size)
        cm_image = viz.confusion_matrix_image(
            np.array(test["confusion_matrix"]), f"{experiment}: test confusion matrix"
        )
        final_step = int(state.step)
        writer.image("test/confusion_matrix", final_step, cm_image)
        viz.save_png(cm_image, workdir / "confusion_matrix.png")
        writer.hparams(flat_hparams(config), {
            "hparam/test_accuracy": test["accuracy"],
            "hparam/test_f1_macro": test["f1_macro"],
            "hparam/test_loss": test["loss"],
            "hparam/best_val_accuracy": result["best"]["val_accuracy"],
        })
    summary = {
        "experiment": experiment,
        "config": config.to_dict(),
        "model": {"name": config.model, "parameters": count_params(state.params)},
        "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "test": test,
        "evaluated_checkpoint": {"kind": "best_val_accuracy", **result["best"]},
        "history": result["history"],
        "train_seconds": result["train_seconds"],
        "first_step_seconds": result["first_step_seconds"],
        "devices": describe_devices(),
        "versions": {"jax": jax.__version__, "flax": _version("flax"), "optax": optax.__version__},
        **(extra or {}),
    }
    write_json(workdir / "metrics.json", summary)
    return {**summary, "state": state}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
