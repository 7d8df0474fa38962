"""The train state and the pure jitted steps: train, evaluate, infer.

The step is a pure function `state, batch -> state, metrics`, jitted once
per run with the shardings of `mnist_jax.parallel` (batch split across the
devices, state replicated). Batches are padded to a fixed size and masked,
so every step of a run shares one compiled program and padding never
enters a loss, a gradient or batch-norm statistics. Randomness is
stateless: the state holds one root key, and step `s` uses
`fold_in(key, s)` for its dropout, augmentation and noise, so a run resumed
from any checkpoint replays exactly the steps it would have taken.

With `ema_decay` the state also holds an exponential moving average of the
weights (parameters and batch-norm statistics), updated after every step;
`averaged(state)` is the state evaluated in its place.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from mnist_jax import metrics as metrics_lib
from mnist_jax import parallel, pipeline, precision, tasks
from mnist_jax.data import Split
from mnist_jax.tasks import StepConfig


class TrainState(train_state.TrainState):
    """params, opt_state, step (from Flax) + batch-norm statistics + root key
    + the weights' moving average ({} without one)."""

    batch_stats: Any
    key: jax.Array  # uint32[2]; step s draws from fold_in(key, s).
    ema: Any = dataclasses.field(default_factory=dict)  # {"params", "batch_stats"}, or {}.


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
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    sample: jax.Array,
    *,
    ema: bool = False,
) -> TrainState:
    """Initialises parameters from `seed`, in one jitted program, which the
    compilation cache keeps between runs (mnist_jax.caches): run eagerly,
    the initialisers and the optimizer's zeros are each an operation to
    compile, seconds in all. The values are the same bits either way.

    Args:
      model: the linen module.
      tx: the optimizer.
      seed: the run's seed (run_keys): the initial parameters and the state's key.
      sample: a float input batch, e.g. (1, 28, 28, 1).
      ema: also a moving average of the weights that starts at the initial ones.

    Returns:
      The TrainState at step 0.
    """
    init_key, train_key, _ = run_keys(seed)

    def create(init_key, train_key, sample):
        variables = model.init(init_key, sample, train=False)
        state = TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
            key=train_key,
        )
        return state.replace(ema=_weights(state, copy=True)) if ema else state

    state = jax.jit(create)(init_key, train_key, sample)
    # Flax starts `step` as the Python int 0; as an array from the start, the
    # first and later steps share one compiled program.
    return state.replace(step=jnp.zeros((), jnp.int32))


def load_pretrained(state: TrainState, pretrained: dict) -> TrainState:
    """Replaces parameters with pretrained values of the same shapes.

    `pretrained` is a nested dict like the params (e.g. {"encoder": ...});
    leaves it leaves out keep their initial values (e.g. a new final layer).
    """

    def merge(initial, given, path):
        if not isinstance(initial, dict):
            if np.shape(initial) != np.shape(given):
                raise ValueError(
                    f"pretrained {'/'.join(path)} has shape {np.shape(given)}, "
                    f"the model expects {np.shape(initial)}"
                )
            # A copy: the train step donates the state's buffers, which must
            # not take the caller's arrays (shared by several runs) with them.
            return jnp.array(given, initial.dtype, copy=True)
        if not isinstance(given, dict) or set(given) - set(initial):
            unknown = sorted(set(given) - set(initial)) if isinstance(given, dict) else given
            raise ValueError(
                f"pretrained {'/'.join(path) or 'params'} has {unknown} that the model "
                f"lacks; the model has {sorted(initial)}"
            )
        return {k: merge(v, given[k], path + (k,)) if k in given else v for k, v in initial.items()}

    params = merge(dict(state.params), pretrained, ())
    state = state.replace(params=params, opt_state=state.tx.init(params))
    return state.replace(ema=_weights(state, copy=True)) if state.ema else state


def _weights(state: TrainState, copy: bool = False) -> dict:
    """The state's weights, as its moving average holds them; `copy`: in
    buffers of their own (what an average starts from: a step donates the
    state's buffers)."""
    weights = {"params": state.params, "batch_stats": state.batch_stats}
    return jax.tree.map(jnp.copy, weights) if copy else weights


def averaged(state: TrainState) -> TrainState:
    """The state with its moving-average weights in place of the raw ones
    (the state itself without an average): what a run with `ema_decay`
    validates, selects, tests and predicts with."""
    if not state.ema:
        return state
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def update_average(state: TrainState, decay: float) -> TrainState:
    """The moving average after the state's latest step. Its decay grows to
    `decay` as min(decay, (1 + t) / (10 + t)) at step t (as TensorFlow's
    ExponentialMovingAverage with num_updates), so the early average is not
    held back by the random initial weights."""
    t = state.step.astype(jnp.float32)
    rate = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return state.replace(ema=optax.incremental_update(_weights(state), state.ema, 1.0 - rate))


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _masked_sums(terms: dict, mask: jax.Array) -> dict:
    """{name}_sum of each per-example term over the real examples, plus count."""
    sums = {f"{k}_sum": jnp.sum(jnp.where(mask, v, 0.0)) for k, v in terms.items()}
    return {**sums, "count": jnp.sum(mask).astype(jnp.float32)}


def _apply_kwargs(state: TrainState, mask: jax.Array) -> dict:
    # Only models with batch norm take a mask: it keeps padding out of the statistics.
    return {"mask": mask} if state.batch_stats else {}


def train_step(state: TrainState, batch: dict, *, spec: StepConfig) -> tuple[TrainState, dict]:
    """One optimizer step on a (padded, masked) batch.

    batch: image (B, 28, 28, 1) uint8 (or float features), label (B,) int32,
      mask (B,) bool.
    Returns the new state and sums over the real examples ("loss_sum",
    "count", and the task's metric sums).
    """
    dropout_key, noise_key = step_keys(state.key, state.step)
    inputs, target = tasks.model_inputs(batch["image"], noise_key, spec)
    inputs = precision.to_compute(inputs, spec.dtype)
    labels, mask = batch["label"], batch["mask"]

    def loss_fn(params):
        outputs, updates = state.apply_fn(
            {"params": precision.to_compute(params, spec.dtype), "batch_stats": state.batch_stats},
            inputs,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
            **_apply_kwargs(state, mask),
        )
        outputs = precision.to_float32(outputs, spec.dtype)
        terms = tasks.per_example_terms(outputs, target, labels, spec, train=True)
        return masked_mean(terms["loss"], mask), (terms, updates)

    (_, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    if spec.ema_decay:
        state = update_average(state, spec.ema_decay)
    return state, _masked_sums(jax.lax.stop_gradient(terms), mask)


def make_train_step(spec: StepConfig, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """The jitted step over `mesh` (default: every device): the batch split
    along its first axis, the state replicated; the old state's buffers are
    donated to the new one."""
    mesh = mesh or parallel.data_mesh()
    state_sharding, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        functools.partial(train_step, spec=spec),
        donate_argnums=0,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, state_sharding),
    )


def train_steps_on_device(
    state: TrainState,
    data: dict,
    indices: jax.Array,
    masks: jax.Array,
    *,
    spec: StepConfig,
    mesh: jax.sharding.Mesh,
) -> tuple[TrainState, dict]:
    """K train steps as one `lax.scan`, gathering each batch on the device.

    Args:
      state: the state before the K steps.
      data: image (N, 28, 28, 1) uint8 (or float features), label (N,)
        int32, replicated on every device.
      indices: (K, B) example indices of each step's batch, split along B.
      masks: (K, B) bool padding mask of each step's batch, split along B.
      spec: the step settings.
      mesh: the devices the batches are split over.

    Returns:
      The state after K steps and each step's metric sums, stacked (K,).
    """
    batch_sharding = parallel.batch_sharded(mesh)

    def one_step(state, step_input):
        idx, mask = step_input  # (B,) each
        batch = {"image": data["image"][idx], "label": data["label"][idx], "mask": mask}
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(state, batch, spec=spec)

    return jax.lax.scan(one_step, state, (indices, masks))


def make_device_train_steps(spec: StepConfig, mesh: jax.sharding.Mesh) -> Callable:
    """`train_steps_on_device`, jitted once per scan length."""
    replicated = parallel.replicated(mesh)
    steps_sharding = parallel.steps_sharded(mesh)
    return jax.jit(
        functools.partial(train_steps_on_device, spec=spec, mesh=mesh),
        donate_argnums=0,
        in_shardings=(replicated, replicated, steps_sharding, steps_sharding),
        out_shardings=(replicated, replicated),
    )


def infer(state: TrainState, inputs: jax.Array, dtype: str = "float32"):
    """The model's outputs in inference mode (running BN statistics, no
    dropout), computed in `dtype` and returned as float32."""
    params = precision.to_compute(state.params, dtype)
    outputs = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        precision.to_compute(inputs, dtype),
        train=False,
    )
    return precision.to_float32(outputs, dtype)


def eval_step(state: TrainState, batch: dict, *, spec: StepConfig) -> dict:
    """Metric sums of a batch (no noise added), plus predicted classes where
    the task classifies. A batch's "target" (the clean images of noisy
    inputs) is what reconstructions are scored against; else the input is."""
    inputs, target = tasks.model_inputs(batch["image"], None, spec)
    if "target" in batch:
        target = pipeline.to_unit_range(batch["target"])
    outputs = infer(state, inputs, spec.dtype)
    terms = tasks.per_example_terms(outputs, target, batch["label"], spec)
    if "mse" in terms:
        terms["psnr"] = tasks.psnr(terms["mse"])
        terms["ssim"] = tasks.ssim(tasks.reconstruction(outputs, spec), target)
    result = _masked_sums(terms, batch["mask"])
    if spec.classifies:
        result["predictions"] = jnp.argmax(tasks.logits_of(outputs, spec), -1)
    return result


def metric_means(sums: dict) -> dict:
    """{"loss": ..., "accuracy": ..., "mse": ...} from {"loss_sum": ..., "count": ...}."""
    count = max(float(sums["count"]), 1.0)
    names = {
        "loss_sum": "loss",
        "correct_sum": "accuracy",
        "mse_sum": "mse",
        "psnr_sum": "psnr",
        "ssim_sum": "ssim",
        "cross_entropy_sum": "cross_entropy",
    }
    return {names[k]: float(v) / count for k, v in sums.items() if k in names}


@functools.cache
def make_eval_step(spec: StepConfig, mesh: jax.sharding.Mesh) -> Callable:
    """The jitted eval step over `mesh`; results replicated on every device."""
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(eval_step, spec=spec),
        in_shardings=(replicated, parallel.batch_sharded(mesh)),
        out_shardings=replicated,
    )


def evaluate(
    state: TrainState,
    split: Split,
    batch_size: int,
    spec: StepConfig = StepConfig(),
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Mean loss and task metrics over a whole split (no example dropped).

    Args:
      state: the state evaluated.
      split: N examples (its targets, if any, are what reconstructions are scored against).
      batch_size: rounded up to a multiple of the device count: batches are
        padded and masked, so the numbers do not change.
      spec: the step settings.
      mesh: the devices the batches are split over; None: every device.

    Returns:
      The means (metric_means); "predictions" (N,) too where the task classifies.
    """
    mesh = mesh or parallel.data_mesh()
    step = make_eval_step(spec, mesh)
    batches = pipeline.iterate_batches(
        split.images,
        split.labels,
        parallel.round_up(batch_size, mesh),
        targets=split.targets if spec.reconstructs else None,
    )
    outputs = jax.device_get([step(state, parallel.shard_batch(batch, mesh)) for batch in batches])
    sums = {k: sum(o[k] for o in outputs) for k in outputs[0] if k != "predictions"}
    result = metric_means(sums)
    if spec.classifies:
        result["predictions"] = np.concatenate([o["predictions"] for o in outputs])[: len(split)]
    return result


def score_split(
    state: TrainState,
    split: Split,
    batch_size: int,
    spec: StepConfig,
    mesh: jax.sharding.Mesh | None = None,
    keep_predictions: bool = False,
) -> dict:
    """evaluate(), plus the classification report where the task classifies.

    Args:
      state: the state scored.
      split: N examples.
      batch_size: examples per batch (see evaluate).
      spec: the step settings.
      mesh: the devices the batches are split over; None: every device.
      keep_predictions: keep the "predictions" (N,) in the result.

    Returns:
      evaluate's means; where the task classifies, "f1_macro" (macro F1),
      "per_class" (the per-class report) and "confusion_matrix" too.
    """
    result = evaluate(state, split, batch_size, spec, mesh)
    if not spec.classifies:
        return result
    predictions = result.pop("predictions")
    cm = metrics_lib.confusion_matrix(split.labels, predictions)
    report = metrics_lib.classification_report(cm)
    if keep_predictions:
        result["predictions"] = predictions
    return {
        **result,
        "f1_macro": report["f1_macro"],
        "per_class": report["per_class"],
        "confusion_matrix": cm.tolist(),
    }
