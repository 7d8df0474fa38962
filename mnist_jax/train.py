"""Train state, pure jitted steps, and the fit loop with checkpoints and logging.

The step is a pure function `state, batch -> state, metrics`, jitted once
per run with the shardings of `mnist_jax.parallel` (batch split across the
devices, state replicated). Where the training set fits on the devices, an
epoch runs as `lax.scan` over steps that gather their batches there; else
batches come from the host, one call per step. Randomness is stateless: the state holds one root key, and step `s`
uses `fold_in(key, s)` for its dropout and noise, so a run resumed from any
checkpoint replays exactly the steps it would have taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from mnist_jax import checkpoints, figures, metrics as metrics_lib, parallel, pipeline, precision, summaries, tasks
from mnist_jax.data import Split, Splits
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.tasks import StepConfig

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
# "device": the training set lives on the devices and steps run in lax.scan;
# "host": batches gathered on the host, one jitted call a step;
# "auto": "device" on GPU and TPU where the set fits (parallel.fits_on_devices),
#   "host" on CPU, where XLA (jaxlib 0.10) runs a convolution inside a
#   while loop ~85x slower than outside one, so a scanned CNN step ~20x
#   slower than a dispatched one (experiments.benchmark; README,
#   "Performance"), and dispatch costs little.
DATA_PLACEMENTS = ("auto", "device", "host")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's numbers.

    Defaults are report 004's CNN settings.
    """

    model: str = "cnn"
    task: str = "classify"  # See mnist_jax.tasks.
    input_norm: str = "mnist"  # "mnist" statistics, or "unit": pixels in [0, 1].
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    learning_rate: float = 1e-3
    # "adam": torch.optim.Adam, weight decay as L2 added to the gradient;
    # "adamw": decoupled weight decay (torch.optim.AdamW);
    # "sgd": torch.optim.SGD with `momentum`, L2 as Adam's.
    optimizer: str = "adam"
    weight_decay: float = 1e-5
    momentum: float = 0.9
    # "cosine": from learning_rate to 0 over the run, per step; "onecycle":
    # up to learning_rate over the first 25 % of the steps, then down to ~0
    # (torch.optim.lr_scheduler.OneCycleLR's cosine form).
    schedule: str = "constant"
    # Top-level parameter groups that train; the others stay frozen
    # (optax.set_to_zero). Empty: everything trains.
    trainable: tuple[str, ...] = ()
    recon_weight: float = 1.0  # "classify_decode": CE + recon_weight * MSE.
    # Compute dtype: "float32", or "bfloat16" with float32 parameters,
    # optimizer state and loss (mnist_jax.precision).
    dtype: str = "float32"
    data_placement: str = "auto"  # One of DATA_PLACEMENTS.
    seed: int = 0
    # Seed of the train/validation split; None: `seed`. A sweep fixes it, so
    # that trials with other seeds are all scored on one validation set.
    split_seed: int | None = None
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.data_placement not in DATA_PLACEMENTS:
            raise ValueError(f"unknown data_placement {self.data_placement!r}; choose one of {DATA_PLACEMENTS}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        object.__setattr__(self, "trainable", tuple(self.trainable))
        self.step_config()  # Validates task, input_norm and recon_weight.

    @property
    def data_seed(self) -> int:
        """The seed that splits the data (split_seed, else seed)."""
        return self.seed if self.split_seed is None else self.split_seed

    def step_config(self) -> StepConfig:
        return StepConfig(task=self.task, input_norm=self.input_norm, noise=self.noise,
                          recon_weight=self.recon_weight, dtype=self.dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrainState(train_state.TrainState):
    """params, opt_state, step (from Flax) + batch-norm statistics + root key."""

    batch_stats: Any
    key: jax.Array  # uint32[2]; step s draws from fold_in(key, s).


def adam_l2(learning_rate, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.Adam with weight_decay: L2 added to the gradient, then Adam."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def sgd_l2(learning_rate, weight_decay: float, momentum: float) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum=m, weight_decay=wd): buf = m * buf + g + wd * p."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None))


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int | None = None):
    """A constant rate, or one that follows the run's steps (see TrainConfig.schedule)."""
    if config.schedule == "constant":
        return config.learning_rate
    if steps_per_epoch is None:
        raise ValueError(f"a {config.schedule} schedule needs steps_per_epoch")
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, config.learning_rate, pct_start=0.25)
    return optax.cosine_decay_schedule(config.learning_rate, total)


def make_optimizer(config: TrainConfig, steps_per_epoch: int | None = None) -> optax.GradientTransformation:
    """The config's optimizer; parameter groups not in `config.trainable` are frozen."""
    # Hyperparameters live in the optimizer state as arrays: the current
    # learning rate is logged from there.
    lr = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        tx = optax.inject_hyperparams(adam_l2)(learning_rate=lr, weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        tx = optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=config.weight_decay)
    else:
        tx = optax.inject_hyperparams(sgd_l2, static_args="momentum")(
            learning_rate=lr, weight_decay=config.weight_decay, momentum=config.momentum)
    if not config.trainable:
        return tx
    trainable = set(config.trainable)

    def groups(params):
        unknown = trainable - set(params)
        if unknown:
            raise ValueError(f"trainable names {sorted(unknown)} are not parameter groups of the "
                             f"model; it has {sorted(params)}")
        return {name: "train" if name in trainable else "frozen" for name in params}

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, groups)


def current_learning_rate(opt_state) -> float:
    """The learning rate the optimizer state last used (inject_hyperparams)."""
    found = []

    def visit(node):
        # optax's inject_hyperparams states (stateful or not) carry `hyperparams`.
        hyperparams = getattr(node, "hyperparams", None)
        if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
            found.append(hyperparams["learning_rate"])
            return True
        return False

    jax.tree.map(lambda _: None, opt_state, is_leaf=visit)
    return float(found[0]) if found else float("nan")


def set_hyperparams(opt_state, **values: float):
    """The optimizer state with new values of injected hyperparameters
    (e.g. learning_rate, weight_decay): trials that share one optimizer
    structure keep their own values in their own states."""
    def replace(node):
        hyperparams = dict(node.hyperparams)
        for name, value in values.items():
            if name not in hyperparams:
                raise ValueError(f"the optimizer has no injected hyperparameter {name!r}; "
                                 f"it has {sorted(hyperparams)}")
            hyperparams[name] = jnp.asarray(value, jnp.result_type(hyperparams[name]))
        return node._replace(hyperparams=hyperparams)

    is_injected = lambda node: isinstance(getattr(node, "hyperparams", None), dict)
    return jax.tree.map(lambda node: replace(node) if is_injected(node) else node, opt_state,
                        is_leaf=is_injected)


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
    """Initialises parameters from `seed`; sample: a float input batch, e.g. (1, 28, 28, 1)."""
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


def model_hyperparameters(model: nn.Module) -> dict:
    """The module's own fields (JSON-ready), to rebuild it from metrics.json."""
    return {f.name: list(v) if isinstance(v := getattr(model, f.name), tuple) else v
            for f in dataclasses.fields(model) if f.init and f.name not in ("parent", "name")}


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
            inputs, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"],
            **_apply_kwargs(state, mask),
        )
        outputs = precision.to_float32(outputs, spec.dtype)
        terms = tasks.per_example_terms(outputs, target, labels, spec)
        return masked_mean(terms["loss"], mask), (terms, updates)

    (_, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    return state, _masked_sums(jax.lax.stop_gradient(terms), mask)


def make_train_step(spec: StepConfig, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """The jitted step over `mesh` (default: every device): the batch split
    along its first axis, the state replicated; the old state's buffers are
    donated to the new one."""
    mesh = mesh or parallel.data_mesh()
    state_sharding, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(functools.partial(train_step, spec=spec), donate_argnums=0,
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, state_sharding))


def train_steps_on_device(state: TrainState, data: dict, indices: jax.Array, masks: jax.Array, *,
                          spec: StepConfig, mesh: jax.sharding.Mesh) -> tuple[TrainState, dict]:
    """K train steps as one `lax.scan`, gathering each batch on the device.

    data: image (N, 28, 28, 1) uint8 (or float features), label (N,) int32,
      replicated on every device.
    indices, masks: (K, B) example indices and padding mask of each step's
      batch, split along B.
    Returns the state after K steps and each step's metric sums, stacked (K,).
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
    return jax.jit(functools.partial(train_steps_on_device, spec=spec, mesh=mesh), donate_argnums=0,
                   in_shardings=(replicated, replicated, steps_sharding, steps_sharding),
                   out_shardings=(replicated, replicated))


def predict(state: TrainState, inputs: jax.Array, dtype: str = "float32"):
    """The model's outputs in inference mode (running BN statistics, no
    dropout), computed in `dtype` and returned as float32."""
    params = precision.to_compute(state.params, dtype)
    outputs = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                             precision.to_compute(inputs, dtype), train=False)
    return precision.to_float32(outputs, dtype)


def eval_step(state: TrainState, batch: dict, *, spec: StepConfig) -> dict:
    """Metric sums of a batch (no noise added), plus predicted classes where
    the task classifies. A batch's "target" (the clean images of noisy
    inputs) is what reconstructions are scored against; else the input is."""
    inputs, target = tasks.model_inputs(batch["image"], None, spec)
    if "target" in batch:
        target = pipeline.to_unit_range(batch["target"])
    outputs = predict(state, inputs, spec.dtype)
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
    names = {"loss_sum": "loss", "correct_sum": "accuracy", "mse_sum": "mse", "psnr_sum": "psnr",
             "ssim_sum": "ssim", "cross_entropy_sum": "cross_entropy"}
    return {names[k]: float(v) / count for k, v in sums.items() if k in names}


@functools.lru_cache(maxsize=None)
def make_eval_step(spec: StepConfig, mesh: jax.sharding.Mesh) -> Callable:
    """The jitted eval step over `mesh`; results replicated on every device."""
    replicated = parallel.replicated(mesh)
    return jax.jit(functools.partial(eval_step, spec=spec),
                   in_shardings=(replicated, parallel.batch_sharded(mesh)), out_shardings=replicated)


def evaluate(state: TrainState, split: Split, batch_size: int, spec: StepConfig = StepConfig(),
             mesh: jax.sharding.Mesh | None = None) -> dict:
    """Mean loss and task metrics over a whole split (no example dropped);
    "predictions" (N,) too where the task classifies.

    The batch size is rounded up to a multiple of the device count: batches
    are padded and masked, so the numbers do not change.
    """
    mesh = mesh or parallel.data_mesh()
    step = make_eval_step(spec, mesh)
    batches = pipeline.iterate_batches(split.images, split.labels, parallel.round_up(batch_size, mesh),
                                       targets=split.targets if spec.reconstructs else None)
    outputs = jax.device_get([step(state, parallel.shard_batch(batch, mesh)) for batch in batches])
    sums = {k: sum(o[k] for o in outputs) for k in outputs[0] if k != "predictions"}
    result = metric_means(sums)
    if spec.classifies:
        result["predictions"] = np.concatenate([o["predictions"] for o in outputs])[: len(split)]
    return result


def score_split(state: TrainState, split: Split, batch_size: int, spec: StepConfig,
                mesh: jax.sharding.Mesh | None = None, keep_predictions: bool = False) -> dict:
    """evaluate(), plus macro F1, the per-class report and the confusion
    matrix where the task classifies; the "predictions" (N,) too with
    `keep_predictions`."""
    result = evaluate(state, split, batch_size, spec, mesh)
    if not spec.classifies:
        return result
    predictions = result.pop("predictions")
    cm = metrics_lib.confusion_matrix(split.labels, predictions)
    report = metrics_lib.classification_report(cm)
    if keep_predictions:
        result["predictions"] = predictions
    return {**result, "f1_macro": report["f1_macro"], "per_class": report["per_class"],
            "confusion_matrix": cm.tolist()}


class ResumeError(Exception):
    """A run cannot be resumed as asked."""


class NonFiniteLossError(FloatingPointError):
    """The training loss or the parameters became NaN or infinite; nothing
    from that step on was saved."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step


# Config fields a resumed run may change without changing its numbers
# (data_placement: beyond float rounding).
RESUMABLE_CHANGES = ("epochs", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                     "eval_batch_size", "data_placement")


def config_differences(saved: dict, config: TrainConfig) -> str:
    """"field: saved X, now Y" for each field that changes a run's numbers; "" if none."""
    current = json.loads(json.dumps(config.to_dict()))
    # Fields added since the checkpoint was written read as their defaults.
    saved = {**json.loads(json.dumps(TrainConfig().to_dict())), **saved}
    free = set(RESUMABLE_CHANGES)
    if config.schedule != "constant":
        free.discard("epochs")  # The schedule's length is the run's length.
    changed = sorted(
        k for k in set(saved) | set(current)
        if k not in free and saved.get(k) != current.get(k)
    )
    return ", ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    detail = config_differences(saved, config)
    if detail:
        raise ResumeError(
            f"cannot resume: the config differs from the checkpoint's ({detail}). "
            "Resume with the same settings, or start a new run in another --workdir."
        )


def restore_best_state(config: TrainConfig, model: nn.Module, workdir: str | pathlib.Path,
                       mesh: jax.sharding.Mesh | None = None,
                       sample_shape: tuple[int, ...] = (1, 28, 28, 1)) -> TrainState:
    """The best checkpoint of a run in `workdir` that was trained with `config`.

    Raises ResumeError when `workdir` holds no checkpoint, or one trained
    with other settings.
    """
    workdir = pathlib.Path(workdir).expanduser()
    if not checkpoints.has_checkpoints(workdir):
        raise ResumeError(f"{workdir} holds no checkpoints of a training run")
    mesh = mesh or parallel.data_mesh()
    # steps_per_epoch only sets a cosine schedule's length, not the state's structure.
    state = create_train_state(model, make_optimizer(config, steps_per_epoch=1), config.seed,
                               jnp.zeros(sample_shape, jnp.float32))
    with checkpoints.RunCheckpoints(workdir, max_to_keep=config.keep_checkpoints) as ckpts:
        state, meta = ckpts.restore_best(parallel.replicate(state, mesh))
    detail = config_differences(meta["config"], config)
    if detail:
        raise ResumeError(f"the run in {workdir} was trained with other settings ({detail})")
    return state


class _EpochSums:
    """Running sums of the training metrics of the current epoch (host side)."""

    def __init__(self, sums: dict | None = None):
        self.sums = dict(sums or {})

    def add(self, step_metrics: list[dict]) -> tuple[float, float]:
        """Adds fetched step metrics; returns this window's (loss sum, count)."""
        window = {k: sum(float(m[k]) for m in step_metrics) for k in step_metrics[0]} if step_metrics else {}
        for k, v in window.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        return window.get("loss_sum", 0.0), window.get("count", 0.0)

    def means(self) -> dict:
        return metric_means(self.sums) if self.sums else {}


def write_atomically(path: pathlib.Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it
    to `path`: a reader (or a resumed run) never sees half a file."""
    with tempfile.NamedTemporaryFile("wb" if binary else "w", dir=path.parent, suffix=".tmp",
                                     delete=False) as f:
        write(f)
    os.replace(f.name, path)


def write_json(path: pathlib.Path, payload: dict) -> None:
    """Writes JSON atomically (write_atomically)."""
    write_atomically(path, lambda f: json.dump(payload, f, indent=2))


def load_pretrained(state: TrainState, pretrained: dict) -> TrainState:
    """Replaces parameters with pretrained values of the same shapes.

    `pretrained` is a nested dict like the params (e.g. {"encoder": ...});
    leaves it leaves out keep their initial values (e.g. a new final layer).
    """
    def merge(initial, given, path):
        if not isinstance(initial, dict):
            if np.shape(initial) != np.shape(given):
                raise ValueError(f"pretrained {'/'.join(path)} has shape {np.shape(given)}, "
                                 f"the model expects {np.shape(initial)}")
            # A copy: the train step donates the state's buffers, which must
            # not take the caller's arrays (shared by several runs) with them.
            return jnp.array(given, initial.dtype, copy=True)
        if not isinstance(given, dict) or set(given) - set(initial):
            unknown = sorted(set(given) - set(initial)) if isinstance(given, dict) else given
            raise ValueError(f"pretrained {'/'.join(path) or 'params'} has {unknown} that the model "
                             f"lacks; the model has {sorted(initial)}")
        return {k: merge(v, given[k], path + (k,)) if k in given else v for k, v in initial.items()}

    params = merge(dict(state.params), pretrained, ())
    return state.replace(params=params, opt_state=state.tx.init(params))


def _is_better(value: float, best: dict | None, key: str, mode: str) -> bool:
    if best is None:
        return True
    return value > best[key] if mode == "max" else value < best[key]


def _chunks(offset: int, steps_per_epoch: int, length: int) -> list[tuple[int, int]]:
    """[begin, end) step ranges of an epoch from `offset`, cut at multiples of `length`."""
    first_cut = (offset // length + 1) * length
    bounds = [offset, *range(first_cut, steps_per_epoch, length), steps_per_epoch]
    return list(zip(bounds[:-1], bounds[1:]))


def _per_step(first_step: int, metrics: dict) -> list[tuple[int, dict]]:
    """(global step, metric sums) of one fetched step, or of K stacked ones."""
    if np.ndim(next(iter(metrics.values()))) == 0:
        return [(first_step, metrics)]
    count = len(next(iter(metrics.values())))
    return [(first_step + i, {k: v[i] for k, v in metrics.items()}) for i in range(count)]


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _nonfinite_message(what: str, value: str, step: int, steps_per_epoch: int, config: TrainConfig,
                       ckpts: checkpoints.RunCheckpoints, last_saved: int | None) -> str:
    kept = (f"The last good checkpoint, step {last_saved}, is intact in {ckpts.latest.directory / str(last_saved)}."
            if last_saved is not None else "No checkpoint had been saved yet.")
    return (f"{what} became {value} at step {step} (epoch {(step - 1) // steps_per_epoch + 1}); "
            f"training stopped and nothing from that step on was saved. {kept} The usual cause is a "
            f"learning rate too high for the model (this run: {config.learning_rate:g}): start a new run "
            "in another --workdir with a lower --learning-rate.")


def _check_finite_losses(steps: list[tuple[int, dict]], steps_per_epoch: int, config: TrainConfig,
                         ckpts: checkpoints.RunCheckpoints, last_saved: int | None) -> None:
    """Raises NonFiniteLossError at the first fetched step whose loss is NaN or infinite."""
    for step, sums in steps:
        if not np.isfinite(sums["loss_sum"]):
            loss = float(sums["loss_sum"]) / max(float(sums["count"]), 1.0)
            raise NonFiniteLossError(_nonfinite_message(
                "the training loss", str(loss), step, steps_per_epoch, config, ckpts, last_saved))


@contextlib.contextmanager
def stop_signals_caught():
    """While training: SIGINT and SIGTERM are noted (the yielded list of
    signal numbers) for the loop to save a checkpoint and stop; a second
    one gets the previous handler (Ctrl-C twice stops at once)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # Python runs handlers in the main thread only.
        return
    previous = {}

    def note(signum, frame):
        received.append(signum)
        signal.signal(signum, previous[signum])
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.signal(signum, note)
        previous[signum] = signal.SIG_DFL if handler is None else handler
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resolve_data_placement(config: TrainConfig, train: Split, mesh: jax.sharding.Mesh) -> str:
    """"device" or "host": where the training set lives during the run (see DATA_PLACEMENTS)."""
    if config.data_placement != "auto":
        return config.data_placement
    if mesh.devices.flat[0].platform == "cpu":
        return "host"
    nbytes = train.images.nbytes + train.labels.nbytes
    return "device" if parallel.fits_on_devices(nbytes, mesh) else "host"


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
    pretrained: dict | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Trains `model`, saving the latest and best checkpoints into `ckpts`.

    The best checkpoint is the one with the best validation accuracy (tasks
    that classify) or the lowest validation loss (reconstruction). A latest
    checkpoint is saved every `checkpoint_every_steps` steps into each epoch
    and at its end.

    Faults: step losses are checked whenever they are fetched (every log
    and checkpoint) and the parameters before every save; a NaN or an
    infinity raises NonFiniteLossError naming the step and the last good
    checkpoint, and nothing after it is saved. SIGINT and SIGTERM (main
    thread) finish the current step call, save a latest checkpoint and
    raise TrainingInterrupted; a second signal gets the previous handler.

    Args:
      resume: continue from the newest checkpoint, exactly where it stopped
        (mid-epoch too).
      on_step: called with the global step after each call of the step
        function: every step with the data on the host, every scan with it
        on the device (tests use it to interrupt a run).
      pretrained: top-level parameter groups to start from (see
        `load_pretrained`); ignored on resume, where the checkpoint has them.
      mesh: the devices to train on (default: all of them).

    Returns:
      {"state", "history", "best", "train_seconds", "compile_seconds",
       "first_step_seconds", "data_placement"}: train_seconds leaves out
      compile_seconds, the ahead-of-time compilation of the train programs
      and the evaluation step.
    """
    train = splits.train
    spec = config.step_config()
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "training batch size")
    steps_per_epoch = pipeline.num_batches(len(train), config.batch_size)
    select_key, select_mode = spec.selection

    sample = jnp.zeros((1, *train.images.shape[1:]), jnp.float32)
    state = create_train_state(model, make_optimizer(config, steps_per_epoch), config.seed, sample)
    if pretrained:
        state = load_pretrained(state, pretrained)
    # Replicated before any restore: Orbax restores into the target's shardings.
    state = parallel.replicate(state, mesh)
    _, _, shuffle_key = run_keys(config.seed)
    meta = {"history": [], "best": None, "epoch_sums": {}, "train_seconds": 0.0}

    if resume:
        if ckpts.latest_step() is None:
            raise ResumeError(f"--resume: no checkpoint in {ckpts.latest.directory} to resume from.")
        try:
            state, saved = ckpts.restore_latest(state)  # Damaged newer ones are set aside.
        except checkpoints.CheckpointError as e:
            raise ResumeError(f"--resume: {e}") from e
        _check_resumable(saved["config"], config)
        meta.update({k: saved[k] for k in meta})
        log.info("Resumed at step %d", int(state.step))

    placement = resolve_data_placement(config, train, mesh)
    print(f"training data on the {placement}: " + (
        f"lax.scan over up to {config.checkpoint_every_steps} steps a call" if placement == "device"
        else "one jitted call a step"), flush=True)
    start = int(state.step)
    if placement == "device":
        data = parallel.replicate({"image": train.images, "label": train.labels}, mesh)
        scan_fn = _AheadOfTime(make_device_train_steps(spec, mesh))
        chunk_length = config.checkpoint_every_steps
        # Every scan length the run will use (the first epoch's may start
        # mid-way, on resume), compiled before the clock starts.
        first_offset = start % steps_per_epoch
        for length in sorted({e - b for offset in (first_offset, 0)
                              for b, e in _chunks(offset, steps_per_epoch, chunk_length)}):
            steps_input = parallel.shard_steps(pipeline.batch_indices(
                np.zeros(length * config.batch_size, np.int64), config.batch_size), mesh)
            scan_fn.compile(state, data, *steps_input)
    else:
        step_fn = _AheadOfTime(make_train_step(spec, mesh))
        chunk_length = 1
        step_fn.compile(state, parallel.shard_batch(next(pipeline.iterate_batches(
            train.images[: config.batch_size], train.labels[: config.batch_size], config.batch_size)), mesh))
    compile_seconds = (scan_fn if placement == "device" else step_fn).seconds
    # The evaluation step too: one example is padded to a full eval batch.
    compile_start = time.perf_counter()
    evaluate(state, splits.val.take(np.arange(1)), config.eval_batch_size, spec, mesh)
    compile_seconds += time.perf_counter() - compile_start

    sums = _EpochSums(meta["epoch_sums"])
    pending: list[tuple[int, dict]] = []  # (first step, device-side metric sums)
    unlogged: list[tuple[int, dict]] = []  # (step, host-side metric sums)
    first_step_seconds = None
    clock = time.perf_counter()
    elapsed_before = meta["train_seconds"]

    def snapshot() -> dict:
        return {**meta, "config": config.to_dict(), "epoch_sums": dict(sums.sums),
                "train_seconds": elapsed_before + time.perf_counter() - clock}

    last_saved = start if resume else None  # The newest good latest checkpoint.

    def fetch_pending() -> None:
        nonlocal pending
        for first, fetched in zip([p[0] for p in pending], jax.device_get([p[1] for p in pending])):
            steps = _per_step(first, fetched)
            _check_finite_losses(steps, steps_per_epoch, config, ckpts, last_saved)
            unlogged.extend(steps)
        pending = []

    def prepare_save(step: int) -> None:
        """Fetches every step's metrics into the epoch's sums; raises
        NonFiniteLossError unless the losses and parameters are finite."""
        nonlocal unlogged
        fetch_pending()
        sums.add([m for _, m in unlogged])
        unlogged = []
        if not bool(_all_finite(state.params)):
            raise NonFiniteLossError(
                _nonfinite_message("the parameters", "NaN or infinite", step, steps_per_epoch, config, ckpts, last_saved))

    def save_latest(step: int) -> None:
        nonlocal last_saved
        prepare_save(step)
        ckpts.save_latest(step, state, snapshot())
        last_saved = step

    def stop_if_asked(step: int) -> None:
        """After SIGINT/SIGTERM: a checkpoint of this step, then TrainingInterrupted."""
        if not stop_signals:
            return
        if last_saved != step:
            save_latest(step)
        ckpts.wait()
        name = signal.Signals(stop_signals[0]).name
        raise TrainingInterrupted(
            f"{name} received: stopped at step {step} (epoch {step / steps_per_epoch:.2f} of "
            f"{config.epochs}) after saving checkpoint {ckpts.latest.directory / str(step)}; "
            "run again with --resume to continue.", stop_signals[0], step)

    with stop_signals_caught() as stop_signals:
        for epoch in range(start // steps_per_epoch, config.epochs):
            epoch_start = epoch * steps_per_epoch
            offset = start - epoch_start if epoch == start // steps_per_epoch else 0
            order = pipeline.epoch_order(shuffle_key, epoch, len(train))
            indices, masks = pipeline.batch_indices(order, config.batch_size)  # (steps, B) each
            bar = tqdm(total=steps_per_epoch, initial=offset, disable=not progress,
                       desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False)
            for begin, end in _chunks(offset, steps_per_epoch, chunk_length):
                if placement == "device":
                    steps_input = parallel.shard_steps((indices[begin:end], masks[begin:end]), mesh)
                    state, step_metrics = scan_fn(state, data, *steps_input)
                else:
                    batch = pipeline.gather_batch(train.images, train.labels, indices[begin], masks[begin])
                    state, step_metrics = step_fn(state, parallel.shard_batch(batch, mesh))
                pending.append((epoch_start + begin + 1, step_metrics))
                step = epoch_start + end
                if first_step_seconds is None:
                    jax.block_until_ready(step_metrics)
                    first_step_seconds = time.perf_counter() - clock
                end_of_epoch = end == steps_per_epoch
                log_steps = [s for s in range(epoch_start + begin + 1, step + 1) if s % config.log_every_steps == 0]
                if end_of_epoch and step not in log_steps:
                    log_steps.append(step)
                if log_steps:
                    fetch_pending()
                    for log_step in log_steps:
                        window = [m for s, m in unlogged if s <= log_step]
                        unlogged = [(s, m) for s, m in unlogged if s > log_step]
                        loss, count = sums.add(window)
                        writer.scalars(log_step, {"train/loss_step": loss / max(count, 1)})
                    bar.set_postfix(loss=f"{sums.means().get('loss', float('nan')):.4f}")
                if end % config.checkpoint_every_steps == 0 and not end_of_epoch:
                    save_latest(step)
                bar.update(end - begin)
                if on_step is not None:
                    on_step(step)
                if not end_of_epoch:  # At the end, after the epoch's validation.
                    stop_if_asked(step)
            bar.close()

            val = evaluate(state, splits.val, config.eval_batch_size, spec, mesh)
            val.pop("predictions", None)
            record = {
                "epoch": epoch + 1,
                "step": step,
                **{f"train_{k}": v for k, v in sums.means().items()},
                **{f"val_{k}": v for k, v in val.items()},
                "learning_rate": current_learning_rate(state.opt_state),
            }
            meta["history"].append(record)
            sums = _EpochSums()
            writer.scalars(step, {
                k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k: v
                for k, v in record.items() if k not in ("epoch", "step")
            })
            shown = "  ".join(
                f"{k.replace('_', ' ')} {v:.4f}" for k, v in record.items()
                if k.startswith(("train_", "val_")) and not k.endswith(("cross_entropy", "psnr"))
            )
            print(f"epoch {epoch + 1:>3}/{config.epochs}  {shown}", flush=True)
            prepare_save(step)
            # "best" before "latest": a run killed between the two replays
            # the epoch from an older latest and finds this best saved.
            if _is_better(record[select_key], meta["best"], select_key, select_mode):
                meta["best"] = {"epoch": epoch + 1, "step": step, select_key: record[select_key]}
                ckpts.save_best(step, state, snapshot())
            save_latest(step)
            stop_if_asked(step)
    ckpts.wait()
    train_seconds = elapsed_before + time.perf_counter() - clock
    return {
        "state": state,
        "history": meta["history"],
        "best": meta["best"],
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "first_step_seconds": first_step_seconds,
        "data_placement": placement,
    }


class _AheadOfTime:
    """A jitted function's programs compiled before they run, one per input
    shape (e.g. per scan length), so that training time can leave
    compilation out; `seconds` adds up the compile time."""

    def __init__(self, jitted: Callable):
        self.jitted, self.programs, self.seconds = jitted, {}, 0.0

    @staticmethod
    def _key(args) -> tuple:
        # The state (args[0]) keeps its shapes through a run: only the inputs vary.
        return tuple((x.shape, x.dtype) for x in jax.tree.leaves(args[1:]))

    def compile(self, *args):
        key = self._key(args)
        if key not in self.programs:
            start = time.perf_counter()
            self.programs[key] = self.jitted.lower(*args).compile()
            self.seconds += time.perf_counter() - start
        return self.programs[key]

    def __call__(self, *args):
        return self.compile(*args)(*args)


def flat_hparams(config: TrainConfig) -> dict:
    """The config as flat scalars for TensorBoard's HParams dashboard."""
    flat = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, (list, tuple)):
            flat[key] = ",".join(map(str, value)) or "all"
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
    pretrained: dict | None = None,
    mesh: jax.sharding.Mesh | None = None,
    test_pictures: np.ndarray | None = None,
) -> dict:
    """Trains, scores the best checkpoint on the test set, and writes
    `metrics.json`, the figures of mnist_jax.figures (curves, confusion
    matrix, misclassified images, reconstructions, projector embedding) and
    TensorBoard hparams (process 0 only, where several run).

    Without `resume`, a `workdir` that already holds checkpoints is refused,
    so nothing saved is overwritten. `mesh`: the devices (default: all).
    `test_pictures`: the test images as uint8 pictures, where `splits.test`
    holds something else (cached features), for the figures.

    Returns the contents of metrics.json plus the final "state" and the
    "best_state" that was scored.
    """
    workdir = pathlib.Path(workdir).expanduser()
    if not resume and checkpoints.has_checkpoints(workdir):
        raise ResumeError(
            f"{workdir} already holds a run's checkpoints. Pass --resume to continue it, "
            "or choose another --workdir; nothing was changed."
        )
    spec = config.step_config()
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "training batch size")  # Before any file.
    devices = parallel.describe(mesh)
    is_main = parallel.is_main_process()
    print(f"devices: {parallel.format_devices(devices)}; compute {config.dtype}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with checkpoints.RunCheckpoints(workdir, max_to_keep=config.keep_checkpoints) as ckpts, \
            summaries.MetricWriter(workdir / "tensorboard", enabled=is_main) as writer:
        result = fit(config, model, splits, ckpts, writer, resume=resume, on_step=on_step,
                     progress=progress, pretrained=pretrained, mesh=mesh)
        state = result["state"]
        best_state, _ = ckpts.restore_best(state)
        test = score_split(best_state, splits.test, config.eval_batch_size, spec, mesh,
                           keep_predictions=True)
        predictions = test.pop("predictions", None)
        if is_main:
            figures.write_run_figures(
                workdir, writer, experiment=experiment, state=best_state, test=splits.test, spec=spec,
                history=result["history"], step=int(state.step), predictions=predictions,
                confusion_matrix=test.get("confusion_matrix"), test_pictures=test_pictures)
        select_key = spec.selection[0]
        writer.hparams(flat_hparams(config), {
            **{f"hparam/test_{k}": v for k, v in test.items() if isinstance(v, float)},
            f"hparam/best_{select_key}": result["best"][select_key],
        })
    summary = {
        "experiment": experiment,
        "config": config.to_dict(),
        "model": {"name": config.model, "hyperparameters": model_hyperparameters(model),
                  "parameters": count_params(state.params),
                  "trainable_parameters": count_params(
                      {k: v for k, v in state.params.items()
                       if not config.trainable or k in config.trainable})},
        "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "test": test,
        "evaluated_checkpoint": {"kind": f"best_{select_key}", **result["best"]},
        "history": result["history"],
        "train_seconds": result["train_seconds"],
        "compile_seconds": result["compile_seconds"],
        "first_step_seconds": result["first_step_seconds"],
        "devices": devices,
        "data_placement": result["data_placement"],
        "versions": {"jax": jax.__version__, "flax": _version("flax"), "optax": optax.__version__},
        **(extra or {}),
    }
    if is_main:
        write_json(workdir / "metrics.json", summary)
    return {**summary, "state": state, "best_state": best_state}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
