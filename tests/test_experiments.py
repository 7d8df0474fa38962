"""The experiment registry and the experiments' command lines, on the real MNIST."""

import importlib
import json
import pkgutil

import pytest

import experiments
from experiments import benchmark, cnn
from mnist_jax import data, models, train
from tests.conftest import REAL_TFDS_DIR


def test_every_experiment_module_is_registered_and_has_main():
    modules = {m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_")}
    assert modules == set(experiments.EXPERIMENTS)
    for name in modules:
        module = importlib.import_module(f"experiments.{name}")
        assert callable(module.main) and "python -m experiments." in module.__doc__


def test_listing(capsys):
    importlib.reload(importlib.import_module("experiments.__main__"))
    out = capsys.readouterr().out
    assert all(name in out for name in experiments.EXPERIMENTS)


def test_cnn_quick_run(tmp_path, real_mnist, capsys):
    summary = cnn.main(["--quick", "--workdir", str(tmp_path), "--data-dir", str(REAL_TFDS_DIR),
                        "--no-progress"])
    out = capsys.readouterr().out
    assert "99.38 %" in out and f"{100 * summary['test']['accuracy']:.2f} %" in out  # report beside ours
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["experiment"] == "cnn" and saved["data"]["test"] == 1000
    assert saved["reference"]["accuracy"] == 0.9938
    assert saved["test"]["accuracy"] > 0.8  # 1 epoch on 2,700 images


def test_quick_run_resumes_to_the_same_result(tmp_path, real_mnist):
    args = ["--quick", "--workdir", str(tmp_path), "--data-dir", str(REAL_TFDS_DIR), "--no-progress"]
    first = cnn.main(args)
    with pytest.raises(SystemExit):  # The run exists: refused without --resume.
        cnn.main(args)
    again = cnn.main(args + ["--resume"])  # Finished: resuming only re-evaluates.
    assert again["test"] == first["test"]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--batch-size", "-4"], "batch_size must be >= 1"),
    (["--noise", "gaussian", "--noise-level", "-1"], "out of range"),
])
def test_bad_flags_fail_before_training(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cnn.main(["--workdir", str(tmp_path)] + flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_data_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cnn.main(["--quick", "--workdir", str(tmp_path / "run"), "--idx-dir", str(tmp_path / "none")])
    assert exit_info.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_one_epoch_on_real_mnist_reaches_97_percent(tmp_path, real_mnist):
    """The report's CNN and settings, one epoch on the full training split."""
    splits = data.make_splits(real_mnist, val_fraction=0.1, seed=0)
    config = train.TrainConfig(epochs=1)
    result = train.train_and_evaluate(config, models.get_model("cnn"), splits, tmp_path,
                                      experiment="one-epoch", progress=False)
    assert len(splits.train) >= 10_000
    assert result["test"]["accuracy"] >= 0.97, result["test"]["accuracy"]


def test_benchmark_quick(tmp_path, real_mnist, capsys):
    result = benchmark.main(["--quick", "--data-dir", str(REAL_TFDS_DIR), "--output", str(tmp_path / "b.json")])
    assert result["examples_per_second"]["step_alone"] > 0 and result["compile_seconds"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["model"] == "cnn"
    assert "examples/s" in capsys.readouterr().out
