"""The experiments that look rather than train: eda, feature_maps and compare."""

import csv
import importlib
import json
import pathlib
import types

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments import cnn, compare, eda, feature_maps
from mnist_jax import data
from tests.conftest import ROOT


def assert_png(path, min_side: int = 100) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side, path
        return image.size


@pytest.mark.slow
def test_eda_quick_counts_every_split_and_writes_its_figures(
    tmp_path, real_source, real_mnist, capsys
):
    result = eda.main(["--quick", "--workdir", str(tmp_path), *real_source.flags])
    out = capsys.readouterr().out
    splits = result["splits"]
    subset = {
        name: len(data.stratified_subset(getattr(real_mnist, name).labels, size, 0))
        for name, size in (("train", 1000), ("test", 500))
    }
    assert splits["train"]["images"] + splits["val"]["images"] == subset["train"] > 990
    assert splits["test"]["images"] == subset["test"] > 490
    for split in splits.values():
        assert sum(split["label_counts"]) == split["images"] and min(split["label_counts"]) > 0
        assert (
            0.1 < split["mean"] < 0.16
            and 0.28 < split["std"] < 0.34
            and split["zero_fraction"] > 0.7
        )
    assert json.loads((tmp_path / "eda.json").read_text())["splits"] == splits
    for name in ("label_distribution", "samples_per_label", "pixel_statistics"):
        assert_png(tmp_path / f"{name}.png")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert set(events.Tags()["images"]) == {
        "eda/label_distribution",
        "eda/samples_per_label",
        "eda/pixel_statistics",
    }
    assert "0.1307" in out and "60,000" in out  # The reports' numbers beside ours.


def test_eda_refuses_a_bad_validation_fraction(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eda.main(["--val-fraction", "1.5", "--workdir", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--val-fraction" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_feature_maps_of_a_test_image(quick_runs, real_source, real_mnist, capsys):
    run_dir = quick_runs.get("cnn")["workdir"]
    result = feature_maps.main(
        [
            "--checkpoint",
            str(run_dir),
            "--index",
            "3",
            *real_source.flags,
            "--channels",
            "16",
        ]
    )
    out_dir = run_dir / "feature_maps" / "index_3"
    assert result["label"] == int(real_mnist.test.labels[3]) and 0 <= result["predicted"] <= 9
    assert list(result["layers"]) == [
        "ConvBlock_0/Conv_0",
        "ConvBlock_1/Conv_0",
        "ConvBlock_2/Conv_0",
    ]
    assert result["layers"]["ConvBlock_1/Conv_0"]["shape"] == [14, 14, 64]
    # 16 channels shown: 2 rows of 8 panels.
    assert assert_png(out_dir / "02_ConvBlock_1_Conv_0.png") == (960, 290)
    assert_png(out_dir / "input.png", min_side=28)
    assert (
        json.loads((out_dir / "feature_maps.json").read_text())["predicted"] == result["predicted"]
    )
    out = capsys.readouterr().out
    assert f"predicted {result['predicted']}" in out and "ConvBlock_2/Conv_0" in out


@pytest.mark.slow
def test_vit_attention_maps_of_a_png_file(quick_runs, real_mnist, tmp_path, capsys):
    picture = tmp_path / "digit.png"
    Image.fromarray(255 - real_mnist.test.images[0, ..., 0]).resize((64, 64)).save(
        picture
    )  # Dark on light.
    result = feature_maps.main(
        [
            "--checkpoint",
            str(quick_runs.get("vit")["workdir"]),
            "--image",
            str(picture),
            "--invert",
            "--out",
            str(tmp_path / "maps"),
        ]
    )
    assert result["label"] is None and list(result["layers"]) == ["patch_embed"]
    assert result["attention"]["layers"] == 6 and result["attention"]["heads"] == 8
    assert assert_png(tmp_path / "maps" / "attention.png") == (
        1170,
        970,
    )  # 7 x 9 panels of 1.3 inches.
    with Image.open(tmp_path / "maps" / "input.png") as shown:  # Inverted back: white on black.
        np.testing.assert_allclose(
            np.asarray(shown)[..., 0].mean(), real_mnist.test.images[0].mean(), atol=8
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image", "{tmp}/missing.png"], "no such file"),
        (["--image", "{tmp}/not_an_image.png"], "not an image"),
        (["--index", "10000"], "outside the test set"),
        (["--channels", "0"], "--channels must be >= 1"),
    ],
)
def test_feature_maps_bad_input_says_what_is_wrong(
    quick_runs, real_source, tmp_path, capsys, flags, message
):
    (tmp_path / "not_an_image.png").write_text("hello")
    run_dir = quick_runs.get("cnn")["workdir"]
    argv = [
        "--checkpoint",
        str(run_dir),
        *real_source.flags,
        "--out",
        str(tmp_path / "out"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        feature_maps.main(argv + [f.format(tmp=tmp_path) for f in flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_feature_maps_of_a_folder_without_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        feature_maps.main(["--checkpoint", str(tmp_path), "--index", "0"])
    assert exit_info.value.code == 2 and "no metrics.json" in capsys.readouterr().err


def fake_summary(
    experiment: str, seed: int, accuracy: float, seconds: float, **config_changes
) -> dict:
    module = __import__(f"experiments.{experiment}", fromlist=["CONFIG"])
    config = json.loads(json.dumps({**module.CONFIG.to_dict(), "seed": seed, **config_changes}))
    return {
        "experiment": experiment,
        "config": config,
        "test": {"accuracy": accuracy, "f1_macro": accuracy - 0.001},
        "train_seconds": seconds,
        "history": [{}] * config["epochs"],
        "data": {"train": 1000, "test": 100},
        "model": {"parameters": 42},
        "devices": {"kind": "cpu"},
    }


def test_compare_groups_runs_by_settings_and_averages_over_seeds(tmp_path):
    runs = {
        "a": fake_summary("cnn", 0, 0.99, 10.0),
        "b": fake_summary("cnn", 1, 0.98, 12.0),
        "a_copy": fake_summary("cnn", 0, 0.99, 10.0),  # Seed 0 again: counted once.
        "c": fake_summary("cnn", 2, 0.97, 14.0, epochs=3),  # Other settings: a group of its own.
        "d": fake_summary("vit", 0, 0.95, 30.0),
        "e": {
            **fake_summary("cnn", 0, 0.5, 1.0),
            "experiment": "noisy/cnn",
        },  # Not a classifier experiment.
        "f": {**fake_summary("conv_ae", 0, 0.5, 1.0), "test": {"mse": 0.01}},
        # The same settings on a GPU: a group of its own, its times not mixed with the CPU's.
        "g": {
            **fake_summary("cnn", 0, 0.99, 2.0),
            "devices": {"platform": "gpu", "kinds": ["NVIDIA H100"]},
        },
        # A recipe: only the nested settings that differ are named.
        "h": fake_summary(
            "cnn",
            0,
            0.996,
            20.0,
            ema_decay=0.999,
            augment={"rotation": 10.0, "shift": 0.1, "zoom": 0.0},
        ),
        # The same settings on two CPU models: a row each, named by their CPU (times do not mix).
        "i": {
            **fake_summary("vit", 1, 0.96, 40.0, epochs=2),
            "devices": {"platform": "cpu", "host": "2-core Xeon"},
        },
        "j": {
            **fake_summary("vit", 2, 0.97, 60.0, epochs=2),
            "devices": {"platform": "cpu", "host": "2-core EPYC"},
        },
        "k": {
            **fake_summary("vit", 3, 0.98, 50.0, epochs=2),
            "devices": {"platform": "cpu", "host": "2-core EPYC"},
        },
        "l": {
            **fake_summary("vit", 3, 0.98, 45.0, epochs=2),
            "devices": {"platform": "cpu", "host": "2-core EPYC", "convolutions": "oneDNN"},
        },
    }
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(summary))
    groups = compare.group_runs(compare.find_summaries(tmp_path), compare.CLASSIFIERS)
    rows = [g.row() for g in groups]
    assert [(r["label"], r["runs"]) for r in rows] == [
        ("cnn", 2),
        ("cnn (NVIDIA H100)", 1),
        ("cnn (augment.rotation=10, augment.shift=0.1, ema_decay=0.999)", 1),
        ("cnn (epochs=3)", 1),
        ("vit (epochs=2, 2-core EPYC)", 2),
        ("vit", 1),
        ("vit (epochs=2, 2-core EPYC, oneDNN convolutions)", 1),
        ("vit (epochs=2, 2-core Xeon)", 1),
    ]
    cnn_row = rows[0]
    assert cnn_row["accuracy"] == pytest.approx(0.985) and cnn_row["accuracy_std"] == pytest.approx(
        np.std([0.99, 0.98], ddof=1)
    )
    assert cnn_row["train_seconds"] == pytest.approx(11.0) and cnn_row["seeds"] == [0, 1]
    # 1,000 examples x 10 epochs in 10 s and in 12 s.
    assert cnn_row["examples_per_second"] == pytest.approx(np.mean([1000.0, 10000 / 12]))
    assert rows[5]["accuracy_std"] is None and rows[5]["reference"]["accuracy"] == 0.9797
    assert rows[4]["accuracy"] == pytest.approx(0.975) and rows[4][
        "train_seconds"
    ] == pytest.approx(55.0)
    table = compare.format_table(rows)
    assert "98.50 +- 0.71" in table and "99.38" in table


def test_compare_reads_a_setting_missing_from_an_older_run_as_its_default(tmp_path):
    """best's defaults smooth labels; a run saved before the setting existed
    trained without it, so it is labelled so, and groups with a run that
    records label_smoothing=0 rather than with the defaults' runs."""
    older = fake_summary("best", 0, 0.99, 10.0)
    del older["config"]["label_smoothing"]
    runs = {
        "older": older,
        "newer": fake_summary("best", 1, 0.98, 10.0, label_smoothing=0.0),
        "default": fake_summary("best", 2, 0.97, 10.0),
    }
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(summary))
    groups = compare.group_runs(compare.find_summaries(tmp_path), ("best",))
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("best (label_smoothing=0)", 2),
        ("best", 1),
    ]


def test_compare_refuses_bad_flags_and_an_empty_folder(tmp_path, capsys):
    for flags, message in (
        (["--models", "cnn,resnet"], "unknown ['resnet']"),
        (["--seeds", "0"], "--seeds"),
        (["--quick"], "add --train"),
        (["--train", "--epochs", "0"], "--epochs must be"),
        ([], "no finished classifier runs"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            compare.main(["--runs-dir", str(tmp_path)] + flags)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, flags


@pytest.mark.parametrize("flags", [["--data-dir", "tfds"], ["--idx-dir", "idx", "--no-download"]])
def test_compare_train_hands_its_data_flags_to_each_run(tmp_path, monkeypatch, flags):
    handed = []

    def train_missing(models, seeds, quick, root, extra, epochs):
        handed.append(extra)
        return {}

    monkeypatch.setattr(compare, "train_missing", train_missing)
    with pytest.raises(SystemExit):  # Nothing trained: no runs to table.
        compare.main(["--runs-dir", str(tmp_path), "--train", *flags])
    assert handed == [flags]


@pytest.mark.slow
def test_compare_trains_a_missing_seed_and_tables_every_classifier(quick_runs, real_source, capsys):
    for name in compare.CLASSIFIERS:
        quick_runs.get(name)
    root = quick_runs.root
    common = ["--runs-dir", str(root), *real_source.flags]
    compare.main(common + ["--train", "--quick", "--models", "simple_cnn", "--seeds", "2"])
    assert "simple_cnn seed 0: finished earlier" in capsys.readouterr().out
    result = compare.main(common)
    out = capsys.readouterr().out
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == [
        f"{name} (quick, 32px, random init)"
        if name == "vgg16"
        else f"{name} (quick, 63px, random init)"
        if name == "alexnet"
        else f"{name} (quick)"
        for name in compare.CLASSIFIERS
    ]
    simple = rows["simple_cnn (quick)"]
    accuracies = [
        json.loads((root / "compare" / "simple_cnn" / f"seed{s}" / "metrics.json").read_text())[
            "test"
        ]["accuracy"]
        for s in (0, 1)
    ]
    assert simple["runs"] == 2 and simple["seeds"] == [0, 1]
    assert simple["accuracy"] == pytest.approx(np.mean(accuracies))
    assert simple["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert rows["cnn (quick)"]["runs"] == 1 and rows["cnn (quick)"]["parameters"] == 422_474
    out_dir = root / "compare"
    assert_png(out_dir / "comparison.png")
    with open(out_dir / "comparison.csv") as f:
        assert [r["label"] for r in csv.DictReader(f)] == list(rows)
    assert json.loads((out_dir / "comparison.json").read_text())["rows"] == json.loads(
        json.dumps(result["rows"])
    )
    assert "99.38" in out  # Report 004's CNN accuracy, beside ours.
    assert f"{100 * rows['cnn (quick)']['accuracy']:.2f}" in out
    assert cnn.REFERENCE.train_seconds == rows["cnn (quick)"]["reference"]["train_seconds"]


def test_compare_labels_a_quick_run_by_its_settings_however_they_were_set(tmp_path):
    """A run on --quick's data subsets is "quick" and how it differs from
    --quick's settings, whether it came from --quick with --epochs or from
    the defaults with the same subsets; the settings are named in
    alphabetical order, whatever order the config declares them in."""
    from experiments import deep_cnn

    as_quick = {**json.loads(json.dumps(cnn.QUICK.to_dict())), "epochs": 1}
    runs = {
        # `--quick --epochs 1`, and the defaults with the quick subsets and 1 epoch.
        "quick_flag": {**fake_summary("cnn", 0, 0.9, 1.0), "config": {**as_quick, "seed": 0}},
        "same_settings": fake_summary(
            "cnn", 1, 0.8, 1.0, epochs=1, train_size=5000, test_size=1000
        ),
        "quick": fake_summary("cnn", 2, 0.9, 1.0, epochs=2, train_size=5000, test_size=1000),
        # deep_cnn's --quick trains 1 epoch: that is its quick run.
        "deep_quick": fake_summary(
            "deep_cnn",
            0,
            0.9,
            1.0,
            **{k: getattr(deep_cnn.QUICK, k) for k in ("epochs", "train_size", "test_size")},
        ),
        "recipe": fake_summary(
            "cnn", 0, 0.99, 9.0, weight_decay=1e-4, schedule="onecycle", learning_rate=3e-3
        ),
    }
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(summary))
    groups = compare.group_runs(compare.find_summaries(tmp_path), compare.CLASSIFIERS)
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("cnn (quick, epochs=1)", 2),
        ("cnn (learning_rate=0.003, schedule=onecycle, weight_decay=0.0001)", 1),
        ("cnn (quick)", 1),
        ("deep_cnn (quick)", 1),
    ]


def test_compare_train_trains_every_default_model_best_through_its_own_command(
    tmp_path, monkeypatch
):
    """`compare --train` trains each model its --models default lists: a
    classifier seed by seed, best's seeds with experiments.best's own
    --seeds and --workdir; then every one of them has its row."""
    commands = []

    def fake_experiment(name):
        def main(argv):
            commands.append((name, argv))
            flags = dict(zip(argv[::2], argv[1::2]))
            workdir = pathlib.Path(flags["--workdir"])
            if name == "best":
                runs = {workdir / f"seed{k}": k for k in range(int(flags["--seeds"]))}
            else:
                runs = {workdir: int(flags["--seed"])}
            for run_dir, seed in runs.items():
                run_dir.mkdir(parents=True)
                summary = fake_summary(name, seed, 0.9 + seed / 100, 10.0)
                (run_dir / "metrics.json").write_text(json.dumps(summary))

        real = importlib.import_module(f"experiments.{name}")
        return types.SimpleNamespace(
            CONFIG=real.CONFIG, QUICK=real.QUICK, REFERENCE=real.REFERENCE, main=main
        )

    monkeypatch.setattr(compare, "experiment_module", fake_experiment)
    result = compare.main(["--runs-dir", str(tmp_path), "--train", "--seeds", "2"])
    root = tmp_path / "compare"
    assert ("best", ["--seeds", "2", "--workdir", str(root / "best"), "--no-progress"]) in commands
    assert sorted({name for name, _ in commands}) == sorted(compare.COLLECTED)
    assert [(r["label"], r["runs"]) for r in result["rows"]] == [
        (name, 2) for name in compare.COLLECTED
    ]
    assert result["failed"] == {}

    # With --epochs N, best's seeds go in best/e<N>, as the others' in e<N>_seed<k>.
    commands.clear()
    compare.train_missing(("best", "cnn"), 1, True, root, ["--no-download"], epochs=3)
    assert commands == [
        (
            "best",
            ["--seeds", "1", "--workdir", str(root / "best" / "e3"), "--no-progress"]
            + ["--no-download", "--epochs", "3", "--quick"],
        ),
        (
            "cnn",
            ["--seed", "0", "--workdir", str(root / "cnn" / "e3_seed0"), "--no-progress"]
            + ["--no-download", "--epochs", "3", "--quick"],
        ),
    ]


def test_compare_of_the_committed_results_gives_the_committed_comparison(
    tmp_path, monkeypatch, capsys
):
    """`python -m experiments.compare --runs-dir results --out X` makes
    results/compare's table and CSV again, byte for byte."""
    monkeypatch.chdir(ROOT)
    compare.main(["--runs-dir", "results", "--out", str(tmp_path)])
    for name in ("comparison.json", "comparison.csv"):
        assert (tmp_path / name).read_bytes() == (ROOT / "results" / "compare" / name).read_bytes()
