"""Sweeps: the space and its trials, trials trained together == alone,
selection by validation, the summary files, resume, W&B offline, the CLI."""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments import sweep as sweep_experiment
from mnist_jax import (
    checkpoints,
    loop,
    optim,
    parallel,
    rundir,
    steps,
    summaries,
    sweep,
    sweep_report,
    trial_group,
)
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.data import Split, Splits
from mnist_jax.models import get_model
from mnist_jax.models.layers import Dropout
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.search_space import (
    Choice,
    LogUniform,
    SweepConfig,
    Uniform,
    group_trials,
    make_trials,
    parse_param,
)
from tests.conftest import (
    ROOT,
    assert_runs_agree,
    assert_weights_agree,
    small_run_config,
)


def _sweep(space, **kwargs):
    base = small_run_config(model="simple_cnn", epochs=2, noise=NoiseConfig())
    return SweepConfig(base, space, **kwargs)


# --- The space and its trials -------------------------------------------------------------------


def test_grid_enumerates_every_combination_in_order_and_caps():
    space = {"learning_rate": Choice((1e-3, 1e-2)), "batch_size": Choice((16, 32, 64))}
    trials = make_trials(_sweep(space, method="grid"))
    assert [(t.params["learning_rate"], t.params["batch_size"]) for t in trials] == [
        (1e-3, 16),
        (1e-3, 32),
        (1e-3, 64),
        (1e-2, 16),
        (1e-2, 32),
        (1e-2, 64),
    ]
    assert [t.config.batch_size for t in trials] == [16, 32, 64] * 2
    assert len(make_trials(_sweep(space, method="grid", num_trials=4))) == 4


def test_random_draws_are_reproducible_in_bounds_and_typed():
    space = {
        "learning_rate": LogUniform(1e-4, 1e-2),
        "weight_decay": Uniform(0.0, 1e-3),
        "seed": Choice((0, 1, 2)),
        "model.dropout": Choice((0.1, 0.5)),
    }
    first = make_trials(_sweep(space, num_trials=20, sample_seed=3))
    again = make_trials(_sweep(space, num_trials=20, sample_seed=3))
    other = make_trials(_sweep(space, num_trials=20, sample_seed=4))
    assert [t.params for t in first] == [t.params for t in again] != [t.params for t in other]
    rates = [t.config.learning_rate for t in first]
    assert all(1e-4 <= r < 1e-2 for r in rates) and min(rates) < 1e-3 < max(rates)
    assert all(isinstance(t.config.seed, int) for t in first)
    assert {t.model_kwargs["dropout"] for t in first} == {0.1, 0.5}
    # Every trial splits the data with the base's seed, whatever its own seed.
    assert {t.config.data_seed for t in first} == {0} and {t.config.seed for t in first} == {
        0,
        1,
        2,
    }


@pytest.mark.parametrize(
    "space, kwargs, message",
    [
        ({"learning_rat": Choice((1.0,))}, {"num_trials": 1}, "cannot sweep 'learning_rat'"),
        (
            {"model.width": Choice((1,))},
            {"num_trials": 1},
            "simple_cnn has no hyperparameter 'width'",
        ),
        (
            {"learning_rate": LogUniform(1e-4, 1e-2)},
            {"method": "grid"},
            "a grid needs a list of values",
        ),
        ({"learning_rate": Choice((1e-3,))}, {}, "a random sweep needs num_trials"),
        ({"learning_rate": Choice((-1.0,))}, {"num_trials": 1}, "learning_rate must be > 0"),
        ({"model.dropout": Choice((1.0,))}, {"num_trials": 1}, "model.dropout must be in [0, 1)"),
        ({"batch_size": Choice((1.5,))}, {"num_trials": 1}, "not a whole number"),
        ({}, {"num_trials": 1}, "space is empty"),
    ],
)
def test_bad_sweeps_are_refused_with_the_reason(space, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_trials(_sweep(space, **kwargs))


def test_param_specs_from_the_command_line():
    assert parse_param("learning_rate=log:1e-4:1e-2", "cnn") == (
        "learning_rate",
        LogUniform(1e-4, 1e-2),
    )
    assert parse_param("weight-decay=uniform:0:0.001", "cnn") == (
        "weight_decay",
        Uniform(0.0, 0.001),
    )
    assert parse_param("batch_size=64,128", "cnn") == ("batch_size", Choice((64, 128)))
    assert parse_param("optimizer=adam,sgd", "cnn") == ("optimizer", Choice(("adam", "sgd")))
    assert parse_param("model.fc_dropout=0.1,0.5", "cnn") == (
        "model.fc_dropout",
        Choice((0.1, 0.5)),
    )
    assert parse_param("model.features=16x32,32x64", "simple_cnn") == (
        "model.features",
        Choice(((16, 32), (32, 64))),
    )
    for bad, message in [
        ("learning_rate", "expected NAME=SPEC"),
        ("learning_rate=log:1", "two numbers"),
        ("batch_size=big", "not a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_param(bad, "cnn")


def test_trials_group_by_what_changes_the_program():
    space = {
        "learning_rate": Choice((1e-3, 1e-2)),
        "model.dropout": Choice((0.1, 0.5)),
        "batch_size": Choice((16, 32)),
        "optimizer": Choice(("adam", "sgd")),
    }
    trials = make_trials(_sweep(space, method="grid"))
    groups = group_trials(trials)
    assert len(groups) == 4 and all(len(g) == 4 for g in groups)
    for group in groups:
        assert len({(t.config.batch_size, t.config.optimizer) for t in group}) == 1
        assert {(t.config.learning_rate, t.model_kwargs["dropout"]) for t in group} == {
            (1e-3, 0.1),
            (1e-3, 0.5),
            (1e-2, 0.1),
            (1e-2, 0.5),
        }
    assert [len(g) for g in group_trials(trials, max_group_size=3)] == [3, 1] * 4
    # Widths change shapes: one group per width.
    widths = make_trials(
        _sweep(
            {"model.features": Choice(((8, 16), (16, 32))), "seed": Choice((0, 1))}, method="grid"
        )
    )
    assert [[t.model_kwargs["features"] for t in g] for g in group_trials(widths)] == [
        [(8, 16)] * 2,
        [(16, 32)] * 2,
    ]
    # A cosine schedule bakes its peak rate into the program: one group per rate.
    cosine = SweepConfig(
        small_run_config(schedule="cosine"),
        {"learning_rate": Choice((1e-3, 1e-2)), "seed": Choice((0, 1))},
        method="grid",
    )
    assert [len(g) for g in group_trials(make_trials(cosine))] == [2, 2]


# --- The pieces of a shared step -----------------------------------------------------------------


def test_set_hyperparams_gives_each_state_its_values():
    config = TrainConfig(optimizer="adamw", trainable=("params_a",))
    tx = optim.make_optimizer(config)
    state = tx.init({"params_a": jnp.ones(2), "params_b": jnp.ones(2)})
    changed = optim.set_hyperparams(state, learning_rate=0.25, weight_decay=0.5)
    assert optim.current_learning_rate(changed) == 0.25
    assert optim.current_learning_rate(state) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="no injected hyperparameter 'beta'"):
        optim.set_hyperparams(state, beta=1.0)


def test_dropout_takes_a_traced_rate_and_keeps_the_rate_and_the_scale():
    x = jnp.ones((200, 500))
    key = {"dropout": jax.random.PRNGKey(7)}
    ours = Dropout(0.3).apply({}, x, rngs=key)
    kept = np.asarray(ours != 0)
    assert abs(kept.mean() - 0.7) < 0.005  # 100,000 draws: 0.7 +- 0.0015 (1 sigma).
    np.testing.assert_allclose(
        np.asarray(ours)[kept], 1 / 0.7, rtol=1e-6
    )  # flax's inverted scaling.
    assert (
        abs(np.corrcoef(kept[:, :-1].ravel(), kept[:, 1:].ravel())[0, 1]) < 0.02
    )  # Neighbours independent.
    np.testing.assert_array_equal(Dropout(0.3).apply({}, x, rngs=key), ours)  # Same key, same mask.
    assert not np.array_equal(
        Dropout(0.3).apply({}, x, rngs={"dropout": jax.random.PRNGKey(8)}), ours
    )
    traced = jax.jit(lambda rate: Dropout(rate).apply({}, x, rngs=key))(jnp.float32(0.3))
    np.testing.assert_allclose(traced, ours, rtol=1e-6)
    np.testing.assert_array_equal(Dropout(0.3, deterministic=True).apply({}, x), x)
    odd = Dropout(0.5).apply({}, jnp.ones((3, 7)), rngs=key)  # An odd number of values.
    assert odd.shape == (3, 7) and set(np.unique(np.asarray(odd))) <= {0.0, 2.0}


@pytest.fixture(scope="module")
def three_trials():
    space = {
        "learning_rate": LogUniform(3e-4, 3e-3),
        "weight_decay": Choice((0.0, 1e-4)),
        "model.dropout": Choice((0.1, 0.5)),
        "seed": Choice((0, 1, 2)),
    }
    return make_trials(_sweep(space, num_trials=3, sample_seed=0))


@pytest.fixture(scope="module")
def trained_alone(three_trials, synthetic_splits, tmp_path_factory):
    """Each trial as an ordinary run (loop.fit)."""
    runs = []
    for trial in three_trials:
        workdir = tmp_path_factory.mktemp(trial.name)
        with (
            checkpoints.RunCheckpoints(workdir) as ckpts,
            summaries.MetricWriter(workdir / "unused", enabled=False) as writer,
        ):
            runs.append(
                loop.fit(
                    trial.config,
                    get_model("simple_cnn", **trial.model_kwargs),
                    synthetic_splits,
                    ckpts,
                    writer,
                    options=RunOptions(progress=False),
                )
            )
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("strategy, placement", [("unroll", "host"), ("vmap", "device")])
def test_trials_trained_together_equal_each_trained_alone(
    strategy, placement, three_trials, trained_alone, synthetic_splits, tmp_path
):
    # The runs alone keep their data on the host; the placement changes numbers only by rounding.
    trials = [
        dataclasses.replace(t, config=dataclasses.replace(t.config, data_placement=placement))
        for t in three_trials
    ]
    assert (
        len({t.config.seed for t in trials}) > 1
        and len({t.config.learning_rate for t in trials}) == 3
    )
    together = sweep.train_group(
        trials,
        synthetic_splits,
        tmp_path / "group",
        tmp_path / "tb",
        sweep.SweepOptions(strategy=strategy, progress=False),
    )
    assert together["strategy"] == strategy and together["data_placement"] == placement
    for k, alone in enumerate(trained_alone):
        # One program for three trials fuses differently from three programs.
        assert_runs_agree(together["histories"][k], alone["history"])
        assert_weights_agree(
            trial_group.take(together["states"], k).params,
            alone["state"].params,
            max_move=20 * trials[k].config.learning_rate,
        )  # 20 steps.
        assert together["best"][k]["epoch"] == alone["best"]["epoch"]


@pytest.mark.slow
def test_an_interrupted_group_resumes_to_the_same_result(
    three_trials, synthetic_splits, tmp_path, monkeypatch
):
    whole = sweep.train_group(
        three_trials,
        synthetic_splits,
        tmp_path / "whole",
        tmp_path / "tb1",
        sweep.SweepOptions(progress=False),
    )
    calls = []
    real_evaluate = steps.evaluate

    def evaluate_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1 + len(three_trials):  # The second epoch's validation (1: the compile).
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(steps, "evaluate", evaluate_then_fail)
    with pytest.raises(KeyboardInterrupt):
        sweep.train_group(
            three_trials,
            synthetic_splits,
            tmp_path / "cut",
            tmp_path / "tb2",
            sweep.SweepOptions(progress=False),
        )
    monkeypatch.setattr(steps, "evaluate", real_evaluate)
    with pytest.raises(ResumeError, match="pass --resume"):
        sweep.train_group(
            three_trials,
            synthetic_splits,
            tmp_path / "cut",
            tmp_path / "tb2",
            sweep.SweepOptions(progress=False),
        )
    resumed = sweep.train_group(
        three_trials,
        synthetic_splits,
        tmp_path / "cut",
        tmp_path / "tb2",
        sweep.SweepOptions(resume=True, progress=False),
    )
    assert resumed["histories"] == whole["histories"] and resumed["best"] == whole["best"]


# --- A whole sweep -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, synthetic_splits):
    """4 trials in 2 groups, the test labels shifted by one: a trial good on
    validation is bad on test, so selecting by test would pick another."""
    workdir = tmp_path_factory.mktemp("sweep")
    test = synthetic_splits.val
    splits = Splits(
        train=synthetic_splits.train,
        val=synthetic_splits.val,
        test=Split(test.images, (test.labels + 1) % 10),
    )
    space = {
        "learning_rate": Choice((1e-5, 3e-3)),
        "batch_size": Choice((32, 64)),
        "model.dropout": Choice((0.25,)),
    }
    config = SweepConfig(
        small_run_config(model="simple_cnn", epochs=2, noise=NoiseConfig()), space, method="grid"
    )
    summary = sweep.run_sweep(config, splits, workdir, sweep.SweepOptions(progress=False))
    return config, splits, workdir, summary


@pytest.mark.slow
def test_the_best_trial_is_chosen_by_validation_not_test(finished_sweep):
    config, splits, workdir, summary = finished_sweep
    trials = make_trials(config)
    groups = group_trials(trials)
    val = {t.index: summary["trials"][t.index]["best"]["val_accuracy"] for t in trials}
    assert summary["best_trial"] == max(val, key=val.get)
    test_accuracy = {}
    for g, group in enumerate(groups):
        for k, trial in enumerate(group):
            state = sweep.restore_trial_best(
                group, k, splits, workdir / "groups" / f"group_{g:02d}", parallel.data_mesh()
            )
            test_accuracy[trial.index] = steps.evaluate(
                state, splits.test, 50, config.base.step_config()
            )["accuracy"]
    assert max(test_accuracy, key=test_accuracy.get) != summary["best_trial"]
    assert summary["test"]["accuracy"] == pytest.approx(test_accuracy[summary["best_trial"]])
    # best/ is an ordinary run: its best checkpoint loads with the trial's
    # settings and scores as recorded.
    best = trials[summary["best_trial"]]
    state = rundir.restore_best_state(
        best.config, get_model("simple_cnn", **best.model_kwargs), workdir / "best"
    )
    assert steps.evaluate(state, splits.val, 50, config.base.step_config())[
        "accuracy"
    ] == pytest.approx(val[best.index])


@pytest.mark.slow
def test_summary_files_parse_and_tensorboard_has_one_hparams_run_per_trial(finished_sweep):
    config, _, workdir, summary = finished_sweep
    saved = json.loads((workdir / "sweep.json").read_text())
    assert saved["best_trial"] == summary["best_trial"] and len(saved["trials"]) == 4
    assert (
        saved["test"]["confusion_matrix"]
        and np.array(saved["test"]["confusion_matrix"]).sum() == 100
    )
    assert [g["trials"] for g in saved["groups"]] == [[0, 2], [1, 3]]
    with open(workdir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert {"learning_rate", "batch_size", "best_val_accuracy", "val_loss", "best_epoch"} <= set(
        rows[0]
    )
    assert float(rows[1]["learning_rate"]) == 1e-5 and rows[1]["batch_size"] == "64"
    metrics = json.loads((workdir / "best" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == saved["test"]["accuracy"]
    assert (workdir / "best" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    runs = sorted(p.name for p in (workdir / "tensorboard").iterdir())
    assert runs == ["trial_00", "trial_01", "trial_02", "trial_03"]  # No stray runs.
    for run in runs:
        assert not [p for p in (workdir / "tensorboard" / run).iterdir() if p.is_dir()]
        events = EventAccumulator(str(workdir / "tensorboard" / run)).Reload()
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        assert b"learning_rate" in start and b"model.dropout" in start
        assert "hparam/best_val_accuracy" in events.Tags()["scalars"]
        assert [e.step for e in events.Scalars("val/accuracy")][-1] > 0
    table = sweep_report.format_table(
        summary["rows"], list(config.space), "val_accuracy", summary["best_trial"]
    )
    assert f"| {summary['best_trial']} (best) |" in table and table.count("\n") == 5


@pytest.mark.slow
def test_a_finished_sweep_resumes_without_training_and_is_refused_without_resume(
    finished_sweep, capsys
):
    config, splits, workdir, summary = finished_sweep
    with pytest.raises(ResumeError, match="already holds a sweep"):
        sweep.run_sweep(config, splits, workdir, sweep.SweepOptions(progress=False))
    again = sweep.run_sweep(
        config, splits, workdir, sweep.SweepOptions(resume=True, progress=False)
    )
    assert capsys.readouterr().out.count("finished before, reused") == 2
    assert again["best_trial"] == summary["best_trial"] and again["test"] == summary["test"]


@pytest.mark.slow
def test_a_budget_skips_the_groups_it_cannot_start(synthetic_splits, tmp_path):
    space = {"batch_size": Choice((32, 64))}
    summary = sweep.run_sweep(
        _sweep(space, method="grid"),
        synthetic_splits,
        tmp_path,
        sweep.SweepOptions(budget_seconds=0.0, progress=False),
    )  # The first group always runs.
    assert [g["status"] for g in summary["groups"]] == ["done", "skipped (budget)"]
    assert [r["status"] for r in summary["rows"]] == ["done", "skipped (budget)"]


def test_wandb_log_makes_one_run_per_trained_trial_with_its_history(tmp_path, monkeypatch):
    """The logging logic on a stand-in for the wandb package (the real one,
    offline, is the slow test below)."""
    import sys
    import types

    from mnist_jax import wandb_log

    runs = []

    class Run:
        def __init__(self, **kwargs):
            self.init, self.logged, self.summary, self.finished = kwargs, [], {}, False
            runs.append(self)

        def log(self, values, step=None):
            self.logged.append((step, values))

        def finish(self):
            self.finished = True

    torn_down = []
    stand_in = types.SimpleNamespace(
        init=lambda **kwargs: Run(**kwargs),
        Table=lambda columns, data: ("table", columns, data),
        teardown=lambda: torn_down.append([r.finished for r in runs]),
    )
    monkeypatch.setitem(sys.modules, "wandb", stand_in)
    history = [
        {"epoch": 1, "step": 5, "val_accuracy": 0.5},
        {"epoch": 2, "step": 10, "val_accuracy": 0.75},
    ]

    def trial(i):
        return {
            "trial": i,
            "params": {"learning_rate": 0.1 * (i + 1)},
            "config": {"seed": i},
            "model_kwargs": {},
            "history": history,
            "best": {"epoch": 2, "val_accuracy": 0.75},
        }

    summary = {
        "trials": [trial(0), trial(1), {"trial": 2, "status": "skipped (budget)"}],
        "best_trial": 1,
        "test": {"accuracy": 0.7, "confusion_matrix": [[1, 0], [0, 1]]},
    }
    wandb_log.log_sweep(summary, "project", tmp_path / "wandb", "unit")
    assert [r.init["name"] for r in runs] == ["trial_00", "trial_01"] and all(
        r.finished for r in runs
    )
    assert torn_down == [[True, True]]  # Once, after every run has finished.
    assert runs[1].init["config"]["learning_rate"] == 0.2 and runs[0].init["group"] == "unit"
    assert [step for step, _ in runs[0].logged] == [1, 2] and "epoch" not in runs[0].logged[0][1]
    assert runs[0].summary == {"best_epoch": 2, "best_val_accuracy": 0.75}
    assert runs[1].summary["test_accuracy"] == 0.7 and "test_accuracy" not in runs[0].summary
    assert runs[1].logged[-1][1]["test_confusion_matrix"][0] == "table"


@pytest.mark.slow
def test_wandb_logs_one_offline_run_per_trial(finished_sweep, tmp_path, monkeypatch):
    from mnist_jax import wandb_log

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, _, _, summary = finished_sweep
    wandb_log.log_sweep(summary, "mnist-jax-test", tmp_path, "unit")
    logs = [
        next(run.glob("*.wandb")).read_bytes() for run in (tmp_path / "wandb").glob("offline-run-*")
    ]
    assert (
        len(logs) == 4
    )  # One run per trial; the offline log holds its config, history and summary.
    names = [f"trial_{t:02d}".encode() for t in range(4)]
    assert sorted(n for log in logs for n in names if n in log) == names
    for log in logs:
        assert b"learning_rate" in log and b"val_accuracy" in log and b"best_val_accuracy" in log
    best = [log for log in logs if f"trial_{summary['best_trial']:02d}".encode() in log]
    assert [b"test_accuracy" in log for log in logs].count(True) == 1 and b"test_accuracy" in best[
        0
    ]


@pytest.mark.slow
def test_wandb_is_not_imported_unless_asked_for():
    code = "import sys, experiments.sweep, mnist_jax.sweep; assert 'wandb' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


# --- The command line ----------------------------------------------------------------------------


def test_a_sweep_saved_before_a_config_field_existed_still_resumes(tmp_path):
    sweep = _sweep({"learning_rate": Choice((1e-3, 1e-2))}, method="grid")
    sweep_experiment.check_same_sweep(tmp_path, sweep, resume=False)
    saved = json.loads((tmp_path / "sweep_config.json").read_text())
    del saved["base"]["keep_best"]  # As a sweep written before the field was added.
    (tmp_path / "sweep_config.json").write_text(json.dumps(saved))
    sweep_experiment.check_same_sweep(tmp_path, sweep, resume=True)  # Its default: the same sweep.
    other = _sweep({"learning_rate": Choice((1e-3, 1e-1))}, method="grid")
    with pytest.raises(ResumeError, match="defines another sweep"):
        sweep_experiment.check_same_sweep(tmp_path, other, resume=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--param", "bogus=1"], "cannot sweep 'bogus'"),
        (
            ["--method", "grid", "--param", "learning_rate=log:1e-4:1e-2"],
            "a grid needs a list of values",
        ),
        (["--trials", "0"], "number of --trials must be >= 1"),
        (["--budget-minutes", "-1"], "--budget-minutes must be > 0"),
        (["--max-group-size", "0"], "--max-group-size must be >= 1"),
        (["--model", "cnn", "--param", "model.dropout=0.1"], "cnn has no hyperparameter 'dropout'"),
    ],
)
def test_bad_flags_fail_before_loading_data(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_experiment.main(
            [*flags, "--workdir", str(tmp_path), "--data-dir", str(tmp_path / "none")]
        )
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.real_data
def test_sweep_quick_on_real_mnist_writes_its_table_and_resumes(
    tmp_path, real_source, real_mnist, capsys
):
    flags = [
        "--quick",
        "--workdir",
        str(tmp_path),
        *real_source.flags,
        "--no-progress",
    ]
    summary = sweep_experiment.main(flags)
    out = capsys.readouterr().out
    assert len(summary["trials"]) == sweep_experiment.QUICK_TRIALS
    assert (
        "99.10 %" in out and f"{100 * summary['test']['accuracy']:.2f} %" in out
    )  # Report beside ours.
    assert summary["test"]["accuracy"] > 0.6 and "(best)" in out
    assert {"sweep.json", "trials.csv", "best", "groups", "tensorboard", "sweep_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    with pytest.raises(SystemExit):
        sweep_experiment.main(flags)  # Refused: nothing is overwritten.
    assert "already holds a sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep_experiment.main([*flags, "--resume", "--trials", "5"])
    assert "defines another sweep" in capsys.readouterr().err
    again = sweep_experiment.main([*flags, "--resume"])  # Finished: nothing to do.
    assert "is a finished run" in capsys.readouterr().out
    assert (
        again["test"] == json.loads(json.dumps(summary["test"]))
        and again["best_trial"] == summary["best_trial"]
    )
