"""Faults a run survives: a killed process, stop signals, damaged
checkpoints, a loss that turns NaN, and bad flags."""

import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import (
    checkpoints,
    cli,
    faults,
    flags,
    models,
    optim,
    parallel,
    placement,
    steps,
    train,
)
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.options import RunOptions
from tests.conftest import small_run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = (
    small_run_config()
)  # 10 steps an epoch; checkpoints at in-epoch steps 4, 8 and the epoch's end.


def fresh_state(model="cnn", config=CONFIG):
    return steps.create_train_state(
        models.get_model(model), optim.make_optimizer(config), 0, jnp.zeros((1, 28, 28, 1))
    )


def run(config, splits, workdir, *, resume=False, on_step=None):
    return train.train_and_evaluate(
        config,
        models.get_model("cnn"),
        splits,
        workdir,
        RunOptions(experiment="test", resume=resume, on_step=on_step, progress=False),
    )


class Interrupt(Exception):
    pass


def stop_at(step_to_stop):
    def on_step(step):
        if step >= step_to_stop:
            raise Interrupt  # As if the process died here.

    return on_step


def latest_steps(workdir) -> list[int]:
    return sorted(
        int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit()
    )


def files_under(path: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# --- Damaged checkpoints ---------------------------------------------------


def garble_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"history": [')


def remove_state(step_dir):
    shutil.rmtree(step_dir / "state")


def truncate_arrays(step_dir):
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # TensorStore's data files.
            path.write_bytes(path.read_bytes()[:10])


# Orbax's reader of a truncated array leaves a coroutine that fails after its
# event loop closed: reported by pytest as unraisable, harmless here.
ORBAX_LEFTOVER = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_LEFTOVER
@pytest.mark.parametrize("damage", [garble_meta, remove_state, truncate_arrays])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_restored(
    tmp_path, caplog, damage
):
    older, newer = fresh_state(), fresh_state()
    newer = newer.replace(params=jax.tree.map(lambda p: p + 1.0, newer.params))
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        ckpts.save_latest(4, older, {"at": 4})
        ckpts.save_latest(8, newer, {"at": 8})
    step_dir = tmp_path / "checkpoints" / "latest" / "8"
    damage(step_dir)
    damaged_files = files_under(step_dir)

    with caplog.at_level(logging.WARNING), checkpoints.RunCheckpoints(tmp_path) as ckpts:
        restored, meta = ckpts.restore_latest(fresh_state())
        assert meta == {"at": 4}
        chex.assert_trees_all_equal(restored.params, older.params)
        # The step is free again: the resumed run saves it anew.
        ckpts.save_latest(8, newer, {"at": 8})
    assert f"{step_dir} is damaged" in caplog.text
    set_aside = tmp_path / "checkpoints" / checkpoints.DAMAGED_DIR / "latest-8"
    assert str(set_aside) in caplog.text
    assert files_under(set_aside) == damaged_files  # Kept as it was, nothing deleted.
    assert latest_steps(tmp_path) == [4, 8]


@pytest.mark.slow
@ORBAX_LEFTOVER
def test_resume_past_a_damaged_checkpoint_ends_like_an_uninterrupted_run(
    tmp_path, synthetic_splits, caplog
):
    reference = run(CONFIG, synthetic_splits, tmp_path / "straight")
    with pytest.raises(Interrupt):
        run(CONFIG, synthetic_splits, tmp_path / "resumed", on_step=stop_at(15))
    assert latest_steps(tmp_path / "resumed") == [8, 10, 14]
    truncate_arrays(tmp_path / "resumed" / "checkpoints" / "latest" / "14")
    with caplog.at_level(logging.WARNING):
        resumed = run(CONFIG, synthetic_splits, tmp_path / "resumed", resume=True)
    assert "latest/14 is damaged" in caplog.text
    assert int(resumed["state"].step) == 30
    chex.assert_trees_all_equal(resumed["state"].params, reference["state"].params)
    assert resumed["test"]["accuracy"] == reference["test"]["accuracy"]


@pytest.mark.slow
def test_when_every_checkpoint_is_damaged_resume_says_so_and_keeps_them(tmp_path, synthetic_splits):
    with pytest.raises(Interrupt):
        run(CONFIG, synthetic_splits, tmp_path, on_step=stop_at(5))
    for step in latest_steps(tmp_path):
        remove_state(tmp_path / "checkpoints" / "latest" / str(step))
    with pytest.raises(ResumeError, match="every checkpoint in .* is damaged"):
        run(CONFIG, synthetic_splits, tmp_path, resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "damaged").iterdir()) == ["latest-4"]


def test_a_checkpoint_of_another_model_is_refused_not_set_aside(tmp_path):
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        ckpts.save_latest(4, fresh_state("cnn"), {})
    with (
        checkpoints.RunCheckpoints(tmp_path) as ckpts,
        pytest.raises(checkpoints.CheckpointError, match="another model"),
    ):
        ckpts.restore_latest(fresh_state("simple_cnn"))
    assert latest_steps(tmp_path) == [4]
    assert not (tmp_path / "checkpoints" / checkpoints.DAMAGED_DIR).exists()


def test_a_step_saved_before_a_crash_is_kept_when_the_replay_reaches_it(tmp_path):
    """ "best" is saved before "latest" at an epoch's end; a run killed
    between the two replays the epoch and saves the same step again."""
    state = fresh_state()
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        ckpts.save_best(10, state, {"first": True})
        ckpts.save_best(10, state, {"first": False})
        _, meta = ckpts.restore_best(state)
    assert meta == {"first": True}


# --- NaN and infinite losses -------------------------------------------------


@pytest.mark.slow
def test_a_nan_loss_stops_training_naming_the_step_and_the_intact_checkpoint(
    tmp_path, synthetic_splits
):
    # Plain SGD at 1e4: finite after the first update, NaN a few steps later.
    config = small_run_config(
        optimizer="sgd",
        momentum=0.0,
        learning_rate=1e4,
        checkpoint_every_steps=1,
        log_every_steps=1,
    )
    with pytest.raises(faults.NonFiniteLossError) as error:
        run(config, synthetic_splits, tmp_path)
    message = str(error.value)
    # The loss's check (every log) or the parameters' (before every save)
    # sees it first, depending on the step the run diverges at.
    found = re.search(
        r"^the (?:training loss|parameters) became (.+?) at step (\d+) \(epoch 1\).*"
        r"last good checkpoint, step (\d+), is intact in (\S+)\.",
        message,
    )
    assert found, message
    bad_step, good_step = int(found[2]), int(found[3])
    assert good_step == bad_step - 1 and pathlib.Path(
        found[4]
    ) == tmp_path / "checkpoints" / "latest" / str(good_step)
    assert "--learning-rate" in message
    assert max(latest_steps(tmp_path)) == good_step  # Nothing saved from the bad step on.
    with checkpoints.RunCheckpoints(tmp_path) as ckpts:
        restored, meta = ckpts.restore_latest(fresh_state(config=config))
    assert int(restored.step) == good_step
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(restored.params))
    assert meta["config"]["learning_rate"] == 1e4


def test_training_errors_end_a_command_line_run_with_a_message(capsys):
    parser = flags.build_parser("cnn", "", TrainConfig(), TrainConfig())
    args = parser.parse_args([])
    with pytest.raises(SystemExit) as exit_info, cli.training_errors(parser, args):
        raise faults.NonFiniteLossError("the training loss became nan at step 3")
    assert exit_info.value.code == 1
    assert "error: the training loss became nan at step 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info, cli.training_errors(parser, args):
        raise faults.TrainingInterrupted("SIGTERM received", signal.SIGTERM, 7)
    assert exit_info.value.code == 128 + signal.SIGTERM


# --- SIGINT / SIGTERM, and SIGKILL -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_a_checkpoint_then_resume_ends_like_an_uninterrupted_run(
    tmp_path, synthetic_splits, signum
):
    reference = run(CONFIG, synthetic_splits, tmp_path / "straight")
    handler_before = signal.getsignal(signum)

    def on_step(step):
        if step == 7:  # Off the checkpoint grid (4, 8, 10, ...), mid-epoch.
            os.kill(os.getpid(), signum)

    with pytest.raises(
        faults.TrainingInterrupted,
        match=f"{signal.Signals(signum).name} received: stopped at step 7",
    ):
        run(CONFIG, synthetic_splits, tmp_path / "resumed", on_step=on_step)
    assert signal.getsignal(signum) is handler_before
    assert latest_steps(tmp_path / "resumed") == [4, 7]
    resumed = run(CONFIG, synthetic_splits, tmp_path / "resumed", resume=True)
    chex.assert_trees_all_equal(resumed["state"].params, reference["state"].params)
    chex.assert_trees_all_equal(resumed["state"].batch_stats, reference["state"].batch_stats)
    np.testing.assert_allclose(
        [h["train_loss"] for h in resumed["history"]],
        [h["train_loss"] for h in reference["history"]],
        rtol=1e-6,
    )


def test_epochs_resumed_off_the_checkpoint_grid_are_cut_back_onto_it():
    assert placement.chunks(7, 10, 4) == [(7, 8), (8, 10)]
    assert placement.chunks(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert placement.chunks(8, 10, 4) == [(8, 10)]


def start_job(workdir, resume: bool, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_job", str(workdir), *(["--resume"] * resume)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_job(
    workdir,
    resume: bool,
    env: dict,
    *,
    stop_at_step: int | None = None,
    delay: float = 0.0,
    signum: int = signal.SIGKILL,
) -> tuple[int, str, str]:
    """Runs tests.crash_job; with stop_at_step, sends `signum` `delay`
    seconds after it prints that step. Returns (exit code, stdout, stderr)."""
    job = start_job(workdir, resume, env)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if stop_at_step is not None and line.strip() == f"step {stop_at_step}":
            time.sleep(delay)
            job.send_signal(signum)
            break
    out, err = job.communicate(timeout=300)
    return job.returncode, "".join(lines) + out, err


@pytest.mark.slow
def test_a_run_killed_at_random_moments_and_resumed_ends_with_the_uninterrupted_parameters(
    tmp_path,
):
    # One compilation cache for the six processes: each loads the programs the first compiled.
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "TQDM_DISABLE": "1",
    }
    code, out, err = run_job(tmp_path / "straight", False, env)
    assert code == 0 and "done" in out, err

    rng = np.random.default_rng()  # Other moments every run; they are printed when it fails.
    stops = sorted(rng.choice(np.arange(1, 30), 4, replace=False).tolist())
    delays = rng.uniform(0.0, 0.05, 4).round(3).tolist()
    signals = [signal.SIGKILL, signal.SIGKILL, signal.SIGINT, signal.SIGKILL]
    moments = f"stops after steps {stops}, delays {delays} s, signals {[s.name for s in signals]}"
    workdir = tmp_path / "killed"
    for i, (step, delay, signum) in enumerate(zip(stops, delays, signals)):
        code, out, err = run_job(workdir, i > 0, env, stop_at_step=step, delay=delay, signum=signum)
        if code == 0:  # The signal came after the run's last step: nothing left to cut.
            continue
        if signum == signal.SIGKILL:
            assert code == -signal.SIGKILL, f"{moments}: {err}"
        else:
            assert code == 128 + signum, f"{moments}: {err}"
            saved = int(re.search(r"stopped at step (\d+)", err)[1])
            assert saved >= step and saved in latest_steps(workdir), moments
    code, out, err = run_job(workdir, True, env)
    assert code == 0 and "done" in out, f"{moments}: {err}"

    target = parallel.replicate(fresh_state(), parallel.data_mesh())
    finals = []
    for run_dir in (tmp_path / "straight", workdir):
        with checkpoints.RunCheckpoints(run_dir) as ckpts:
            state, meta = ckpts.restore_latest(target)
        finals.append((state, meta))
    (straight, straight_meta), (killed, killed_meta) = finals
    assert int(killed.step) == int(straight.step) == 30, moments
    chex.assert_trees_all_equal(killed.params, straight.params)
    chex.assert_trees_all_equal(killed.opt_state, straight.opt_state)
    assert killed_meta["best"] == straight_meta["best"], moments
    assert [h["val_accuracy"] for h in killed_meta["history"]] == [
        h["val_accuracy"] for h in straight_meta["history"]
    ]


# --- Bad flags -----------------------------------------------------------------

BAD_FLAGS = [  # Each error names the flag, not the config field behind it.
    ("cnn", ["--epochs", "-2"], "--epochs must be >= 1"),
    ("cnn", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("cnn", ["--noise", "gaussian", "--noise-level", "-1"], "--noise-level must be a sigma >= 0"),
    ("vit", ["--noise", "blur"], "invalid choice: 'blur'"),
    ("conv_ae", ["--lr", "-1"], "--learning-rate must be > 0"),
    ("simple_cnn", ["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    ("vgg16", ["--epochs", "0"], "--epochs must be >= 1"),
    ("noisy", ["--denoiser-epochs", "0"], "--denoiser-epochs must be >= 1"),
    ("noisy", ["--epochs", "0"], "--epochs must be >= 1"),
    ("few_labels", ["--steps", "0"], "--steps must be >= 1"),
    ("few_labels", ["--pretrain-epochs", "0"], "--pretrain-epochs must be >= 1"),
    ("sweep", ["--model", "resnet"], "invalid choice: 'resnet'"),
    ("sweep", ["--trials", "0"], "--trials must be >= 1"),
    ("speedrun", ["--seeds", "0"], "--seeds must be >= 1"),
    ("best", ["--ensemble", "1"], "--ensemble must be 0 (none) or >= 2"),
    ("best", ["--seeds", "0"], "--seeds must be >= 1"),
    ("speedrun", ["--batch-size", "-1"], "--batch-size must be >= 1"),
    ("compare", ["--models", "resnet"], "unknown ['resnet']"),
    ("benchmark", ["--steps", "0"], "must be >= 1"),
]


def run_refused(name, flags, tmp_path, monkeypatch, capsys) -> str:
    """Runs `experiments.<name>` with `flags`; asserts it stops with status 2
    before reading any data (so before compiling anything). Returns stderr."""
    import importlib

    from mnist_jax import sources

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the flags were checked")

    monkeypatch.setattr(sources, "load_mnist", no_data)
    workdir = (
        [] if name in ("speedrun", "benchmark", "compare") else ["--workdir", str(tmp_path / "run")]
    )
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"experiments.{name}").main([*flags, *workdir])
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize("name, flags, message", BAD_FLAGS)
def test_a_bad_flag_fails_before_any_data_or_compilation(
    name, flags, message, tmp_path, monkeypatch, capsys
):
    assert message in run_refused(name, flags, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize(
    "name, flags, devices",
    [
        ("cnn", ["--batch-size", "100"], 8),
        ("sweep", ["--batch-size", "100"], 8),
        ("speedrun", ["--batch-size", "100"], 8),
        ("noisy", [], 48),  # Its batches of 64 and 128 do not split 48 ways.
        ("few_labels", [], 48),
    ],
)
def test_a_batch_that_does_not_split_across_the_devices_fails_before_any_data(
    name, flags, devices, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(parallel, "num_shards", lambda mesh: devices)
    err = run_refused(name, flags, tmp_path, monkeypatch, capsys)
    assert f"does not split across {devices} devices" in err and "--batch-size" in err
