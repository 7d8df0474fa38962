"""The measuring harness (benchmarks/) through its command, `python -m experiments.benchmark`:
each mode's --quick run on the real MNIST, its flags, its output files."""

import json

import jax
import numpy as np
import pytest

from experiments import benchmark


@pytest.mark.slow
def test_benchmark_quick(tmp_path, real_source, real_mnist, capsys):
    result = benchmark.main(["--quick", *real_source.flags, "--output", str(tmp_path / "b.json")])
    assert set(result["examples_per_second"]) == {"step_alone", "host_data", "device_data_scan"}
    assert min(result["examples_per_second"].values()) > 0 and result["compile_seconds"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["model"] == "cnn"
    assert "examples/s" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_overhead_quick_times_whole_commands_phase_by_phase(
    tmp_path, real_source, real_mnist, capsys
):
    result = benchmark.main(
        [
            "--overhead",
            "--quick",
            *real_source.flags,
            "--output",
            str(tmp_path / "o.json"),
        ]
    )
    commands, short = result["commands"], "cnn --quick --epochs 1"
    assert set(commands) == {"import", short, "predict"} and result["repeats"] == 1
    for which in ("first", "second"):
        run = commands[short][which]
        assert {"wall", "data", "init", "compile", "train", "test", "figures", "rest"} <= set(run)
        assert (
            run["wall"] > run["train"] > 0 and run["rest"] > 0
        )  # The rest: imports, parsing, printing.
        assert commands["predict"][which]["wall"] > 0
    # The second run finds its programs in the compilation cache.
    assert commands[short]["second"]["compile"] < commands[short]["first"]["compile"]
    assert {g["goal"] for g in result["goals"]} == {
        "predict one image: wall (first run)",
        "predict one image: wall (second run)",
    }
    assert json.loads((tmp_path / "o.json").read_text())["commands"] == json.loads(
        json.dumps(commands)
    )
    assert "| compile |" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_sweep_quick_times_trials_together_and_one_after_another(
    tmp_path, real_source, real_mnist, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # Written to its own default file: not the plain benchmark's.
    result = benchmark.main(["--sweep", "--quick", "--strategies", "vmap", *real_source.flags])
    assert set(result["timings"]) == {"sequential", "vmap"} and result["trials"] == 2
    assert result["timings"]["sequential"]["speedup_vs_sequential"] == 1.0
    assert all(t["wall_seconds"] > t["compile_seconds"] > 0 for t in result["timings"].values())
    assert json.loads((tmp_path / "runs/benchmark/sweep.json").read_text())["model"] == "simple_cnn"
    assert [p.name for p in (tmp_path / "runs/benchmark").iterdir()] == ["sweep.json"]
    out = capsys.readouterr().out
    assert "together, vmapped" in out and "written to runs/benchmark/sweep.json" in out


@pytest.mark.slow
def test_benchmark_vs_torch_quick_alternates_both_frameworks_in_their_own_processes(
    tmp_path, real_source, real_mnist, capsys
):
    result = benchmark.main(
        [
            "--vs-torch",
            "--quick",
            "--models",
            "linear_ae",
            *real_source.flags,
            "--output",
            str(tmp_path / "vs.json"),
        ]
    )
    (row,) = result["models"]
    assert row["model"] == "linear_ae" and row["batch_size"] == 64
    for side in ("jax", "torch"):
        assert len(row[side]["rounds"]) == 1 and row[side]["examples_per_second"] > 0
        assert (
            row[side]["peak_rss_mib"] > 100
        )  # A process of its own: its framework and data at least.
    assert "torch" in row["torch"]["device"] and row["jax"]["compile_seconds"] > 0
    assert row["speedup"] == pytest.approx(
        row["jax"]["examples_per_second"] / row["torch"]["examples_per_second"]
    )
    assert json.loads((tmp_path / "vs.json").read_text())["kind"] == "vs_torch"
    assert "| linear_ae" in capsys.readouterr().out


def test_benchmark_vs_torch_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--vs-torch", "--models", "cnn,resnet"])
    assert exit_info.value.code == 2 and "resnet" in capsys.readouterr().err


def test_each_mode_writes_a_file_of_its_own_and_the_help_names_each():
    from benchmarks import cli

    assert len(set(cli.OUTPUTS.values())) == len(cli.OUTPUTS) == len(cli.MODE_FLAGS) + 1
    help_text = " ".join(cli.build_parser().format_help().split())
    assert all(str(cli.OUTPUT_DIR / name) in help_text for name in cli.OUTPUTS.values())
    for mode, flag in cli.MODE_FLAGS.items():
        assert f"with {flag} {cli.OUTPUT_DIR / cli.OUTPUTS[mode]}" in help_text
        assert cli.mode_of(cli.build_parser().parse_args([flag])) == mode
    assert cli.mode_of(cli.build_parser().parse_args([])) == "steps"


def test_the_modes_are_one_at_a_time(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--sweep", "--vs-torch"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_only_vs_torch_needs_torch(monkeypatch, capsys):
    """The other modes never ask for the PyTorch baselines (which import torch)."""
    from benchmarks import vs_torch
    from mnist_jax import sources

    class Loading(Exception):
        pass

    def no_torch():
        raise ValueError("--vs-torch needs PyTorch (No module named 'torch')")

    def load_mnist(**kwargs):
        raise Loading  # The flags are checked: the run would start here.

    monkeypatch.setattr(vs_torch, "models", no_torch)
    monkeypatch.setattr(sources, "load_mnist", load_mnist)
    for flags in ([], ["--sweep"], ["--overhead"]):
        with pytest.raises(Loading):
            benchmark.main(flags)
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--vs-torch"])
    assert exit_info.value.code == 2 and "needs PyTorch" in capsys.readouterr().err


def small_trainer(steps: int, **fields):
    """Our side of --vs-torch on 40 random images, batch 16 (3 steps an epoch, the
    last one padded), and the members of a training run of the same config."""
    from benchmarks.jax_trainer import JaxTrainer
    from mnist_jax import models
    from mnist_jax.config import TrainConfig
    from mnist_jax.members import Single

    config = TrainConfig(model="simple_cnn", batch_size=16, seed=3, **fields)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 40).astype(np.int32)
    return JaxTrainer(config, images, labels, steps), Single(config, models.get_model("simple_cnn"))


def test_the_jax_side_of_the_comparison_shuffles_and_batches_as_a_training_run():
    trainer, run = small_trainer(steps=2)
    # A training run's first two epochs, each ending in its padded batch.
    epochs = [run.epoch_batches(epoch, 40) for epoch in (0, 1)]
    expected = [np.concatenate([e[k] for e in epochs]) for k in (0, 1)]  # (6, 16) each
    calls = [trainer.batches(2) for _ in range(3)]  # The calls go on into the next epoch.
    for k, what in enumerate(("indices", "masks")):
        np.testing.assert_array_equal(np.concatenate([c[k] for c in calls]), expected[k], what)
    assert expected[1].sum() == 2 * 40  # Every example once an epoch.


def test_the_jax_side_trains_through_the_runner_of_its_data_placement():
    """On the CPU the host runner (one call a step, batches gathered there);
    on request the device runner, each call one scan compiled ahead of time;
    both train alike on the same batches."""
    trained = {}
    for placement in ("auto", "device"):
        trainer, _ = small_trainer(steps=2, data_placement=placement)
        assert trainer.runner.name == {"auto": "host", "device": "device"}[placement]
        assert trainer.compile() > 0
        assert all(trainer.run(2) > 0 for _ in range(2))
        assert len(trainer.runner.program.programs) == 1  # Nothing compiled while timed.
        assert int(trainer.state.step) == 4 and (trainer.epoch, trainer.position) == (1, 1)
        trained[placement] = jax.device_get(trainer.state.params)
    jax.tree.map(
        lambda h, d: np.testing.assert_allclose(h, d, rtol=1e-4, atol=1e-5),
        trained["auto"],
        trained["device"],
    )


@pytest.mark.slow
def test_the_drawing_pages_server_answers_8_clients_of_200_drawings_without_error(
    quick_runs, tmp_path, capsys
):
    """The load test of docs/performance.md, whole (2 rounds): every answer
    a digit, memory flat from round to round, and Ctrl-C stops the server
    cleanly after it."""
    run_dir = quick_runs.get("cnn")["workdir"]
    output = tmp_path / "serve.json"
    flags = ["--serve", "--clients", "8", "--requests", "200", "--rounds", "2"]
    result = benchmark.main([*flags, "--checkpoint", str(run_dir), "--output", str(output)])
    assert json.loads(output.read_text()) == result
    for loaded in result["many_clients"]:
        assert (loaded["clients"], loaded["requests"], loaded["errors"]) == (8, 1600, 0), loaded
        assert 0 < loaded["p50_ms"] <= loaded["p99_ms"] <= loaded["max_ms"]
    assert result["one_client"]["errors"] == 0 and result["one_client"]["requests"] == 200
    assert result["stopped_cleanly"], result["server_errors"]
    memory = result["resident_mib"]  # After the warm-up, one client, each of 2 rounds.
    assert len(memory) == 4 and memory[-1] - memory[2] < 16, memory  # Flat once loaded.
    assert "server resident memory" in capsys.readouterr().out
