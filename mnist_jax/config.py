"""The training config: everything that decides a run's numbers, and what a
resumed run may change without changing them.

A `TrainConfig` is frozen data: experiments declare theirs as module
constants, flags override fields with `dataclasses.replace`, and the dict
`to_dict` gives is what metrics.json and every checkpoint hold.
"""

from __future__ import annotations

import dataclasses
import json

from mnist_jax.augment import AugmentConfig
from mnist_jax.fields import setting
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.tasks import StepConfig

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
# "device": the training set lives on the devices and steps run in lax.scan;
# "host": batches gathered on the host, one jitted call a step;
# "auto": "device" on GPU and TPU where the set fits (parallel.fits_on_devices),
#   "host" on CPU, where XLA runs a convolution inside a while loop far
#   slower than outside one (docs/performance.md), and dispatch costs little.
DATA_PLACEMENTS = ("auto", "device", "host")


@dataclasses.dataclass(frozen=True)
class TrainConfig(StepConfig):
    """Everything that decides a training run's numbers: the step's settings
    (tasks.StepConfig: the task, input scaling, noise, augmentation, dtype,
    the weights' moving average, label smoothing) and the rest of the run's.

    Defaults are report 004's CNN settings. Each field carries its help
    (mnist_jax.fields.setting); the fields of a flag group are the
    experiments' flags.
    """

    model: str = setting("cnn", "the model's name in the registry (mnist_jax.models)")
    epochs: int = setting(10, "training epochs", group="recipe")
    batch_size: int = setting(64, "training batch size", group="recipe")
    eval_batch_size: int = setting(
        256,
        "validation and test batch size (on a CPU, batches that stay in its caches evaluate "
        "fastest: docs/performance.md, time to first result)",
    )
    learning_rate: float = setting(
        1e-3, "peak learning rate", group="recipe", flags=("--learning-rate", "--lr")
    )
    optimizer: str = setting(
        "adam",
        '"adam": torch.optim.Adam, weight decay as L2 added to the gradient; "adamw": '
        'decoupled weight decay (torch.optim.AdamW); "sgd": torch.optim.SGD with `momentum`, '
        "L2 as Adam's",
    )
    weight_decay: float = setting(1e-5, "L2 weight decay", group="recipe")
    momentum: float = setting(0.9, '"sgd"\'s momentum')
    schedule: str = setting(
        "constant",
        "learning rate over the run: constant, cosine decay to 0, or onecycle (warm-up over "
        "25 % of it, then cosine: torch.optim.lr_scheduler.OneCycleLR's cosine form)",
        group="recipe",
        choices=SCHEDULES,
    )
    trainable: tuple[str, ...] = setting(
        (),
        "top-level parameter groups that train; the others stay frozen (optax.set_to_zero); "
        "empty: everything trains",
    )
    data_placement: str = setting(
        "auto",
        "where the training set lives: on the devices, epochs as lax.scan ('device'), or on "
        "the host, one call per step ('host'); 'auto': device on a GPU or TPU where it fits, "
        "else host",
        group="run",
        choices=DATA_PLACEMENTS,
    )
    seed: int = setting(0, "seed for init, split, shuffling, dropout and noise", group="experiment")
    split_seed: int | None = setting(
        None,
        "seed of the train/validation split only (default: --seed); a sweep fixes it, so that "
        "trials with other seeds are all scored on one validation set",
        group="experiment",
    )
    val_fraction: float = setting(0.1, "the share of the training set held out for validation")
    train_size: int | None = setting(
        None,
        "a stratified subset of this many training images (validation taken from it), for "
        "smoke tests; None: all",
        group="experiment",
    )
    test_size: int | None = setting(
        None, "a stratified subset of this many test images; None: all", group="experiment"
    )
    log_every_steps: int = setting(100, "the training loss is logged every this many steps")
    checkpoint_every_steps: int = setting(
        500,
        "a latest checkpoint every this many steps into an epoch, and at each epoch's end "
        "(checkpoints.CheckpointPolicy)",
    )
    keep_checkpoints: int = setting(3, "the newest latest checkpoints kept")
    keep_best: int = setting(
        1, "the best checkpoints kept, by the task's validation metric (StepConfig.selection)"
    )

    def __post_init__(self):
        positive = (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "log_every_steps",
            "checkpoint_every_steps",
            "keep_checkpoints",
            "keep_best",
        )
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
            raise ValueError(
                f"unknown data_placement {self.data_placement!r}; choose one of {DATA_PLACEMENTS}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        object.__setattr__(self, "trainable", tuple(self.trainable))
        super().__post_init__()  # The step's settings.

    @property
    def data_seed(self) -> int:
        """The seed that splits the data (split_seed, else seed)."""
        return self.seed if self.split_seed is None else self.split_seed

    def step_config(self) -> StepConfig:
        """The step's settings alone (what the jitted steps are compiled for)."""
        return StepConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StepConfig)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flatten(config: dict) -> dict:
    """A config dict with its nested settings (noise, augment) spelled
    "noise.kind", "augment.rotation" and so on: one level, one key each."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def flat_hparams(config: TrainConfig) -> dict:
    """The config as flat scalars for TensorBoard's HParams dashboard."""
    flat = {}
    for key, value in flatten(config.to_dict()).items():
        if isinstance(value, (list, tuple)):
            flat[key] = ",".join(map(str, value)) or "all"
        elif value is not None:
            flat[key] = value
    return flat


def config_from_dict(saved: dict) -> TrainConfig:
    """The TrainConfig that `TrainConfig.to_dict` wrote (as metrics.json and
    checkpoints hold it). Raises ValueError for fields this version lacks."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(
            f"config fields {unknown} are unknown to this version of mnist_jax "
            "(the run was written by a newer one?)"
        )
    values = dict(saved)
    if isinstance(values.get("noise"), dict):
        values["noise"] = NoiseConfig(**values["noise"])
    if isinstance(values.get("augment"), dict):
        values["augment"] = AugmentConfig(**values["augment"])
    return TrainConfig(**values)


class ResumeError(Exception):
    """A run cannot be resumed as asked."""


# Config fields a resumed run may change without changing its numbers
# (data_placement: beyond float rounding).
RESUMABLE_CHANGES = (
    "epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "keep_best",
    "eval_batch_size",
    "data_placement",
)


def config_differences(saved: dict, config: TrainConfig) -> str:
    """ "field: saved X, now Y" for each field that changes a run's numbers; "" if none."""

    def as_json(c):
        return flatten(json.loads(json.dumps(c)))  # Tuples as lists, nested settings one key each.

    current = as_json(config.to_dict())
    # Fields added since the checkpoint was written, nested ones too
    # (augment.elastic), read as their defaults.
    saved = {**as_json(TrainConfig().to_dict()), **as_json(saved)}
    free = set(RESUMABLE_CHANGES)
    if config.schedule != "constant":
        free.discard("epochs")  # The schedule's length is the run's length.
    changed = sorted(
        k for k in set(saved) | set(current) if k not in free and saved.get(k) != current.get(k)
    )
    return ", ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Raises ResumeError when `config` would change the numbers of the run
    whose checkpoint holds `saved` (its config as a dict)."""
    detail = config_differences(saved, config)
    if detail:
        raise ResumeError(
            f"cannot resume: the config differs from the checkpoint's ({detail}). "
            "Resume with the same settings, or start a new run in another --workdir."
        )
