"""The experiment registry and the experiments' command lines, on the real MNIST."""

import importlib
import json
import pkgutil

import numpy as np
import pytest

import experiments
from experiments import alexnet, cnn
from mnist_jax import pretrained
from mnist_jax.cli import QUICK_NOTE


def test_every_experiment_module_is_registered_and_has_main():
    modules = {
        m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_")
    }
    assert modules == set(experiments.names()) == set(experiments.summaries())
    for name, summary in experiments.summaries().items():
        module = importlib.import_module(f"experiments.{name}")
        assert callable(module.main) and f"python -m experiments.{name}" in module.__doc__
        assert 20 < len(summary) <= 100 and summary.endswith("."), (name, summary)


def test_the_lists_of_model_experiments_derive_from_the_registries():
    assert set(experiments.model_experiments()) == {
        "cnn",
        "simple_cnn",
        "deep_cnn",
        "vit",
        "vgg16",
        "alexnet",
        "linear_ae",
        "conv_ae",
    }
    assert set(experiments.classifier_experiments()) == {
        "cnn",
        "deep_cnn",
        "vgg16",
        "alexnet",
        "vit",
        "simple_cnn",
    }


def test_listing(capsys):
    importlib.reload(importlib.import_module("experiments.__main__"))
    out = capsys.readouterr().out
    assert all(
        f"{name}  " in out and summary in out for name, summary in experiments.summaries().items()
    )


@pytest.mark.slow
def test_cnn_quick_run_is_refused_again_and_resumes_to_the_same_result(quick_runs, capsys):
    run = quick_runs.get("cnn")
    summary, workdir = run["summary"], run["workdir"]
    assert "99.38 %" in run["out"] and f"{100 * summary['test']['accuracy']:.2f} %" in run["out"]
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["experiment"] == "cnn" and saved["data"]["test"] == 1000
    assert saved["reference"]["accuracy"] == 0.9938
    # 2 epochs on 4,500 images: well under the full run (docs/results.md), well over chance.
    assert saved["test"]["accuracy"] > 0.92
    args = quick_runs.args("cnn")
    with pytest.raises(SystemExit):  # The run exists: refused without --resume.
        cnn.main(args)
    again = cnn.main(args + ["--resume"])  # Finished: nothing to do (tests/test_cli.py).
    assert again["test"] == json.loads(json.dumps(summary["test"]))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--batch-size", "-4"], "--batch-size must be >= 1"),
        (["--noise", "gaussian", "--noise-level", "-1"], "--noise-level must be"),
        (["--rotation", "-5"], "--rotation must be"),
        (["--zoom", "1.5"], "--zoom must be"),
        (["--elastic", "-1"], "--elastic must be"),
        (["--elastic", "34", "--elastic-sigma", "0"], "--elastic-sigma must be"),
        (["--ema-decay", "1"], "--ema-decay must be"),
        (["--label-smoothing", "-0.1"], "--label-smoothing must be"),
    ],
)
def test_bad_flags_fail_before_training(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cnn.main(["--workdir", str(tmp_path)] + flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_data_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cnn.main(
            ["--quick", "--workdir", str(tmp_path / "run"), "--idx-dir", str(tmp_path / "none")]
        )
    assert exit_info.value.code == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_speedrun_quick_trains_the_speed_cnn_and_reports_compile_time_apart(
    tmp_path, real_source, real_mnist, capsys
):
    from experiments import speedrun

    result = speedrun.main(["--quick", *real_source.flags, "--output", str(tmp_path / "s.json")])
    (run,) = result["runs"]  # --quick: one seed.
    assert run["seed"] == 0 and run["steps"] == 16  # 2,000 images at batch 128.
    assert run["compile_seconds"] > 0 and run["train_seconds"] > 0
    assert run["test_accuracy"] > 0.8  # 32 steps of the one-cycle schedule already learn.
    assert result["all_reached"] == (run["test_accuracy"] >= 0.99)
    out = capsys.readouterr().out
    assert "tuomaso" in out and f"{100 * run['test_accuracy']:.2f}%" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in experiments.model_experiments() if n != "cnn"])
def test_quick_run_of_every_experiment(name, quick_runs):
    run = quick_runs.get(name)
    module, out, workdir = (
        importlib.import_module(f"experiments.{name}"),
        run["out"],
        run["workdir"],
    )
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["experiment"] == name and saved["test"] == json.loads(
        json.dumps(run["summary"]["test"])
    )
    assert "| report (" in out and f"{saved['train_seconds']:.2f}" in out
    if "accuracy" in saved["test"]:
        assert f"{100 * module.REFERENCE.accuracy:.2f} %" in out  # The report's number beside ours.
        assert f"{100 * saved['test']['accuracy']:.2f} %" in out
        figures = ("curves.png", "confusion_matrix.png", "misclassified.png")
    else:
        assert saved["test"]["mse"] < 0.1 and f"{saved['test']['psnr']:.2f}" in out
        figures = ("curves.png", "reconstructions.png")
    for figure in figures:
        assert (workdir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert "curves.png" in out  # Listed with the run's files.
    assert QUICK_NOTE in out  # A smoke test's accuracy is not read as the model's.
    assert (workdir / "tensorboard" / "projector_config.pbtxt").is_file()
    assert all(np.isfinite(r["learning_rate"]) for r in saved["history"])


@pytest.mark.slow
def test_transfer_without_weights_is_labelled_random_init(quick_runs):
    run = quick_runs.get("alexnet")  # --quick defaults to --weights none.
    saved = json.loads((run["workdir"] / "metrics.json").read_text())
    assert saved["weights"].startswith("none (random init")
    assert "this run (random init)" in run["out"]


def test_transfer_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        pretrained.PUBLISHED,
        "alexnet",
        pretrained.PublishedWeights(
            "http://unreachable.invalid/alexnet-owt-7be5be79.pth", "7be5be79"
        ),
    )
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path / "cache"))
    # No MNIST there: the weights are resolved first, and their error is the one shown.
    no_data = ["--data-dir", str(tmp_path / "no-data")]
    with pytest.raises(SystemExit) as exit_info:
        alexnet.main(["--workdir", str(tmp_path / "run"), *no_data])
    assert exit_info.value.code == 1
    assert "--weights none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_frozen_features_are_the_same_in_full_batches_and_the_short_last_one():
    """extract_features runs full batches, then the rest padded only to a
    multiple of 8: every image's features are what it gets alone."""
    from mnist_jax import frozen_features, models

    model = models.get_model("vgg16", image_size=32)
    params = frozen_features.feature_params_of(model, None, seed=0)
    extractor = frozen_features.make_feature_extractor(model)
    images = np.random.default_rng(0).integers(0, 256, (21, 28, 28, 1)).astype(np.uint8)
    features = frozen_features.extract_features(
        extractor, params, images, batch_size=8
    )  # 8 + 8 + 5 (padded to 8).
    alone = [
        np.asarray(extractor(params, np.repeat(image[None], 8, axis=0)))[0]
        for image in images[[0, 9, 17, 20]]
    ]
    assert features.shape == (21, 1, 1, 512)
    np.testing.assert_array_equal(features[[0, 9, 17, 20]], np.stack(alone))


@pytest.mark.slow
def test_transfer_from_a_weights_file_with_and_without_cached_features(
    tmp_path, real_source, real_mnist
):
    """A torchvision-layout file loads; cached features give the run the frozen network gives."""
    import torch

    from tests import torch_reference

    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torch_reference.alexnet(num_classes=1000).state_dict(), path)
    common = [
        "--quick",
        "--weights",
        str(path),
        *real_source.flags,
        "--no-progress",
        "--batch-size",
        "100",
    ]
    cached = alexnet.main(common + ["--workdir", str(tmp_path / "cached")])
    direct = alexnet.main(common + ["--workdir", str(tmp_path / "direct"), "--no-cache-features"])
    assert cached["weights"].startswith("ImageNet, torchvision (alexnet.pth)")
    assert cached["cached_features"] and not direct["cached_features"]
    assert abs(cached["test"]["loss"] - direct["test"]["loss"]) < 1e-3
    assert cached["test"]["accuracy"] == pytest.approx(direct["test"]["accuracy"], abs=0.01)


@pytest.mark.slow
def test_few_labels_quick_compares_every_method_and_resumes(
    tmp_path, real_source, real_mnist, capsys
):
    from experiments import few_labels

    args = [
        "--quick",
        "--workdir",
        str(tmp_path),
        *real_source.flags,
        "--no-progress",
    ]
    results = few_labels.main(args)
    out = capsys.readouterr().out
    runs = {(r["labels"], r["method"]): r for r in results["runs"]}
    assert set(runs) == {(n, m) for n in (100,) for m in few_labels.METHODS}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs.values())
    assert f"{100 * runs[100, 'frozen']['test_accuracy']:.2f} %" in out
    assert (tmp_path / "accuracy_vs_labels.png").is_file()
    saved = json.loads((tmp_path / "few_labels.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(results["runs"]))
    # Only the frozen run leaves the encoder out of training.
    model = {
        m: json.loads((tmp_path / "n100" / m / "metrics.json").read_text())["model"]
        for m in ("frozen", "fine-tuned")
    }
    assert model["frozen"]["trainable_parameters"] < model["frozen"]["parameters"]
    assert model["fine-tuned"]["trainable_parameters"] == model["fine-tuned"]["parameters"]
    # Everything finished: --resume recomputes nothing and gives the same table.
    capsys.readouterr()
    again = few_labels.main(args + ["--resume"])
    assert "is a finished run" in capsys.readouterr().out
    assert again["runs"] == json.loads(json.dumps(results["runs"]))


@pytest.mark.slow
def test_noisy_chain_quick_scores_every_pair_resumes_and_denoising_helps(
    tmp_path, real_source, real_mnist, capsys
):
    from experiments import noisy

    args = [
        "--quick",
        "--workdir",
        str(tmp_path),
        *real_source.flags,
        "--no-progress",
    ]
    results = noisy.main(args)
    out = capsys.readouterr().out
    scores = results["scores"]
    assert set(scores) == set(noisy.CLASSIFIERS)
    for by_set in scores.values():
        assert set(by_set) == set(noisy.TEST_SETS)
        for score in by_set.values():
            assert np.sum(score["confusion_matrix"]) == 500 and len(score["per_class"]) == 10
            assert 0 < score["f1_macro"] <= 1 and score["loss"] > 0
    # Noise hurts the clean-trained CNN; the denoiser gives part of it back.
    clean_cnn = scores["clean-trained"]
    assert (
        clean_cnn["noisy"]["accuracy"]
        < clean_cnn["denoised"]["accuracy"]
        < clean_cnn["clean"]["accuracy"] + 0.02
    )
    quality = results["quality"]
    assert quality["denoised"]["psnr"] > quality["noisy"]["psnr"] + 3
    assert quality["denoised"]["ssim"] > quality["noisy"]["ssim"]
    # The curve's noise is the chain's fixed test noise: sigma 0 is the clean
    # test set, sigma 0.5 the noisy one.
    points = {p["sigma"]: p for p in results["robustness"]["points"]}
    assert sorted(points) == [0.0, 0.5, 1.0]
    assert points[0.0]["clean-trained CNN, noisy input"] == clean_cnn["clean"]["accuracy"]
    assert (
        points[0.5]["noisy-trained CNN, noisy input"]
        == scores["noisy-trained"]["noisy"]["accuracy"]
    )
    for name in (
        "noisy.json",
        "robustness.png",
        "samples.png",
        "confusion_matrices.png",
        "3_denoised/denoised.npz",
        *(f"{stage}/metrics.json" for stage in noisy.STAGES),
    ):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "99.10 %" in out and f"{100 * clean_cnn['clean']['accuracy']:.2f} %" in out

    with pytest.raises(SystemExit):  # The chain exists: refused without --resume.
        noisy.main(args)
    assert "--resume" in capsys.readouterr().err
    saved = (tmp_path / "noisy.json").read_bytes()
    again = noisy.main(args + ["--resume"])  # Finished: nothing to do.
    assert (
        "is a finished run" in capsys.readouterr().out
        and (tmp_path / "noisy.json").read_bytes() == saved
    )
    assert again["scores"] == json.loads(json.dumps(scores))
    again = noisy.main(args + ["--rescore"])  # Scored again, every stage reused.
    out = capsys.readouterr().out
    assert out.count("finished; reusing") == 4 and "3_denoised: reusing" in out
    assert again["scores"] == json.loads(json.dumps(scores))
    assert json.loads((tmp_path / "noisy.json").read_text())["quality"] == quality

    # A clean run trained otherwise is refused before anything trains.
    with pytest.raises(SystemExit) as exit_info:
        noisy.main(
            [
                "--quick",
                "--workdir",
                str(tmp_path / "other"),
                *real_source.flags,
                "--clean-run",
                str(tmp_path / "1_noisy_cnn"),
                "--no-progress",
            ]
        )
    assert exit_info.value.code == 2
    assert "noise.level: saved 0.5, now 0.0" in capsys.readouterr().err
    assert not any((tmp_path / "other").glob("1_*"))


@pytest.mark.slow
def test_best_quick_trains_each_seed_scores_their_ensemble_and_reads_them_back(
    tmp_path, real_source, real_mnist, capsys
):
    from experiments import best, compare
    from mnist_jax import data as data_lib

    root = tmp_path / "best"
    args = [
        "--quick",
        "--ensemble",
        "2",
        "--workdir",
        str(root),
        *real_source.flags,
        "--no-progress",
    ]
    result = best.main(args)
    saved = [json.loads((root / f"seed{seed}" / "metrics.json").read_text()) for seed in (0, 1)]
    assert [r["seed"] for r in result["seeds"]] == [0, 1]
    assert [r["test_accuracy"] for r in result["seeds"]] == [s["test"]["accuracy"] for s in saved]
    assert all(
        s["config"]["ema_decay"] == 0.999 and s["config"]["augment"]["rotation"] == 10
        for s in saved
    )
    assert all(
        "val_raw_accuracy" in s["history"][-1] for s in saved
    )  # The average was what was validated.
    assert result["accuracy_mean"] == pytest.approx(np.mean([s["test"]["accuracy"] for s in saved]))
    ensemble = result["ensemble"]
    assert (
        ensemble["size"] == 2
        and ensemble["test_images"] == 1000
        and 0.5 < ensemble["test_accuracy"] <= 1
    )
    assert json.loads((root / "best.json").read_text()) == json.loads(json.dumps(result))
    out = capsys.readouterr().out
    assert (
        "Deotte" in out and "99.38 %" in out and f"{100 * ensemble['test_accuracy']:.2f} %" in out
    )
    machine = saved[0]["devices"][
        "host"
    ]  # best.json names the machine, as each seed's metrics.json does.
    assert (
        all(machine in r["device"] for r in result["seeds"])
        and f"trained on 1 x cpu ({machine})" in out
    )

    # An ensemble of one model twice is that model: its softmax path scores
    # seed 0's test images as its training run's evaluation did.
    test = data_lib.make_splits(real_mnist, seed=0, train_size=5000, test_size=1000).test
    alone = best.score_ensemble([root / "seed0"] * 2, test)
    assert alone["test_accuracy"] == pytest.approx(saved[0]["test"]["accuracy"], abs=1e-9)

    assert best.main(args) == result  # Finished: read back, nothing trained.
    assert capsys.readouterr().out.count("finished earlier") == 2
    with pytest.raises(SystemExit) as exit_info:  # Another recipe is not these seeds' runs.
        best.main([*args, "--epochs", "3"])
    assert exit_info.value.code == 2 and "epochs: saved 2, now 3" in capsys.readouterr().err

    rows = {
        r["label"]: r
        for r in compare.main(["--runs-dir", str(tmp_path), "--models", "best"])["rows"]
    }
    assert list(rows) == ["best (quick)", "best (quick, ensemble of 2)"], rows
    assert (
        rows["best (quick)"]["runs"] == 2
        and rows["best (quick)"]["accuracy"] == result["accuracy_mean"]
    )
    ensemble_row = rows["best (quick, ensemble of 2)"]
    assert ensemble_row["accuracy"] == ensemble["test_accuracy"] and ensemble_row["seeds"] == [0, 1]
    assert ensemble_row["parameters"] == 2 * 326_410
    # Another ensemble of the same label (another machine's, say) gets a row
    # of its own, each named by its file.
    other = json.loads((root / "best.json").read_text())
    other["ensemble"]["test_accuracy"] -= 0.001
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "best.json").write_text(json.dumps(other))
    rows = {
        r["label"]: r
        for r in compare.main(["--runs-dir", str(tmp_path), "--models", "best"])["rows"]
    }
    own = f"best (quick, ensemble of 2, {(root / 'best.json').relative_to(tmp_path)})"
    assert own in rows and rows[own]["accuracy"] == ensemble["test_accuracy"], list(rows)
    assert (
        rows["best (quick, ensemble of 2, other/best.json)"]["accuracy"]
        == other["ensemble"]["test_accuracy"]
    )
