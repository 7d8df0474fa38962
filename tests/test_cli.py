"""The command line tells the truth: help against the configs, resume that
is safe to repeat, and a full disk told in one line."""

import argparse
import contextlib
import dataclasses
import errno
import importlib
import io
import json
import re
import time

import chex
import numpy as np
import pytest

import experiments
from experiments import cnn, few_labels, noisy, sweep
from mnist_jax import checkpoints, cli, fields, flags, models, progress, tasks, train
from mnist_jax.augment import AugmentConfig
from mnist_jax.checkpoints import RunCheckpoints
from mnist_jax.config import TrainConfig
from mnist_jax.faults import SaveError, io_failure
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
from tests.conftest import small_run_config
from tests.test_faults import Interrupt, run, stop_at


def help_text(name: str) -> str:
    """`python -m experiments.<name> --help`, whitespace collapsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"experiments.{name}").main(["--help"])
    assert exit_info.value.code == 0
    return " ".join(out.getvalue().split())


def option_help(name: str, monkeypatch) -> dict[str, str]:
    """'--flag' -> its help as `--help` prints it, for every option of the experiment's parser."""
    parsers = []
    real_print_help = argparse.ArgumentParser.print_help
    monkeypatch.setattr(
        argparse.ArgumentParser,
        "print_help",
        lambda self, file=None: (parsers.append(self), real_print_help(self, file)),
    )
    help_text(name)
    (parser,) = parsers
    formatter = parser._get_formatter()
    return {
        action.option_strings[-1]
        if action.option_strings[-1].startswith("--")
        else action.option_strings[0]: (action, " ".join(formatter._expand_help(action).split()))
        for action in parser._actions
        if action.option_strings and action.help
    }


@pytest.mark.parametrize("name", experiments.names())
def test_every_option_that_takes_a_value_shows_its_default(name, monkeypatch):
    options = option_help(name, monkeypatch)
    for flag, (action, text) in options.items():
        if action.nargs != 0 and not action.required and flag not in ("--param", "--image"):
            assert "default" in text, (
                name,
                flag,
                text,
            )  # --param adds to a list; --image is one of two.
    if "--noise-level" in options:
        assert "speckle" in options["--noise-level"][1], name
    if "--quick" in options:
        assert "smoke test" in options["--quick"][1], name


def quick_help(name, monkeypatch) -> str:
    return option_help(name, monkeypatch)["--quick"][1]


@pytest.mark.parametrize("name", sorted(experiments.model_experiments()) + ["sweep"])
def test_the_help_of_a_training_experiment_shows_its_config(name, monkeypatch):
    module = importlib.import_module(f"experiments.{name}")
    config, quick_config = (
        (sweep.BASE, sweep.QUICK) if name == "sweep" else (module.CONFIG, module.QUICK)
    )
    text = help_text(name)
    for shown in (
        f"training epochs (default: {config.epochs})",
        f"training batch size (default: {config.batch_size})",
        f"peak learning rate (default: {config.learning_rate})",
        f"L2 weight decay (default: {config.weight_decay})",
        f"(default: {config.seed})",
        f"(default: {config.noise.kind})",
        f"(default: {config.noise.level})",
        f"(default: {config.dtype})",
    ):
        assert shown in text, (name, shown)
    quick = quick_help(name, monkeypatch)
    assert f"{quick_config.epochs} epoch" in quick and f"{quick_config.train_size:,}" in quick, (
        quick
    )
    assert f"{quick_config.test_size:,} test images" in quick, quick


def test_the_help_of_the_chains_shows_their_configs(monkeypatch):
    text = help_text("noisy")
    assert f"epochs of each CNN (default: {noisy.CONFIG.classifier.epochs})" in text
    assert f"epochs of the denoising autoencoder (default: {noisy.CONFIG.denoiser.epochs})" in text
    assert (
        f"(default: {noisy.CONFIG.noise.kind})" in text
        and f"(default: {noisy.CONFIG.noise.level})" in text
    )
    quick = quick_help("noisy", monkeypatch)
    assert (
        f"{noisy.QUICK.classifier.epochs} epoch per CNN" in quick
        and f"{noisy.QUICK.train_size:,}" in quick
    )
    text = help_text("few_labels")
    labels = " ".join(map(str, few_labels.CONFIG.labels))
    assert f"(default: {labels})" in text and f"(default: {few_labels.CONFIG.steps})" in text
    quick = quick_help("few_labels", monkeypatch)
    assert (
        f"{few_labels.QUICK.steps} steps with "
        f"{' and '.join(map(str, few_labels.QUICK.labels))} labels" in quick
    )


def test_best_takes_the_recipe_flags_of_the_other_experiments(capsys):
    from dataclasses import replace

    from experiments import best

    def config(*given):
        return flags.config_from_args(
            best.build_parser().parse_args(list(given)), best.CONFIG, best.QUICK
        )

    assert config() == best.CONFIG
    tried = config(
        "--label-smoothing",
        "0.05",
        "--rotation",
        "15",
        "--lr",
        "1e-3",
        "--schedule",
        "cosine",
        "--epochs",
        "30",
    )
    assert tried == replace(
        best.CONFIG,
        label_smoothing=0.05,
        learning_rate=1e-3,
        schedule="cosine",
        epochs=30,
        augment=replace(best.CONFIG.augment, rotation=15.0),
    )
    fields = (
        "label_smoothing",
        "learning_rate",
        "schedule",
        "epochs",
    )  # Each flag moved its field.
    assert (
        all(getattr(tried, f) != getattr(best.CONFIG, f) for f in fields)
        and tried.augment != best.CONFIG.augment
    )
    assert config("--quick", "--ema-decay", "0.99") == replace(best.QUICK, ema_decay=0.99)
    assert config("--elastic", "34", "--elastic-sigma", "5").augment == replace(
        best.CONFIG.augment, elastic=34.0, elastic_sigma=5.0
    )
    shown = help_text("best")
    assert f"by up to this angle (default: {best.CONFIG.augment.rotation})" in shown, shown
    with pytest.raises(
        SystemExit
    ) as exit_info:  # A bad value is refused, naming its flag, before any data.
        best.main(["--label-smoothing", "1.5", "--no-progress", "--data-dir", "/nonexistent"])
    assert exit_info.value.code == 2 and "--label-smoothing" in capsys.readouterr().err


def test_every_config_field_carries_its_help():
    """Each field of TrainConfig and of the settings nested in it says what it is."""
    for cls in (TrainConfig, tasks.StepConfig, AugmentConfig, NoiseConfig):
        for field in dataclasses.fields(cls):
            assert len(field.metadata.get("help", "")) > 10, (cls.__name__, field.name)


def test_the_flags_are_the_config_fields_of_a_flag_group():
    names = {name for flag in fields.flags(TrainConfig) for name in flag.names}
    assert names == {
        *("--epochs", "--batch-size", "--learning-rate", "--lr", "--weight-decay", "--schedule"),
        *("--rotation", "--shift", "--zoom", "--elastic", "--elastic-sigma"),
        *("--stroke", "--blur", "--gamma", "--ema-decay"),
        *("--label-smoothing", "--seed", "--split-seed", "--noise", "--noise-level"),
        *("--dtype", "--data-placement", "--train-size", "--test-size"),
    }
    paths = {flag.dest: flag.path for flag in fields.flags(TrainConfig)}
    assert paths["noise"] == "noise.kind" and paths["elastic_sigma"] == "augment.elastic_sigma"


@dataclasses.dataclass(frozen=True)
class _WithMixup(TrainConfig):
    mixup: float = fields.setting(
        0.0, "mix pairs of training images with this alpha", group="recipe"
    )


def test_a_field_declared_with_a_flag_group_needs_nothing_else_to_be_a_flag(capsys):
    """Adding a setting that a flag sets is one definition: its flag, its
    help with the default, and the config it makes follow."""
    config = _WithMixup(epochs=3)
    parser = flags.build_parser("cnn", "", config, dataclasses.replace(config, epochs=1))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "mix pairs of training images with this alpha (default: 0.0)" in " ".join(
        capsys.readouterr().out.split()
    )
    given = parser.parse_args(["--mixup", "0.2", "--rotation", "10", "--noise-level", "0.3"])
    made = flags.config_from_args(given, config, config)
    assert made == dataclasses.replace(
        config,
        mixup=0.2,
        augment=AugmentConfig(rotation=10.0),
        noise=NoiseConfig(level=0.3),
    )
    quick = flags.config_from_args(parser.parse_args(["--quick"]), config, _WithMixup(epochs=1))
    assert quick.epochs == 1 and quick.mixup == 0.0


def test_a_bad_flag_value_is_refused_by_its_field_and_named_as_its_flag():
    parser = flags.build_parser("cnn", "", TrainConfig(), TrainConfig())
    for given, flag in (
        (["--shift", "1.5"], "--shift"),
        (["--noise-level", "-1"], "--noise-level"),
    ):
        with pytest.raises(ValueError) as error:
            flags.config_from_args(parser.parse_args(given), TrainConfig(), TrainConfig())
        assert flag in flags.as_flags(str(error.value), parser), error.value


# --- --resume: safe to repeat -------------------------------------------------


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_afresh_with_the_same_command(
    tmp_path, synthetic_splits, capsys
):
    config = small_run_config(epochs=1, checkpoint_every_steps=6)
    with pytest.raises(Interrupt):
        run(config, synthetic_splits, tmp_path / "killed", on_step=stop_at(3))
    assert not checkpoints.has_checkpoints(tmp_path / "killed")
    capsys.readouterr()
    resumed = run(config, synthetic_splits, tmp_path / "killed", resume=True)
    assert "--resume: nothing saved in" in capsys.readouterr().out
    straight = run(config, synthetic_splits, tmp_path / "straight")
    chex.assert_trees_all_equal(resumed["state"].params, straight["state"].params)
    assert resumed["test"] == straight["test"]


def test_resume_with_no_run_under_the_default_folder_starts_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEFAULT_RUNS_DIR", tmp_path / "runs")
    workdir = cli.resolve_workdir("cnn", None, resume=True)
    assert workdir.parent == tmp_path / "runs" / "cnn" and not workdir.exists()
    assert (
        f"no run saved under {tmp_path / 'runs' / 'cnn'} yet; starting a new one"
        in capsys.readouterr().out
    )


def files_and_times(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_resume_of_a_finished_run_does_nothing_and_rescore_keeps_its_timings(quick_runs, capsys):
    run_info = quick_runs.get("cnn")
    workdir, args = run_info["workdir"], quick_runs.args("cnn")
    before = files_and_times(workdir)
    capsys.readouterr()
    again = cnn.main(args + ["--resume"])
    out = capsys.readouterr().out
    assert f"{workdir} is a finished run" in out and "nothing to do" in out
    assert "99.38 %" in out  # The report's table, from metrics.json.
    assert files_and_times(workdir) == before  # Nothing trained, scored or written.
    assert again["test"] == run_info["summary"]["test"]

    rescored = cnn.main(args + ["--rescore"])  # Implies --resume.
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["rescored"] is True and saved["test"] == rescored["test"]
    assert rescored["test"]["accuracy"] == run_info["summary"]["test"]["accuracy"]
    for timing in ("train_seconds", "compile_seconds", "first_step_seconds"):
        assert saved[timing] == run_info["summary"][timing], timing


# --- A full disk, a read-only or vanished folder -------------------------------


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        (
            ValueError(
                "RESOURCE_EXHAUSTED: Failed to write 199 bytes to file 4: No space left on device "
                "[os_error_code='28']"
            ),
            "No space left on device",
        ),
        (ValueError("the model does not fit this checkpoint"), None),
    ],
)
def test_io_failures_are_told_from_other_errors(error, reason):
    assert io_failure(error) == reason
    wrapped = RuntimeError("a background save failed")
    wrapped.__cause__ = error
    assert io_failure(wrapped) == reason


def test_a_save_on_a_full_disk_names_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    state = {"w": np.zeros(3)}
    with RunCheckpoints(tmp_path) as ckpts:
        ckpts.save_latest(4, state, {"step": 4})
        ckpts.wait()

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ckpts.latest.manager, "save", full_disk)
        with pytest.raises(SaveError) as error:
            ckpts.save_latest(8, state, {"step": 8})
    message = str(error.value)
    assert (
        "could not save the checkpoint of step 8" in message
        and "(No space left on device)" in message
    )
    assert (
        "the last good checkpoint, step 4, is intact in "
        f"{tmp_path.resolve() / 'checkpoints' / 'latest' / '4'}" in message
    )
    assert message.endswith("then run the same command with --resume.")
    assert checkpoints.has_checkpoints(tmp_path)  # What was saved is still there.


@pytest.mark.slow
def test_a_full_disk_mid_run_ends_the_command_with_one_line_and_resume_finishes_it(
    tmp_path, synthetic_splits, monkeypatch, capsys
):
    config = small_run_config(epochs=2)
    workdir = tmp_path / "run"
    real_save = checkpoints._Manager.save

    def save_until_full(self, step, state, meta):
        if step >= 14:  # Epoch 2's first save (10 steps an epoch, a save every 4).
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / str(step)))
        real_save(self, step, state, meta)

    monkeypatch.setattr(checkpoints._Manager, "save", save_until_full)
    parser = flags.build_parser("cnn", "", config, config)
    args = parser.parse_args([])
    with pytest.raises(SystemExit) as exit_info, cli.training_errors(parser, args):
        run(config, synthetic_splits, workdir)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        err.startswith("error: could not save the checkpoint of step 14")
        and "step 10, is intact" in err
    )
    monkeypatch.setattr(checkpoints._Manager, "save", real_save)  # Space freed.
    resumed = run(config, synthetic_splits, workdir, resume=True)
    straight = run(config, synthetic_splits, tmp_path / "straight")
    chex.assert_trees_all_equal(resumed["state"].params, straight["state"].params)


def test_debug_shows_the_traceback_of_a_failed_save(capsys):
    parser = flags.build_parser("cnn", "", small_run_config(), small_run_config())
    with pytest.raises(SaveError), cli.training_errors(parser, parser.parse_args(["--debug"])):
        raise SaveError("could not save the checkpoint of step 3")


# --- Output: an honest rate, no bar frames in a log -----------------------------


def test_the_rate_leaves_out_checkpoint_pauses_and_no_bar_is_drawn_into_a_pipe():
    bar = progress.EpochProgress(100, 0, "epoch 1/1", enabled=True)
    assert bar.bar.disable  # pytest captures stderr: not a terminal.
    time.sleep(0.05)
    bar.update(10)
    with bar.paused():
        time.sleep(0.5)  # A checkpoint's save.
    bar.close()
    assert bar.paused_seconds >= 0.5
    assert bar.steps_per_second() > 10 / 0.4  # 0.55 s with the pause: 18 steps/s.


def test_a_run_into_a_pipe_logs_a_line_per_epoch_without_bar_frames(
    tmp_path, synthetic_splits, capsys
):
    config = small_run_config(epochs=1)
    train.train_and_evaluate(
        config,
        models.get_model("cnn"),
        synthetic_splits,
        tmp_path,
        RunOptions(experiment="test", progress=True),
    )
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert re.search(r"epoch +1/1 .* \(\d+\.\d steps/s\)", captured.out)
