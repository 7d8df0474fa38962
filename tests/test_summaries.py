"""A run leaves TensorBoard events (scalars, image, hparams) and metrics.json."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_jax import models, steps, train
from mnist_jax.config import TrainConfig
from mnist_jax.options import RunOptions


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_splits):
    workdir = tmp_path_factory.mktemp("run")
    config = TrainConfig(epochs=2, batch_size=32, eval_batch_size=50, log_every_steps=4)
    train.train_and_evaluate(
        config,
        models.get_model("cnn"),
        synthetic_splits,
        workdir,
        RunOptions(experiment="unit", progress=False),
    )
    return workdir


@pytest.mark.slow
def test_scalars_and_confusion_matrix_image_are_logged(finished_run):
    events = EventAccumulator(
        str(finished_run / "tensorboard"), size_guidance={"images": 0}
    ).Reload()
    tags = events.Tags()
    for tag in (
        "train/loss",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "learning_rate",
        "train/loss_step",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("val/accuracy")] == [10, 20]
    assert len(events.Scalars("train/loss_step")) >= 4
    assert events.Scalars("learning_rate")[0].value == pytest.approx(1e-3)
    (image,) = events.Images("test/confusion_matrix")
    assert image.width > 100 and image.height > 100
    (curves,) = events.Images("train/curves")  # curves.png, in TensorBoard too.
    assert (curves.width, curves.height) == (1040, 400)
    assert (finished_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hparams_are_in_the_same_run(finished_run):
    # No timestamped sub-run (tensorboardX #519): no events below the run's own
    # (the projector's files are in a step folder, without events).
    events_below = list((finished_run / "tensorboard").glob("*/**/events.out.tfevents.*"))
    assert events_below == []
    events = EventAccumulator(str(finished_run / "tensorboard")).Reload()
    hparams = events.PluginTagToContent("hparams")
    assert {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    } <= set(hparams)
    assert b"learning_rate" in hparams["_hparams_/session_start_info"]
    assert "hparam/test_accuracy" in events.Tags()["scalars"]


def test_metrics_json_has_the_shared_shape(finished_run):
    summary = json.loads((finished_run / "metrics.json").read_text())
    for key in ("experiment", "config", "test", "train_seconds", "devices", "history", "model"):
        assert key in summary, key
    test = summary["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["f1_macro"] <= 1.0 and test["loss"] > 0
    assert np.array(test["confusion_matrix"]).sum() == 100
    assert summary["devices"]["count"] >= 1 and summary["devices"]["platform"] == "cpu"
    assert summary["model"]["parameters"] == 422_474
    assert summary["config"]["batch_size"] == 32 and len(summary["history"]) == 2


def test_a_run_leaves_curves_misclassified_images_and_a_projector_embedding(finished_run):
    from PIL import Image

    for name in ("curves.png", "misclassified.png", "confusion_matrix.png"):
        with Image.open(finished_run / name) as image:
            assert image.format == "PNG" and min(image.size) > 100, name
    events = EventAccumulator(
        str(finished_run / "tensorboard"), size_guidance={"images": 0}
    ).Reload()
    assert "test/misclassified" in events.Tags()["images"]
    config = (finished_run / "tensorboard" / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 1
    (folder,) = (finished_run / "tensorboard").glob("*/test%2fembedding")
    assert np.loadtxt(folder / "tensors.tsv").shape == (100, 128)  # The 100 test images, CNN width.
    labels = [
        int(line.split("\t")[0]) for line in (folder / "metadata.tsv").read_text().splitlines()[1:]
    ]
    assert labels == synthetic_test_labels()


def synthetic_test_labels():
    from tests.conftest import synthetic_split

    return synthetic_split(100, 2).labels.tolist()


def test_load_run_rebuilds_the_model_and_its_best_checkpoint(finished_run, synthetic_splits):
    from mnist_jax import config as config_lib
    from mnist_jax import rundir

    run = rundir.load_run(finished_run)
    summary = json.loads((finished_run / "metrics.json").read_text())
    assert (
        run.config == config_lib.config_from_dict(summary["config"]) and run.config.batch_size == 32
    )
    assert summary["model"]["hyperparameters"]["features"] == [32, 64, 128]
    test = steps.score_split(run.state, synthetic_splits.test, 50, run.config.step_config())
    assert test["accuracy"] == summary["test"]["accuracy"] and test["loss"] == pytest.approx(
        summary["test"]["loss"]
    )


def test_load_run_says_what_is_wrong(finished_run, tmp_path):
    from mnist_jax import config as config_lib
    from mnist_jax import rundir

    with pytest.raises(rundir.RunError, match="no metrics.json"):
        rundir.load_run(tmp_path)
    summary = json.loads((finished_run / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**summary, "cached_features": True}))
    with pytest.raises(rundir.RunError, match="no-cache-features"):
        rundir.load_run(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(summary))
    with pytest.raises(rundir.RunError, match="cannot load the best checkpoint"):
        rundir.load_run(tmp_path)  # metrics.json without checkpoints beside it.
    with pytest.raises(ValueError, match="unknown to this version"):
        config_lib.config_from_dict({**summary["config"], "new_field": 1})


def test_config_round_trips_through_json():
    from mnist_jax import config as config_lib
    from mnist_jax.pipeline import NoiseConfig

    config = config_lib.TrainConfig(
        model="vit", noise=NoiseConfig("salt_pepper", 0.1), trainable=("head",), seed=4
    )
    assert config_lib.config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_flat_settings_name_each_nested_field_once():
    from mnist_jax import config as config_lib
    from mnist_jax.augment import AugmentConfig
    from mnist_jax.pipeline import NoiseConfig

    config = TrainConfig(
        noise=NoiseConfig("gaussian", 0.5),
        augment=AugmentConfig(rotation=10.0),
        trainable=("head",),
    )
    flat = config_lib.flatten(config.to_dict())
    assert (
        flat["noise.kind"] == "gaussian"
        and flat["augment.rotation"] == 10.0
        and flat["augment.zoom"] == 0.0
    )
    assert "noise" not in flat and not any(isinstance(v, dict) for v in flat.values())
    hparams = config_lib.flat_hparams(config)
    assert hparams["trainable"] == "head" and "split_seed" not in hparams  # None is left out.
    assert config_lib.flat_hparams(TrainConfig())["trainable"] == "all"
