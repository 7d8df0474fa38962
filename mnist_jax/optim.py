"""Optimizers and learning-rate schedules, as PyTorch's reports used them.

Hyperparameters are injected (`optax.inject_hyperparams`): they live in the
optimizer state as arrays, so the current learning rate can be logged from
there, and trials of a sweep that share one optimizer structure keep their
own values in their own states (`set_hyperparams`) without recompiling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mnist_jax.config import TrainConfig


def adam_l2(learning_rate, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.Adam with weight_decay: L2 added to the gradient, then Adam."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def sgd_l2(learning_rate, weight_decay: float, momentum: float) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum=m, weight_decay=wd): buf = m * buf + g + wd * p."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum or None)
    )


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


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int | None = None
) -> optax.GradientTransformation:
    """The config's optimizer; parameter groups not in `config.trainable` are frozen."""
    lr = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        tx = optax.inject_hyperparams(adam_l2)(learning_rate=lr, weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        tx = optax.inject_hyperparams(optax.adamw)(
            learning_rate=lr, weight_decay=config.weight_decay
        )
    else:
        tx = optax.inject_hyperparams(sgd_l2, static_args="momentum")(
            learning_rate=lr, weight_decay=config.weight_decay, momentum=config.momentum
        )
    if not config.trainable:
        return tx
    trainable = set(config.trainable)

    def groups(params):
        unknown = trainable - set(params)
        if unknown:
            raise ValueError(
                f"trainable names {sorted(unknown)} are not parameter groups of the "
                f"model; it has {sorted(params)}"
            )
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
                raise ValueError(
                    f"the optimizer has no injected hyperparameter {name!r}; "
                    f"it has {sorted(hyperparams)}"
                )
            hyperparams[name] = jnp.asarray(value, jnp.result_type(hyperparams[name]))
        return node._replace(hyperparams=hyperparams)

    def is_injected(node):
        return isinstance(getattr(node, "hyperparams", None), dict)

    return jax.tree.map(
        lambda node: replace(node) if is_injected(node) else node, opt_state, is_leaf=is_injected
    )
