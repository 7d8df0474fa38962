"""Trials trained together: K train states stacked along a leading axis,
advanced by one jitted step on K batches (each trial shuffles by its own seed).

How the K trials run inside that step:

- "vmap": jax.vmap over the trial axis, one batched program; for GPU/TPU.
- "unroll": K copies of the single-trial step in one program. On XLA:CPU
  vmap turns each convolution into a grouped one, which runs slowly there
  (docs/sweeps.md has the measurement).
- "auto": "unroll" on CPU, "vmap" elsewhere.

Per-trial dropout rates enter the step as arrays: each trial's model is the
group's model cloned with its traced rates (models.layers.Dropout).
`TrialGroup` is what the epoch loop (mnist_jax.loop.train_members) trains
for a sweep's group, as `members.Single` is for a plain run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import parallel, pipeline
from mnist_jax.checkpoints import CheckpointPolicy
from mnist_jax.config import ResumeError, config_differences
from mnist_jax.models import get_model
from mnist_jax.optim import make_optimizer, set_hyperparams
from mnist_jax.search_space import MODEL_PREFIX, Trial, batched_fields
from mnist_jax.steps import TrainState, create_train_state, run_keys, train_step
from mnist_jax.tasks import StepConfig

STRATEGIES = ("auto", "vmap", "unroll")


def stack(trees: list) -> Any:
    """K pytrees of one structure -> one with a leading (K,) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: Any, k: int) -> Any:
    """Trial k of a stacked pytree."""
    return jax.tree.map(lambda x: x[k], tree)


def trial_count(tree: Any) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


def resolve_strategy(strategy: str, mesh: jax.sharding.Mesh) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown trial parallelism {strategy!r}; choose one of {STRATEGIES}")
    if strategy != "auto":
        return strategy
    return "unroll" if mesh.devices.flat[0].platform == "cpu" else "vmap"


def swept_model_fields(trials: list[Trial]) -> tuple[str, ...]:
    """The model fields (dropout rates) the group's trials set per trial."""
    _, batched = batched_fields(trials[0])
    swept = {n.removeprefix(MODEL_PREFIX) for n in trials[0].params if n.startswith(MODEL_PREFIX)}
    return tuple(sorted(batched & swept))


def group_model(trials: list[Trial]) -> tuple[nn.Module, tuple[str, ...]]:
    """The group's shared model (the settings its trials share) and the
    model fields each trial sets itself, as arrays (swept_model_fields)."""
    fields = swept_model_fields(trials)
    shared = {k: v for k, v in trials[0].model_kwargs.items() if k not in fields}
    return get_model(trials[0].config.model, **shared), fields


def init_trial_states(
    trials: list[Trial], model: nn.Module, steps_per_epoch: int, sample: jax.Array
) -> TrainState:
    """The group's stacked initial state: each trial's init from its own seed,
    its learning rate and weight decay in its optimizer state."""
    tx = make_optimizer(trials[0].config, steps_per_epoch)  # One structure for all.
    config_fields, _ = batched_fields(trials[0])
    states = []
    for trial in trials:
        state = create_train_state(
            model, tx, trial.config.seed, sample, ema=trial.config.ema_decay > 0
        )
        values = {
            k: getattr(trial.config, k)
            for k in ("learning_rate", "weight_decay")
            if k in config_fields
        }
        states.append(state.replace(opt_state=set_hyperparams(state.opt_state, **values)))
    return stack(states)


def trials_step(
    states: TrainState,
    model_hparams: dict,
    batches: dict,
    *,
    model: nn.Module,
    spec: StepConfig,
    strategy: str,
) -> tuple[TrainState, dict]:
    """One train step of K trials: `train_step` for each, on its own batch.

    Args:
      states: the trials' states, stacked (K, ...).
      model_hparams: {field: (K,)} per-trial model fields (dropout rates).
      batches: image (K, B, 28, 28, 1), label (K, B), mask (K, B).
      model: the group's model, cloned with each trial's `model_hparams`.
      spec: the step settings.
      strategy: "vmap" (jax.vmap over the trials); else each trial's step
        unrolled (resolve_strategy).

    Returns:
      The stacked new states and metric sums (K,).
    """

    def one_trial(state, hparams, batch):
        trial_model = model.clone(**hparams) if hparams else model
        new, metrics = train_step(state.replace(apply_fn=trial_model.apply), batch, spec=spec)
        return new.replace(apply_fn=state.apply_fn), metrics

    if strategy == "vmap":
        return jax.vmap(one_trial)(states, model_hparams, batches)
    outputs = [
        one_trial(take(states, k), take(model_hparams, k), take(batches, k))
        for k in range(trial_count(states))
    ]
    return stack(outputs)


def make_trials_step(
    model: nn.Module, spec: StepConfig, strategy: str, mesh: jax.sharding.Mesh
) -> Callable:
    """`trials_step` jitted: states replicated and donated, each trial's
    batch split across the mesh."""
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(trials_step, model=model, spec=spec, strategy=strategy),
        donate_argnums=0,
        in_shardings=(replicated, replicated, parallel.steps_sharded(mesh)),
        out_shardings=(replicated, replicated),
    )


def make_trials_scan(
    model: nn.Module, spec: StepConfig, strategy: str, mesh: jax.sharding.Mesh
) -> Callable:
    """Steps of `trials_step` as one lax.scan, the training set on the devices."""
    replicated = parallel.replicated(mesh)
    batch_sharding = parallel.steps_sharded(mesh)  # (K, B, ...)

    def scan(states, model_hparams, data, indices, masks):  # indices, masks: (steps, K, B)
        def one_step(states, step_input):
            idx, mask = step_input
            batches = {"image": data["image"][idx], "label": data["label"][idx], "mask": mask}
            batches = jax.lax.with_sharding_constraint(batches, batch_sharding)
            return trials_step(
                states, model_hparams, batches, model=model, spec=spec, strategy=strategy
            )

        return jax.lax.scan(one_step, states, (indices, masks))

    steps_sharding = parallel.steps_sharded(mesh, leading=2)  # (steps, K, B)
    return jax.jit(
        scan,
        donate_argnums=0,
        in_shardings=(replicated, replicated, replicated, steps_sharding, steps_sharding),
        out_shardings=(replicated, replicated),
    )


def _keep_improved(best: TrainState | None, states: TrainState, improved: np.ndarray) -> TrainState:
    """Each trial's best state: the new one where it improved, else the kept one (fresh buffers)."""
    if best is None:
        return jax.tree.map(jnp.copy, states)
    mask = jnp.asarray(improved)
    return jax.tree.map(
        lambda b, s: jnp.where(mask.reshape(-1, *([1] * (s.ndim - 1))), s, b), best, states
    )


class TrialGroup:
    """A group's trials as the epoch loop's members (mnist_jax.members.Members):
    their states stacked (K, ...), their batches (steps, K, B), one step for all."""

    leading = 2

    def __init__(self, trials: list[Trial], strategy: str, mesh: jax.sharding.Mesh):
        self.trials, self.config, self.count = trials, trials[0].config, len(trials)
        self.strategy = resolve_strategy(strategy, mesh)
        self.model, fields = group_model(trials)
        self.step_args = (
            parallel.replicate(
                {f: jnp.asarray([t.model_kwargs[f] for t in trials], jnp.float32) for f in fields},
                mesh,
            ),
        )

    def initial_state(self, steps_per_epoch: int, sample: jax.Array) -> TrainState:
        return init_trial_states(self.trials, self.model, steps_per_epoch, sample)

    def host_step(self, spec, mesh) -> Callable:
        return make_trials_step(self.model, spec, self.strategy, mesh)

    def device_steps(self, spec, mesh) -> Callable:
        return make_trials_scan(self.model, spec, self.strategy, mesh)

    def shard_batch(self, batch: dict, mesh) -> dict:
        return parallel.shard_steps(batch, mesh)  # (K, B, ...): each trial's batch split.

    def index_arrays(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        size = self.config.batch_size
        indices, masks = pipeline.batch_indices(np.zeros(length * size, np.int64), size)
        return np.stack([indices] * self.count, 1), np.stack([masks] * self.count, 1)

    def epoch_batches(self, epoch: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, masks), each (steps, K, B): every trial's batches of `epoch`
        in its own shuffled order (the order an ordinary run of its seed takes)."""
        orders = [
            pipeline.batch_indices(
                pipeline.epoch_order(run_keys(t.config.seed)[2], epoch, num_examples),
                self.config.batch_size,
            )
            for t in self.trials
        ]
        return np.stack([o[0] for o in orders], 1), np.stack([o[1] for o in orders], 1)

    def member(self, state, k: int):
        return take(state, k)

    def split(self, sums: dict) -> list[dict]:
        return [{n: v[k] for n, v in sums.items()} for k in range(self.count)]

    def best_to_save(self, kept, state, improved: list[bool]):
        best = _keep_improved(kept, state, np.asarray(improved))
        return best, best

    def to_meta(self, histories, bests, epoch_sums, train_seconds: float) -> dict:
        return {
            "histories": histories,
            "best": bests,
            "epoch_sums": epoch_sums,
            "train_seconds": train_seconds,
            "trials": [t.config.to_dict() for t in self.trials],
        }

    def from_meta(self, saved: dict) -> tuple[list, list, list, float]:
        saved_trials = saved["trials"]
        if len(saved_trials) != self.count or any(
            config_differences(s, t.config) for s, t in zip(saved_trials, self.trials)
        ):
            raise ResumeError(
                "cannot resume this group: its trials were trained with other settings. "
                "Resume with the same sweep, or start a new one in another --workdir."
            )
        # Sweeps saved before mid-epoch checkpoints kept no epoch sums: they saved at epochs' ends.
        sums = saved.get("epoch_sums") or [{} for _ in self.trials]
        return saved["histories"], saved["best"], sums, saved["train_seconds"]

    def epoch_line(self, epoch: int, records: list[dict]) -> str:
        key = CheckpointPolicy.of(self.config).metric
        shown = "  ".join(
            f"{t.index}:{r.get(key, float('nan')):.4f}" for t, r in zip(self.trials, records)
        )
        return (
            f"epoch {epoch + 1:>3}/{self.config.epochs}  {key.replace('_', ' ')} by trial  {shown}"
        )
