"""Orbax round trip, exact resume (also mid-epoch), and what is never overwritten."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import checkpoints, loop, models, optim, steps, train
from mnist_jax.augment import AugmentConfig
from mnist_jax.config import ResumeError, TrainConfig, check_resumable
from mnist_jax.options import RunOptions
from tests.conftest import small_run_config

CONFIG = small_run_config()  # 300 train examples: 10 steps an epoch, the last one padded.


def fresh_state(config=CONFIG):
    return steps.create_train_state(
        models.get_model("cnn"), optim.make_optimizer(config), 0, jnp.zeros((1, 28, 28, 1))
    )


@pytest.mark.slow
def test_round_trip_restores_every_array(tmp_path):
    state = fresh_state()
    state = state.replace(step=jnp.asarray(7), params=jax.tree.map(lambda p: p + 1.5, state.params))
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        ckpts.save_latest(7, state, {"note": "hello"})
        ckpts.wait()
        restored, meta = ckpts.restore_latest(fresh_state())
    assert meta == {"note": "hello"}
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    chex.assert_trees_all_equal(restored.batch_stats, state.batch_stats)
    assert int(restored.step) == 7


class Interrupt(Exception):
    pass


def run(config, splits, workdir, *, resume=False, stop_at=None):
    def on_step(step):
        # Host data: called every step; device data: after every scan call.
        if stop_at is not None and step >= stop_at:
            raise Interrupt  # As if the process died here, between checkpoints.

    return train.train_and_evaluate(
        config,
        models.get_model("cnn"),
        splits,
        workdir,
        RunOptions(experiment="test", resume=resume, on_step=on_step, progress=False),
    )


AUGMENTED_EMA = dict(augment=AugmentConfig(rotation=15, shift=0.1, zoom=0.15), ema_decay=0.9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "placement, stop_at, extra",
    [
        ("host", 15, {}),  # mid-epoch 2, off a checkpoint: steps 15 and 16 are replayed
        ("host", 10, {}),  # an epoch's end
        (
            "device",
            15,
            {},
        ),  # scan calls of 5 steps: the one that passes step 15 ends there, a checkpoint
        ("host", 15, AUGMENTED_EMA),  # the replayed steps' augmentation and the average too
    ],
)
def test_resume_matches_uninterrupted_run(tmp_path, synthetic_splits, placement, stop_at, extra):
    config = dataclasses.replace(CONFIG, data_placement=placement, **extra)
    if placement == "device":  # One scan length, so one compilation.
        config = dataclasses.replace(config, checkpoint_every_steps=5)
    reference = run(config, synthetic_splits, tmp_path / "straight")
    with pytest.raises(Interrupt):
        run(config, synthetic_splits, tmp_path / "resumed", stop_at=stop_at)
    resumed = run(config, synthetic_splits, tmp_path / "resumed", resume=True)
    assert int(resumed["state"].step) == int(reference["state"].step) == 30
    chex.assert_trees_all_close(
        resumed["state"].params, reference["state"].params, atol=1e-6, rtol=0
    )
    chex.assert_trees_all_close(
        resumed["state"].batch_stats, reference["state"].batch_stats, atol=1e-6, rtol=0
    )
    chex.assert_trees_all_close(resumed["state"].ema, reference["state"].ema, atol=1e-6, rtol=0)
    assert bool(resumed["state"].ema) == ("ema_decay" in extra)
    assert [h["val_accuracy"] for h in resumed["history"]] == [
        h["val_accuracy"] for h in reference["history"]
    ]
    np.testing.assert_allclose(
        [h["train_loss"] for h in resumed["history"]],
        [h["train_loss"] for h in reference["history"]],
        rtol=1e-5,
    )


@pytest.mark.slow
def test_existing_run_is_never_overwritten(tmp_path, synthetic_splits):
    config = dataclasses.replace(CONFIG, epochs=1)
    run(config, synthetic_splits, tmp_path)
    saved = sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir())
    with pytest.raises(ResumeError, match="--resume"):
        run(config, synthetic_splits, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()) == saved


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path, synthetic_splits):
    config = dataclasses.replace(CONFIG, epochs=1)
    run(config, synthetic_splits, tmp_path)
    with pytest.raises(ResumeError, match="learning_rate"):
        run(dataclasses.replace(config, learning_rate=0.1), synthetic_splits, tmp_path, resume=True)


def test_settings_added_since_a_run_read_as_their_defaults():
    """A run saved before a setting existed, nested ones too (augment.elastic),
    resumes under today's config; a changed nested setting is named."""
    config = TrainConfig(augment=AugmentConfig(rotation=10.0))
    saved = config.to_dict()
    saved["augment"] = {
        "rotation": 10.0,
        "shift": 0.0,
        "zoom": 0.0,
    }  # As written before the elastic fields.
    del saved["label_smoothing"]
    check_resumable(saved, config)
    with pytest.raises(ResumeError, match="augment.elastic: saved 0.0, now 34.0"):
        check_resumable(
            saved, dataclasses.replace(config, augment=AugmentConfig(rotation=10.0, elastic=34.0))
        )


@pytest.mark.slow
def test_resume_can_extend_training(tmp_path, synthetic_splits):
    one = dataclasses.replace(CONFIG, epochs=1)
    run(one, synthetic_splits, tmp_path)
    longer = run(dataclasses.replace(one, epochs=2), synthetic_splits, tmp_path, resume=True)
    assert [h["epoch"] for h in longer["history"]] == [1, 2]


def test_resume_without_checkpoint_starts_from_the_beginning(tmp_path, synthetic_splits, capsys):
    # The command a preemptible machine repeats; tests/test_cli.py checks the numbers.
    result = run(dataclasses.replace(CONFIG, epochs=1), synthetic_splits, tmp_path, resume=True)
    assert "--resume: nothing saved in" in capsys.readouterr().out
    assert [h["epoch"] for h in result["history"]] == [1]


def test_resume_of_a_run_that_keeps_no_checkpoints_is_refused(synthetic_splits):
    with pytest.raises(ResumeError, match="keeps no checkpoints"):
        loop.fit(
            CONFIG, models.get_model("cnn"), synthetic_splits, None, options=RunOptions(resume=True)
        )


def test_leftover_tmp_folder_of_killed_save_is_cleared(tmp_path):
    latest = tmp_path / "checkpoints" / "latest"
    (latest / f"12{checkpoints.TMP_MARKER}-1234").mkdir(parents=True)
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        ckpts.save_latest(12, fresh_state(), {})
        ckpts.wait()
        assert ckpts.latest_step() == 12
    assert [p.name for p in latest.iterdir() if p.name.isdigit()] == ["12"]


@pytest.mark.slow
def test_best_checkpoint_is_kept_apart_from_latest(tmp_path, synthetic_splits):
    config = dataclasses.replace(CONFIG, keep_checkpoints=1)
    result = run(config, synthetic_splits, tmp_path)
    best_step = result["evaluated_checkpoint"]["step"]
    best_dirs = [p.name for p in (tmp_path / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    latest_dirs = [
        p.name for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit()
    ]
    assert best_dirs == [str(best_step)]
    assert latest_dirs == ["30"]
    best_val = max(h["val_accuracy"] for h in result["history"])
    assert result["evaluated_checkpoint"]["val_accuracy"] == best_val
